"""End to end: graphs with host ops between analog ops, built with onnx.helper.

Each model is compiled (which nodes went to crossbars, which activations were
fused into them, which nodes went to host stages, in what order) and verified
in the ideal simulator against onnxruntime at a relative error of 1e-5.
Several weight matrices are larger than one 512 x 512 crossbar, so slices and
digital partial sums are exercised too.
"""

from __future__ import annotations

import numpy as np
import pytest
from anac.api import compile_model, verify
from helpers import (
    analog_nodes,
    assert_verified,
    batch_shapes,
    check_placement,
    const,
    fused_activations,
    host_nodes,
    make_model,
    node,
    save,
    slice_blocks,
    stage_kinds,
    stage_of,
    tensor,
    weights,
)

TOL = 1e-5
BATCH = 3


TWO_ROW_BLOCKS = {(0, 0), (1, 0)}  # K in 513..1024, N <= 512: partial sums of two row blocks per column
TWO_BY_TWO = {(0, 0), (0, 1), (1, 0), (1, 1)}  # K and N in 513..1024


def _check(model, analog: set[str], host: set[str], batch: int | None = BATCH, tmp_path=None,  # type: ignore[no-untyped-def]
           fused: set[str] = frozenset(), **kw):
    """Compile and verify ``model``; assert exactly ``analog`` are MVMs, exactly ``fused`` are activations
    fused into them (run at the tile outputs of their MVM's analog stage), and ``host`` are in host stages."""
    shapes = batch_shapes(model, batch) if batch is not None else None
    prog = compile_model(model, input_shapes=shapes)
    check_placement(prog)
    assert analog_nodes(prog) == analog
    assert fused_activations(prog) == set(fused)
    assert host <= host_nodes(prog)
    assert not (analog | set(fused)) & host_nodes(prog)
    for name in analog:
        assert prog.stages[stage_of(prog, name)].kind == "analog"
    for name in fused:
        act = prog.graph.node(name)
        (mvm,) = [m for m in prog.mvms.values() if m.activation and m.activation["node"] == name]
        pre = prog.graph.node(mvm.norm or mvm.node).outputs[0]  # after a folded BatchNormalization, its output
        assert act.inputs[0] == pre and mvm.output == act.outputs[0] and mvm.activation["op"] == act.op_type
        # in no stage of its own, and the pre-activation tensor never leaves the MVM's analog stage
        assert all(name not in st.nodes and pre not in st.inputs + st.outputs for st in prog.stages)
    source = save(model, tmp_path) if tmp_path is not None else model
    assert_verified(verify(source, batch=batch, **kw), TOL)
    return prog


# ---------------------------------------------------------------- softmax, reshape, flatten


def test_gemm_softmax_matmul_with_sliced_matrix(rng, tmp_path):
    w1, b1, w2 = weights(rng, 600, 700), weights(rng, 700, scale=0.1), weights(rng, 700, 10, scale=3.0)
    model = make_model(
        [node("Gemm", ["x", "w1", "b1"], ["h"], alpha=0.5, beta=2.0),
         node("Softmax", ["h"], ["p"], axis=-1),
         node("MatMul", ["p", "w2"], ["y"])],
        [tensor("x", ["N", 600])], [tensor("y", ["N", 10])],
        [const("w1", w1), const("b1", b1), const("w2", w2)])
    prog = _check(model, {"h", "y"}, {"p"}, tmp_path=tmp_path)
    assert stage_kinds(prog) == ["analog", "host", "analog"]
    assert prog.matrices["h"].shape == (600, 700)
    assert slice_blocks(prog, "h") == TWO_BY_TWO  # 2 row blocks x 2 column blocks of a 512 x 512 crossbar
    assert slice_blocks(prog, "y") == TWO_ROW_BLOCKS
    assert prog.mvms["h"].alpha == 0.5
    np.testing.assert_allclose(prog.mvms["h"].bias, 2.0 * b1, rtol=1e-6)


