"""Folding inference-mode BatchNormalization into the crossbar layer that feeds it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import check, summary, verify
from anac.driver import compile_model
from anac.plan import plan_model
from helpers import (
    assert_verified,
    const,
    fused_activations,
    host_nodes,
    make_model,
    node,
    save,
    stage_kinds,
    tensor,
    weights,
)


def _bn_consts(rng: np.random.Generator, c: int, prefix: str = "bn") -> list[onnx.TensorProto]:
    """Scale, B, mean and a positive var far from 1, so an unfolded or misfolded BN shows."""
    return [const(f"{prefix}_s", rng.uniform(0.5, 2.0, c).astype(np.float32)),
            const(f"{prefix}_b", rng.standard_normal(c).astype(np.float32)),
            const(f"{prefix}_m", rng.standard_normal(c).astype(np.float32)),
            const(f"{prefix}_v", rng.uniform(0.1, 3.0, c).astype(np.float32))]


def _bn(x: str, y: str, prefix: str = "bn", **attrs: object) -> onnx.NodeProto:
    return node("BatchNormalization", [x, f"{prefix}_s", f"{prefix}_b", f"{prefix}_m", f"{prefix}_v"], [y],
                name=prefix, **attrs)


def _conv_bn(rng: np.random.Generator, group: int = 1, bias: bool = False, relu: bool = True,
             op: str = "Conv") -> onnx.ModelProto:
    c_in, c_out = 4, 8
    w = weights(rng, c_out, c_in // group, 3, 3) if op == "Conv" else weights(rng, c_in, c_out // group, 3, 3)
    inits = [const("w", w), *_bn_consts(rng, c_out)]
    if bias:
        inits.append(const("cb", weights(rng, c_out)))
    nodes = [node(op, ["x", "w", "cb"] if bias else ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1], group=group),
             _bn("c", "n" if relu else "y", epsilon=1e-3)]
    if relu:
        nodes.append(node("Relu", ["n"], ["y"], name="relu"))
    return make_model(nodes, [tensor("x", [2, c_in, 6, 6])], [tensor("y", [2, c_out, 6, 6])], inits)


def _folded(prog) -> set[str]:  # type: ignore[no-untyped-def]
    return {m.norm for m in prog.mvms.values() if m.norm is not None}


@pytest.mark.parametrize("group, bias, op", [(1, False, "Conv"), (1, True, "Conv"), (4, False, "Conv"),
                                             (2, True, "ConvTranspose")])
def test_conv_batchnorm_relu_folds_and_matches_onnxruntime(rng: np.random.Generator, group: int, bias: bool,
                                                           op: str) -> None:
    model = _conv_bn(rng, group, bias, op=op)
    prog = compile_model(model)
    assert _folded(prog) == {"bn"} and fused_activations(prog) == {"relu"}
    assert host_nodes(prog) == set() and stage_kinds(prog) == ["analog"]
    assert prog.mvms["conv"].output == "y"
    assert summary(prog)["host_stages"] == 0 and summary(prog)["fused_nodes"] == 2
    assert_verified(verify(model, program=prog))


def test_the_folded_weights_are_what_split_and_assign_see(rng: np.random.Generator) -> None:
    model = _conv_bn(rng, relu=False)
    prog = compile_model(model)
    init = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    s = init["bn_s"] / np.sqrt(init["bn_v"] + 1e-3)
    expect = (init["w"].reshape(8, -1).T * s).astype(np.float32)
    np.testing.assert_array_equal(prog.matrices["conv"].weights, expect)
    np.testing.assert_allclose(prog.mvms["conv"].bias, -init["bn_m"] * s + init["bn_b"], rtol=1e-6)
    # Every slice the assignment programmed is a block of the folded matrix.
    for sl in prog.slices:
        block = expect[sl.rows[0]:sl.rows[1], sl.cols[0]:sl.cols[1]]
        np.testing.assert_array_equal(prog.matrices[sl.matrix].weights[sl.rows[0]:sl.rows[1],
                                                                       sl.cols[0]:sl.cols[1]], block)


def test_gemm_batchnorm1d_folds(rng: np.random.Generator) -> None:
    model = make_model([node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1, alpha=0.5, beta=2.0),
                        _bn("h", "n"), node("Relu", ["n"], ["y"], name="relu")],
                       [tensor("x", [4, 6])], [tensor("y", [4, 5])],
                       [const("w", weights(rng, 5, 6)), const("b", weights(rng, 5)), *_bn_consts(rng, 5)])
    prog = compile_model(model)
    assert _folded(prog) == {"bn"} and fused_activations(prog) == {"relu"} and stage_kinds(prog) == ["analog"]
    assert_verified(verify(model, program=prog))


def test_matmul_batchnorm_on_a_3d_tensor_folds_when_the_columns_are_axis_1(rng: np.random.Generator) -> None:
    # y = A @ X: (5, 6) @ (2, 6, 7) -> (2, 5, 7); the crossbar columns are A's rows, BN's channel axis 1.
    model = make_model([node("MatMul", ["a", "x"], ["h"], name="mm"), _bn("h", "y")],
                       [tensor("x", [2, 6, 7])], [tensor("y", [2, 5, 7])],
                       [const("a", weights(rng, 5, 6)), *_bn_consts(rng, 5)])
    prog = compile_model(model)
    assert _folded(prog) == {"bn"} and stage_kinds(prog) == ["analog"]
    assert prog.mvms["mm"].bias.shape == (5, 1)
    assert_verified(verify(model, program=prog))


def test_matmul_batchnorm_over_another_axis_stays_on_the_host(rng: np.random.Generator) -> None:
    # (2, 5, 6) @ (6, 5) -> (2, 5, 5): the columns are the last axis; BN normalises axis 1 (same size, other axis).
    model = make_model([node("MatMul", ["x", "w"], ["h"], name="mm"), _bn("h", "y")],
                       [tensor("x", [2, 5, 6])], [tensor("y", [2, 5, 5])],
                       [const("w", weights(rng, 6, 5)), *_bn_consts(rng, 5)])
    prog = compile_model(model)
    assert _folded(prog) == set() and host_nodes(prog) == {"bn"}
    assert_verified(verify(model, program=prog))


def test_batchnorm_whose_input_feeds_another_node_is_not_folded(rng: np.random.Generator) -> None:
    model = make_model([node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), _bn("c", "n"),
                        node("Add", ["c", "n"], ["y"], name="add")],
                       [tensor("x", [2, 4, 6, 6])], [tensor("y", [2, 8, 6, 6])],
                       [const("w", weights(rng, 8, 4, 3, 3)), *_bn_consts(rng, 8)])
    prog = compile_model(model)
    assert _folded(prog) == set() and host_nodes(prog) == {"bn", "add"}
    assert_verified(verify(model, program=prog))


def test_batchnorm_with_a_computed_mean_is_not_folded(rng: np.random.Generator) -> None:
    consts = _bn_consts(rng, 8)
    model = make_model([node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                        node("BatchNormalization", ["c", "bn_s", "bn_b", "mean", "bn_v"], ["n"], name="bn"),
                        node("Relu", ["n"], ["y"], name="relu")],
                       [tensor("x", [2, 4, 6, 6]), tensor("mean", [8])], [tensor("y", [2, 8, 6, 6])],
                       [const("w", weights(rng, 8, 4, 3, 3)), *(c for c in consts if c.name != "bn_m")])
    prog = compile_model(model)
    assert _folded(prog) == set() and fused_activations(prog) == set() and host_nodes(prog) == {"bn", "relu"}
    inputs = {"x": rng.standard_normal((2, 4, 6, 6)).astype(np.float32),
              "mean": rng.standard_normal(8).astype(np.float32)}
    assert_verified(verify(model, program=prog, inputs=inputs))


def test_batchnorm_whose_input_is_a_graph_output_is_not_folded(rng: np.random.Generator) -> None:
    model = make_model([node("Conv", ["x", "w"], ["c"], name="conv"), _bn("c", "y")],
                       [tensor("x", [1, 4, 5, 5])], [tensor("c", [1, 8, 3, 3]), tensor("y", [1, 8, 3, 3])],
                       [const("w", weights(rng, 8, 4, 3, 3)), *_bn_consts(rng, 8)])
    prog = compile_model(model)
    assert _folded(prog) == set() and host_nodes(prog) == {"bn"}
    assert_verified(verify(model, program=prog))


def test_hardware_mode_runs_the_folded_layer(rng: np.random.Generator) -> None:
    model = _conv_bn(rng, bias=True)
    rep = verify(model, mode="hardware", times="1s")
    assert len(rep.times) == 1 and not rep.problems
    assert rep.to_json()["times"]


def test_check_lists_the_folded_batchnorm_as_fused(rng: np.random.Generator) -> None:
    rep = check(_conv_bn(rng))
    assert {"node": "bn", "op_type": "BatchNormalization", "into": "conv"} in rep["fused"]
    assert {"node": "relu", "op_type": "Relu", "into": "conv"} in rep["fused"]
    assert rep["host"] == []


def test_plan_folds_the_structure_without_the_weights(rng: np.random.Generator, tmp_path: Path) -> None:
    # 32 x 16 x 3 x 3 = 4608 weights: a plan makes a placeholder of them.
    model = make_model([node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]), _bn("c", "n"),
                        node("Relu", ["n"], ["y"], name="relu")],
                       [tensor("x", [1, 16, 8, 8])], [tensor("y", [1, 32, 8, 8])],
                       [const("w", weights(rng, 32, 16, 3, 3)), *_bn_consts(rng, 32)])
    path = save(model, tmp_path)
    planned, compiled = plan_model(path), compile_model(path)
    assert _folded(planned) == _folded(compiled) == {"bn"}
    assert stage_kinds(planned) == stage_kinds(compiled) == ["analog"]
    assert summary(planned) == summary(compiled)