def test_flatten_reshape_between_matmuls(rng):
    shape = const("shape", np.array([-1, 20, 30], dtype=np.int64))
    model = make_model(
        [node("Flatten", ["x"], ["f"], axis=1),
         node("MatMul", ["f", "w1"], ["h"]),
         node("Reshape", ["h", "shape"], ["r"]),
         node("MatMul", ["r", "w2"], ["h2"]),
         node("Flatten", ["h2"], ["f2"], axis=1),
         node("Gemm", ["f2", "w3"], ["y"], transB=1)],
        [tensor("x", ["N", 4, 8, 8])], [tensor("y", ["N", 10])],
        [shape, const("w1", weights(rng, 256, 600)), const("w2", weights(rng, 30, 16)),
         const("w3", weights(rng, 10, 320))])
    prog = _check(model, {"h", "h2", "y"}, {"f", "r", "f2"})
    assert stage_kinds(prog) == ["host", "analog", "host", "analog", "host", "analog"]
    # transB: the crossbar holds B^T, K = 320 rows, 10 columns
    assert prog.matrices["y"].shape == (320, 10)
    assert prog.mvms["h2"].input == "r"


# ---------------------------------------------------------------- CNN host ops


def test_conv_maxpool_averagepool_flatten_gemm(rng):
    model = make_model(
        [node("Conv", ["x", "k1", "c1"], ["a1"], pads=[1, 1, 1, 1]),
         node("Relu", ["a1"], ["r1"]),
         node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
         node("Conv", ["p1", "k2"], ["a2"]),
         node("AveragePool", ["a2"], ["p2"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1],
              count_include_pad=0),
         node("Flatten", ["p2"], ["f"]),
         node("Gemm", ["f", "w", "b"], ["y"])],
        [tensor("x", ["N", 3, 16, 16])], [tensor("y", ["N", 10])],
        [const("k1", weights(rng, 8, 3, 3, 3, scale=0.3)), const("c1", weights(rng, 8, scale=0.1)),
         const("k2", weights(rng, 16, 8, 3, 3, scale=0.1)),
         const("w", weights(rng, 16 * 3 * 3, 10)), const("b", weights(rng, 10, scale=0.1))])
    # a1's only reader is its Relu: fused, so MaxPool is the first host op
    prog = _check(model, {"a1", "a2", "y"}, {"p1", "p2", "f"}, fused={"r1"})
    assert stage_kinds(prog) == ["analog", "host", "analog", "host", "analog"]
    assert prog.stages[1].inputs == ["r1"] and prog.mvms["a1"].bias is not None
    assert prog.mvms["a1"].kind == "conv" and prog.mvms["y"].kind == "dense"
    assert prog.matrices["a2"].shape == (8 * 3 * 3, 16)


def test_batchnorm_between_convs_folds_into_them(rng):
    def bn(prefix: str, c: int) -> list:
        return [const(f"{prefix}_s", 1 + weights(rng, c, scale=0.1)), const(f"{prefix}_b", weights(rng, c, scale=0.1)),
                const(f"{prefix}_m", weights(rng, c, scale=0.1)),
                const(f"{prefix}_v", (0.5 + rng.random(c)).astype(np.float32))]

    model = make_model(
        [node("Conv", ["x", "k1"], ["a1"], pads=[1, 1, 1, 1]),
         node("BatchNormalization", ["a1", "bn1_s", "bn1_b", "bn1_m", "bn1_v"], ["n1"], epsilon=1e-5),
         node("Relu", ["n1"], ["r1"]),
         # K = 64 * 3 * 3 = 576 rows: two crossbars' worth, added as partial sums
         node("Conv", ["r1", "k2", "c2"], ["a2"], strides=[2, 2]),
         node("BatchNormalization", ["a2", "bn2_s", "bn2_b", "bn2_m", "bn2_v"], ["n2"]),
         node("GlobalAveragePool", ["n2"], ["g"]),
         node("Flatten", ["g"], ["f"]),
         node("MatMul", ["f", "w"], ["y"])],
        [tensor("x", ["N", 3, 10, 10])], [tensor("y", ["N", 5])],
        [const("k1", weights(rng, 64, 3, 3, 3, scale=0.3)), const("k2", weights(rng, 12, 64, 3, 3, scale=0.05)),
         const("c2", weights(rng, 12, scale=0.1)), const("w", weights(rng, 12, 5))] + bn("bn1", 64) + bn("bn2", 12))
    # Each BatchNorm folds into its Conv; r1, reading the folded BatchNorm, fuses after it
    prog = _check(model, {"a1", "a2", "y"}, {"g", "f"}, fused={"r1"})
    assert {m.norm for m in prog.mvms.values()} == {"n1", "n2", None}
    assert prog.matrices["a2"].shape == (576, 12)
    assert slice_blocks(prog, "a2") == TWO_ROW_BLOCKS
    assert stage_of(prog, "a1") < stage_of(prog, "a2") < stage_of(prog, "g") < stage_of(prog, "y")


def test_concat_of_analog_outputs_and_input(rng):
    model = make_model(
        [node("MatMul", ["x", "w1"], ["a"]),
         node("MatMul", ["x", "w2"], ["b"]),
         node("Concat", ["a", "b", "x"], ["c"], axis=1),
         node("MatMul", ["c", "w3"], ["h"]),
         node("Tanh", ["h"], ["y"])],
        [tensor("x", ["N", 64])], [tensor("y", ["N", 700])],
        [const("w1", weights(rng, 64, 600)), const("w2", weights(rng, 64, 100)), const("w3", weights(rng, 764, 700))])
    prog = _check(model, {"a", "b", "h"}, {"c", "y"})
    assert stage_kinds(prog) == ["analog", "host", "analog", "host"]
    assert stage_of(prog, "a") == stage_of(prog, "b")  # independent MVMs share one analog stage
    assert slice_blocks(prog, "h") == TWO_BY_TWO  # 764 x 700


def test_layernorm_and_gelu_opset20(rng):
    model = make_model(
        [node("MatMul", ["x", "w1"], ["h"]),
         node("Add", ["h", "b1"], ["hb"]),
         node("LayerNormalization", ["hb", "ln_s", "ln_b"], ["n"], axis=-1, epsilon=1e-5),
         node("Gelu", ["n"], ["g"]),
         node("MatMul", ["g", "w2"], ["h2"]),
         node("Gelu", ["h2"], ["y"], approximate="tanh")],
        [tensor("x", ["N", 8, 64])], [tensor("y", ["N", 8, 64])],
        [const("w1", weights(rng, 64, 600)), const("b1", weights(rng, 600, scale=0.1)),
         const("ln_s", 1 + weights(rng, 600, scale=0.1)), const("ln_b", weights(rng, 600, scale=0.1)),
         const("w2", weights(rng, 600, 64))],
        opset=20)
    prog = _check(model, {"h", "h2"}, {"hb", "n", "g", "y"})
    assert stage_kinds(prog) == ["analog", "host", "analog", "host"]
    assert slice_blocks(prog, "h2") == TWO_ROW_BLOCKS  # 600 rows: partial sums of two crossbars


# ---------------------------------------------------------------- attention


def _attention_model(rng, d: int = 32, heads: int = 2, ffn: int = 600):  # type: ignore[no-untyped-def]
    dh = d // heads
    split = const("split_shape", np.array([0, 0, heads, dh], dtype=np.int64))
    merge = const("merge_shape", np.array([0, 0, d], dtype=np.int64))
    nodes = [
        node("MatMul", ["x", "wq"], ["q"]),
        node("MatMul", ["x", "wk"], ["k"]),
        node("MatMul", ["x", "wv"], ["v"]),
        node("Reshape", ["q", "split_shape"], ["q4"]),
        node("Reshape", ["k", "split_shape"], ["k4"]),
        node("Reshape", ["v", "split_shape"], ["v4"]),
        node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]),
        node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        node("MatMul", ["qh", "kt"], ["scores"]),
        node("Mul", ["scores", "scale"], ["scaled"]),
        node("Softmax", ["scaled"], ["probs"], axis=-1),
        node("MatMul", ["probs", "vh"], ["ctx"]),
        node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        node("Reshape", ["ctx_t", "merge_shape"], ["ctx2"]),
        node("MatMul", ["ctx2", "wo"], ["attn"]),
        node("Add", ["attn", "x"], ["res1"]),
        node("LayerNormalization", ["res1", "ln_s", "ln_b"], ["n1"], axis=-1),
        node("MatMul", ["n1", "w_up"], ["up"]),
        node("Relu", ["up"], ["up_r"]),
        node("MatMul", ["up_r", "w_down"], ["down"]),
        node("Add", ["down", "res1"], ["y"]),
    ]
    inits = [split, merge, const("scale", np.array(1 / np.sqrt(dh), dtype=np.float32)),
             const("wq", weights(rng, d, d)), const("wk", weights(rng, d, d)), const("wv", weights(rng, d, d)),
             const("wo", weights(rng, d, d)), const("ln_s", np.ones(d, np.float32)),
             const("ln_b", np.zeros(d, np.float32)),
             const("w_up", weights(rng, d, ffn)), const("w_down", weights(rng, ffn, d))]
    return make_model(nodes, [tensor("x", ["N", 6, d])], [tensor("y", ["N", 6, d])], inits)


def test_attention_score_and_context_matmuls_run_on_host(rng, tmp_path):
    model = _attention_model(rng)
    prog = _check(model, {"q", "k", "v", "attn", "up", "down"},
                  {"scores", "probs", "ctx", "scaled", "res1", "n1", "y"}, tmp_path=tmp_path, fused={"up_r"})
    # Q K^T and P V multiply two activations: host; every projection: a crossbar
    assert "scores" not in prog.mvms and "ctx" not in prog.mvms
    assert stage_of(prog, "q") == stage_of(prog, "k") == stage_of(prog, "v")
    assert stage_of(prog, "q") < stage_of(prog, "scores") == stage_of(prog, "ctx") < stage_of(prog, "attn")
    # the FFN's Relu is fused into 'up': 'down' follows in the next analog stage, with no host stage between
    assert stage_kinds(prog) == ["analog", "host", "analog", "host", "analog", "analog", "host"]
    assert stage_of(prog, "up") + 1 == stage_of(prog, "down")
    assert prog.stages[stage_of(prog, "up")].outputs == ["up_r"]
    assert prog.stages[stage_of(prog, "down")].inputs == ["up_r"]
    assert slice_blocks(prog, "down") == TWO_ROW_BLOCKS


# ---------------------------------------------------------------- Conv variants


_CONV_CASES = {
    # name: (input shape without batch, kernel shape, attributes, with bias)
    "1d_stride_pads_bias": ((4, 20), (6, 4, 3), {"strides": [2], "pads": [1, 2]}, True),
    # onnxruntime rejects dilations together with SAME_* auto_pad, so those are tested apart
    "1d_dilation_pads": ((4, 17), (5, 4, 3), {"dilations": [2], "pads": [2, 1]}, False),
    "1d_same_upper_stride3": ((4, 17), (5, 4, 3), {"strides": [3], "auto_pad": "SAME_UPPER"}, False),
    "1d_same_lower_even_kernel_stride": ((3, 15), (4, 3, 4), {"strides": [2], "auto_pad": "SAME_LOWER"}, True),
    "1d_valid_groups": ((6, 12), (9, 2, 3), {"auto_pad": "VALID", "group": 3}, True),
    "2d_asymmetric_pads_strides": ((3, 9, 11), (5, 3, 3, 2), {"pads": [1, 0, 2, 1], "strides": [2, 1]}, True),
    "2d_same_upper_stride2_even_kernel": ((2, 10, 9), (4, 2, 4, 4), {"strides": [2, 2], "auto_pad": "SAME_UPPER"},
                                          False),
    "2d_same_lower_stride2": ((2, 9, 10), (3, 2, 2, 4), {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, True),
    "2d_valid_dilations": ((3, 12, 12), (4, 3, 3, 3), {"auto_pad": "VALID", "dilations": [2, 1]}, True),
    "2d_dilations_pads_strides": ((2, 13, 12), (4, 2, 3, 3),
                                  {"dilations": [2, 3], "pads": [2, 1, 0, 3], "strides": [3, 2]}, False),
    "2d_groups": ((4, 8, 8), (6, 2, 3, 3), {"group": 2, "pads": [1, 1, 1, 1]}, True),
    "2d_depthwise": ((8, 9, 9), (8, 1, 3, 3), {"group": 8, "pads": [1, 1, 1, 1], "strides": [2, 2]}, True),
    "2d_depthwise_multiplier": ((4, 7, 7), (8, 1, 3, 3), {"group": 4, "auto_pad": "SAME_UPPER"}, False),
    "2d_rows_over_crossbar": ((64, 6, 6), (520, 64, 3, 3), {"pads": [1, 1, 1, 1]}, True),  # 576 x 520
    "3d": ((2, 5, 6, 4), (3, 2, 2, 3, 2), {"strides": [1, 2, 1], "pads": [1, 0, 1, 0, 1, 0]}, True),
}


@pytest.mark.parametrize("case", sorted(_CONV_CASES))
def test_conv_variants(rng, case):
    in_shape, k_shape, attrs, with_bias = _CONV_CASES[case]
    fan_in = int(np.prod(k_shape[1:]))
    inits = [const("k", weights(rng, *k_shape, scale=1 / np.sqrt(fan_in)))]
    ins = ["x", "k"]
    if with_bias:
        inits.append(const("b", weights(rng, k_shape[0], scale=0.5)))
        ins.append("b")
    model = make_model([node("Conv", ins, ["h"], **attrs), node("Relu", ["h"], ["y"])],
                       [tensor("x", ["N", *in_shape])], [tensor("y", [None] * (len(in_shape) + 1))], inits)
    # the Relu is the only reader of the conv output (which is not a graph output): fused, no host stage
    prog = _check(model, {"h"}, set(), fused={"y"})
    assert stage_kinds(prog) == ["analog"] and prog.stages[0].outputs == ["y"]
    mvm = prog.mvms["h"]
    assert mvm.output == "y" and mvm.activation["op"] == "Relu"
    group = attrs.get("group", 1)
    out_per_group = k_shape[0] // group
    # Groups are packed block-diagonally, p of them to a matrix: fan_in * p rows by out_per_group * p columns.
    packed = [prog.matrices[mid].shape[1] // out_per_group for mid in mvm.matrices]
    assert mvm.kind == "conv" and sum(packed) == group
    for mid, p in zip(mvm.matrices, packed, strict=True):
        assert prog.matrices[mid].shape == (fan_in * p, out_per_group * p)
    assert (mvm.bias is not None) == with_bias


# ---------------------------------------------------------------- Gemm variants


_GEMM_CASES = {
    # name: (A constant?, transA, transB, alpha, beta, C shape or None, K, M, batch)
    "b_const_transB_big": (False, 0, 1, 0.5, 2.0, "M", 600, 700, 3),
    "b_const_transA": (False, 1, 0, 1.0, 1.0, "1M", 40, 30, 4),
    "b_const_transA_transB": (False, 1, 1, 1.5, 1.0, None, 40, 30, 4),
    "b_const_full_bias": (False, 0, 0, 1.0, 0.3, "BM", 40, 30, 5),
    "b_const_scalar_bias": (False, 0, 1, -2.0, 0.5, "1", 40, 30, 2),
    "a_const": (True, 0, 0, 1.0, 0.7, "M1", 40, 30, 5),
    "a_const_transA": (True, 1, 0, 2.0, 1.0, "M", 40, 30, 5),  # C (M,) broadcasts over y's last axis (batch)
    "a_const_transB_full_bias": (True, 0, 1, 1.0, 1.5, "MB", 40, 30, 6),
    "a_const_transA_transB": (True, 1, 1, 0.25, 1.0, None, 40, 30, 3),
    "a_const_big": (True, 0, 1, 1.0, 1.0, "M1", 600, 700, 3),
}


def _gemm_model(rng, a_const, trans_a, trans_b, alpha, beta, c_kind, k, m, batch):  # type: ignore[no-untyped-def]
    """y = alpha * A' B' + beta * C with the constant operand holding the K x M (or M x K) weights."""
    if a_const:  # y (M, batch) = A' (M, K) @ B' (K, batch)
        a_shape, b_shape, y_shape = ((k, m) if trans_a else (m, k)), ((batch, k) if trans_b else (k, batch)), (m, batch)
        w = const("w", weights(rng, *a_shape, scale=1 / np.sqrt(k)))
        ins, x = ["w", "x"], tensor("x", b_shape)
    else:  # y (batch, M) = A' (batch, K) @ B' (K, M)
        a_shape, b_shape, y_shape = ((k, batch) if trans_a else (batch, k)), ((m, k) if trans_b else (k, m)), (batch, m)
        w = const("w", weights(rng, *b_shape, scale=1 / np.sqrt(k)))
        ins, x = ["x", "w"], tensor("x", a_shape)
    c_shapes = {"M": (y_shape[1],), "1M": (1, y_shape[1]), "BM": y_shape, "MB": y_shape, "1": (1,),
                "M1": (y_shape[0], 1)}
    inits = [w]
    if c_kind is not None:
        inits.append(const("c", weights(rng, *c_shapes[c_kind], scale=0.5)))
        ins.append("c")
    return make_model([node("Gemm", ins, ["y"], transA=trans_a, transB=trans_b, alpha=alpha, beta=beta)],
                      [x], [tensor("y", y_shape)], inits)


@pytest.mark.parametrize("case", sorted(_GEMM_CASES))
def test_gemm_variants(rng, case):
    a_const, trans_a, trans_b, alpha, beta, c_kind, k, m, batch = _GEMM_CASES[case]
    model = _gemm_model(rng, *_GEMM_CASES[case])
    # Static shapes: the inputs come from the declared shape (no batch override).
    prog = _check(model, {"y"}, set(), batch=None)
    assert prog.mvms["y"].alpha == alpha
    assert prog.matrices["y"].shape == (k, m)  # always K crossbar rows, M columns
    assert stage_kinds(prog) == ["analog"]
    if k > 512:
        assert slice_blocks(prog, "y") == TWO_BY_TWO


def test_gemm_between_host_ops_with_constant_first_operand(rng):
    # x (N, 600) -> Transpose -> Gemm(A const (700 x 600), x^T) -> Relu -> Transpose: A constant mid-graph
    model = make_model(
        [node("Transpose", ["x"], ["xt"], perm=[1, 0]),
         node("Gemm", ["a", "xt", "c"], ["h"], alpha=0.8),
         node("Relu", ["h"], ["r"]),
         node("Transpose", ["r"], ["y"], perm=[1, 0])],
        [tensor("x", ["N", 600])], [tensor("y", ["N", 700])],
        [const("a", weights(rng, 700, 600, scale=1 / np.sqrt(600))), const("c", weights(rng, 700, 1, scale=0.5))])
    prog = _check(model, {"h"}, {"xt", "y"}, fused={"r"})
    assert stage_kinds(prog) == ["host", "analog", "host"]
    assert host_nodes(prog) == {"xt", "y"} and prog.stages[2].inputs == ["r"]
    assert prog.matrices["h"].shape == (600, 700)


def test_gemm_with_activation_bias_runs_on_host(rng):
    model = make_model(
        [node("MatMul", ["x", "w1"], ["c"]),
         node("Gemm", ["x", "w2", "c"], ["y"], beta=0.5)],
        [tensor("x", ["N", 40])], [tensor("y", ["N", 30])],
        [const("w1", weights(rng, 40, 30)), const("w2", weights(rng, 40, 30))])
    prog = _check(model, {"c"}, {"y"})
    assert stage_kinds(prog) == ["analog", "host"]


# ---------------------------------------------------------------- MatMul variants


_MATMUL_CASES = {
    # name: (constant on the left?, constant shape, activation shape ("N" = batch dim))
    "left_3d_activation": (True, (20, 30), ("N", 30, 5)),
    "left_big": (True, (700, 600), ("N", 600, 4)),
    "left_2d_activation": (True, (20, 30), (30, 7)),
    "left_2d_over_1d_activation": (True, (20, 30), (30,)),
    "left_1d_constant": (True, (30,), ("N", 30, 6)),
    "right_1d_activation": (False, (30, 20), (30,)),
    "right_1d_constant": (False, (30,), ("N", 30)),
    "right_1d_by_1d": (False, (30,), (30,)),
    "right_4d_activation": (False, (30, 20), ("N", 2, 3, 30)),
}


@pytest.mark.parametrize("case", sorted(_MATMUL_CASES))
def test_matmul_variants(rng, case):
    left, w_shape, x_shape = _MATMUL_CASES[case]
    w = weights(rng, *w_shape, scale=1 / np.sqrt(30 if len(w_shape) == 1 else w_shape[1 if left else 0]))
    ins = ["w", "x"] if left else ["x", "w"]
    y_rank = np.matmul(*[np.zeros([2 if d == "N" else d for d in s]) for s in
                         ((w_shape, x_shape) if left else (x_shape, w_shape))]).ndim
    model = make_model([node("MatMul", ins, ["h"]), node("Neg", ["h"], ["y"])],
                       [tensor("x", x_shape)], [tensor("y", [None] * y_rank)], [const("w", w)])
    batch = BATCH if x_shape and x_shape[0] == "N" else None
    prog = _check(model, {"h"}, {"y"}, batch=batch)
    k = w_shape[-1] if left and len(w_shape) == 2 else w_shape[0]
    n = 1 if len(w_shape) == 1 else (w_shape[0] if left else w_shape[1])
    assert prog.matrices["h"].shape == (k, n)


def test_matmul_with_rank3_constant_runs_on_host(rng):
    model = make_model(
        [node("MatMul", ["x", "w3"], ["h"]), node("MatMul", ["h", "w2"], ["y"])],
        [tensor("x", ["N", 30])], [tensor("y", [2, "N", 10])],
        [const("w3", weights(rng, 2, 30, 20)), const("w2", weights(rng, 20, 10))])
    prog = _check(model, {"y"}, {"h"})
    assert stage_kinds(prog) == ["host", "analog"]


# ---------------------------------------------------------------- residual connections


def test_residual_adds_interleave_host_and_analog_stages(rng, tmp_path):
    model = make_model(
        [node("MatMul", ["x", "w1"], ["h1"]),
         node("Relu", ["h1"], ["r1"]),
         node("MatMul", ["r1", "w2"], ["h2"]),
         node("Gemm", ["h1", "w5"], ["h1_proj"]),  # a second MVM reading the first analog stage's output
         node("Add", ["h2", "x"], ["s1"]),  # skip from the graph input
         node("MatMul", ["s1", "w3"], ["h3"]),
         node("Relu", ["h3"], ["r3"]),
         node("MatMul", ["r3", "w4"], ["h4"]),
         node("Add", ["h4", "s1"], ["s2"]),  # skip from an earlier host stage
         node("Add", ["s2", "h1_proj"], ["y"])],  # skip from an early analog stage
        [tensor("x", ["N", 64])], [tensor("y", ["N", 64])],
        [const("w1", weights(rng, 64, 600)), const("w2", weights(rng, 600, 64)), const("w3", weights(rng, 64, 600)),
         const("w4", weights(rng, 600, 64)), const("w5", weights(rng, 600, 64))])
    # h1 has two readers (Relu r1 and h1_proj): r1 stays on the host; h3's only reader is r3: fused
    prog = _check(model, {"h1", "h2", "h3", "h4", "h1_proj"}, {"r1", "s1", "s2", "y"}, tmp_path=tmp_path,
                  fused={"r3"})
    assert host_nodes(prog) == {"r1", "s1", "s2", "y"}
    # h4 reads r3, the fused output of h3: two analog stages in a row
    assert stage_kinds(prog) == ["analog", "host", "analog", "host", "analog", "analog", "host"]
    assert stage_of(prog, "h2") == stage_of(prog, "h1_proj")
    assert stage_of(prog, "h3") + 1 == stage_of(prog, "h4")
    assert prog.stages[stage_of(prog, "h3")].outputs == ["r3"]
    assert "x" in prog.stages[stage_of(prog, "s1")].inputs  # the graph input is carried to the Add
    y_stage = prog.stages[stage_of(prog, "y")]
    assert {"h4", "s1", "h1_proj"} <= set(y_stage.inputs)


def test_host_op_before_first_analog_op(rng):
    model = make_model(
        [node("Mul", ["x", "s"], ["xs"]), node("MatMul", ["xs", "w"], ["h"]), node("Sigmoid", ["h"], ["y"])],
        [tensor("x", ["N", 700])], [tensor("y", ["N", 520])],
        [const("s", np.float32(0.5) * np.ones(700, np.float32)), const("w", weights(rng, 700, 520))])
    prog = _check(model, {"h"}, {"xs", "y"})
    assert stage_kinds(prog) == ["host", "analog", "host"]
    assert slice_blocks(prog, "h") == TWO_BY_TWO  # 700 x 520


# ---------------------------------------------------------------- symbolic batch


def _symbolic_batch_model(rng):  # type: ignore[no-untyped-def]
    return make_model(
        [node("Gemm", ["x", "w1", "b1"], ["h"]), node("Softmax", ["h"], ["p"]), node("MatMul", ["p", "w2"], ["y"])],
        [tensor("x", ["N", 600])], [tensor("y", ["N", 10])],
        [const("w1", weights(rng, 600, 700)), const("b1", weights(rng, 700, scale=0.1)),
         const("w2", weights(rng, 700, 10, scale=3.0))])


def test_symbolic_batch_binds_to_one_by_default(rng, caplog):
    model = _symbolic_batch_model(rng)
    with caplog.at_level("WARNING"):
        prog = compile_model(model)
    assert prog.inputs[0].shape == (1, 600)
    assert "input(s) x bound to 1" in caplog.text
    assert compile_model(model, batch=4).inputs[0].shape == (4, 600)


def test_symbolic_batch_compiles_with_input_shapes_and_verifies_batch_3(rng, tmp_path):
    model = _symbolic_batch_model(rng)
    prog = compile_model(model, input_shapes={"x": [3, 600]})
    assert prog.inputs[0].shape == (3, 600)
    assert analog_nodes(prog) == {"h", "y"} and "p" in host_nodes(prog)
    path = save(model, tmp_path)
    report = verify(path, program=prog, batch=3)
    assert_verified(report, TOL)
    assert report.outputs["y"].shape == [3, 10]
    report = verify(path, batch=3)
    assert_verified(report, TOL)
    assert report.outputs["y"].shape == [3, 10]
    assert report.outputs["y"].argmax_agreement == 1.0
