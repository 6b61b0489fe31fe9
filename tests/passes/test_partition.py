"""partition: analog vs host, stage levels, and self-contained host subgraphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from anac.api import verify
from anac.driver import compile_model
from helpers import assert_verified, const, fused_activations, host_nodes, make_model, node, tensor, weights


def _residual(rng: np.random.Generator) -> onnx.ModelProto:
    # x -> Relu -> fc1 -> Add(., relu) -> Softmax -> fc2 -> Sigmoid; fc1/fc2 analog.
    return make_model([
        node("Relu", ["x"], ["r"], name="relu"),
        node("MatMul", ["r", "w1"], ["h"], name="fc1"),
        node("Add", ["h", "r"], ["s"], name="res"),
        node("Softmax", ["s"], ["p"], name="soft", axis=-1),
        node("Gemm", ["p", "w2", "b2"], ["z"], name="fc2", transB=1),
        node("Sigmoid", ["z"], ["y"], name="sig"),
    ], [tensor("x", [2, 6])], [tensor("y", [2, 3])],
        [const("w1", weights(rng, 6, 6)), const("w2", weights(rng, 3, 6)), const("b2", weights(rng, 3))])


def test_stages_alternate_and_host_stages_are_maximal(rng: np.random.Generator) -> None:
    prog = compile_model(_residual(rng))
    kinds = [(s.kind, s.nodes) for s in prog.stages]
    assert kinds == [("host", ["relu"]), ("analog", ["fc1"]), ("host", ["res", "soft"]),
                     ("analog", ["fc2"]), ("host", ["sig"])]
    # The residual input 'r' crosses from host0 to host1 around the analog stage.
    assert prog.stages[2].inputs == ["h", "r"] and "r" in prog.stages[0].outputs


def test_host_stage_models_run_alone_in_onnxruntime(rng: np.random.Generator) -> None:
    prog = compile_model(_residual(rng))
    host1 = prog.stages[2]
    onnx.checker.check_model(host1.model, full_check=True)
    sess = ort.InferenceSession(host1.model.SerializeToString(), providers=["CPUExecutionProvider"])
    h = rng.standard_normal((2, 6)).astype(np.float32)
    r = rng.standard_normal((2, 6)).astype(np.float32)
    (p,) = sess.run(None, {"h": h, "r": r})
    e = np.exp(h + r - (h + r).max(axis=-1, keepdims=True))
    np.testing.assert_allclose(p, e / e.sum(axis=-1, keepdims=True), rtol=1e-6)


def test_parallel_analog_ops_share_one_stage(rng: np.random.Generator) -> None:
    # Q, K, V projections read the same input: one analog stage; QK^T is host (two activations).
    m = make_model([
        node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        node("Transpose", ["k"], ["kt"], perm=[1, 0]),
        node("MatMul", ["q", "kt"], ["s"], name="scores"),
        node("Softmax", ["s"], ["a"], axis=-1),
        node("MatMul", ["a", "v"], ["y"], name="attend"),
    ], [tensor("x", [4, 8])], [tensor("y", [4, 8])],
        [const("wq", weights(rng, 8, 8)), const("wk", weights(rng, 8, 8)), const("wv", weights(rng, 8, 8))])
    prog = compile_model(m)
    assert set(prog.mvms) == {"q_proj", "k_proj", "v_proj"}
    assert [s.kind for s in prog.stages] == ["analog", "host"]
    assert set(prog.stages[0].nodes) == {"q_proj", "k_proj", "v_proj"}
    assert {"scores", "attend"} <= set(prog.stages[1].nodes)


def test_host_only_model_has_no_analog_stage(rng: np.random.Generator) -> None:
    m = make_model([node("Relu", ["x"], ["y"])], [tensor("x", [1, 3])], [tensor("y", [1, 3])])
    prog = compile_model(m)
    assert prog.mvms == {} and [s.kind for s in prog.stages] == ["host"]
    assert prog.slices == [] and prog.chips_used == 0


# ---------------------------------------------------------------- fused tile-output activations


def test_relu_is_not_fused_when_the_mvm_output_has_another_reader(rng: np.random.Generator) -> None:
    # fc1's output h feeds the Relu and the residual Add: the pre-activation value must leave the crossbar.
    m = make_model([
        node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        node("Relu", ["h"], ["r"], name="relu"),
        node("Add", ["r", "h"], ["s"], name="res"),
        node("MatMul", ["s", "w2"], ["y"], name="fc2"),
    ], [tensor("x", [3, 8])], [tensor("y", [3, 4])], [const("w1", weights(rng, 8, 8)), const("w2", weights(rng, 8, 4))])
    prog = compile_model(m)
    assert fused_activations(prog) == set()
    assert prog.mvms["fc1"].activation is None and prog.mvms["fc1"].output == "h"
    assert [(s.kind, s.nodes) for s in prog.stages] == [("analog", ["fc1"]), ("host", ["relu", "res"]),
                                                         ("analog", ["fc2"])]
    assert prog.stages[0].outputs == ["h"] and prog.stages[1].inputs == ["h"]
    assert_verified(verify(m), 1e-5)

    # Nor when the MVM's output is itself a graph output (its only reader being the Relu).
    m = make_model([node("MatMul", ["x", "w1"], ["h"], name="fc1"), node("Relu", ["h"], ["r"], name="relu")],
                   [tensor("x", [3, 8])], [tensor("h", [3, 8]), tensor("r", [3, 8])], [const("w1", weights(rng, 8, 8))])
    prog = compile_model(m)
    assert fused_activations(prog) == set() and prog.mvms["fc1"].output == "h"
    assert [(s.kind, s.nodes) for s in prog.stages] == [("analog", ["fc1"]), ("host", ["relu"])]
    assert_verified(verify(m), 1e-5)


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
def test_relu_hardsigmoid_and_clip_after_gemm_are_fused(rng: np.random.Generator, bias: bool) -> None:
    # Four Gemms read x; three are followed by a tile-output activation (Clip with constant bounds is the
    # hard-tanh form), the fourth by a Clip whose min is a graph input: computed at run time, so not fused.
    k, n = 16, 12
    inits = [const("lo", np.array(-0.375, np.float32)), const("hi", np.array(0.625, np.float32))]
    nodes = []
    for i, (act, out, extra) in enumerate([("Relu", "r", {}), ("HardSigmoid", "hs", {"alpha": 0.25, "beta": 0.375}),
                                           ("Clip", "c", {}), ("Clip", "d", {})], start=1):
        inits.append(const(f"w{i}", weights(rng, k, n)))
        if bias:
            inits.append(const(f"b{i}", weights(rng, n, scale=0.5)))
        nodes.append(node("Gemm", ["x", f"w{i}"] + ([f"b{i}"] if bias else []), [f"g{i}"]))
        bounds = {"c": ["lo", "hi"], "d": ["lo_in", "hi"]}.get(out, [])
        nodes.append(node(act, [f"g{i}", *bounds], [out], **extra))
    m = make_model(nodes, [tensor("x", [5, k]), tensor("lo_in", [])],
                   [tensor(o, [5, n]) for o in ("r", "hs", "c", "d")], inits, opset=13)
    prog = compile_model(m)

    assert fused_activations(prog) == {"r", "hs", "c"}
    assert prog.mvms["g1"].activation == {"node": "r", "form": "Relu", "op": "Relu"}
    assert prog.mvms["g2"].activation == {"node": "hs", "form": "HardSigmoid", "op": "HardSigmoid",
                                          "alpha": 0.25, "beta": 0.375}
    assert prog.mvms["g3"].activation == {"node": "c", "form": "HardTanh", "op": "Clip", "min": -0.375, "max": 0.625}
    assert prog.mvms["g4"].activation is None
    assert [prog.mvms[g].output for g in ("g1", "g2", "g3", "g4")] == ["r", "hs", "c", "g4"]
    # One analog stage runs all four Gemms and carries the three activations: it hands out their outputs,
    # never the pre-activation values; only the Clip with a run-time bound is left for the host.
    assert [(s.kind, s.nodes) for s in prog.stages] == [("analog", ["g1", "g2", "g3", "g4"]), ("host", ["d"])]
    analog, host = prog.stages
    assert analog.inputs == ["x"] and analog.outputs == ["r", "hs", "c", "g4"]
    assert host.inputs == ["g4", "lo_in"] and host.outputs == ["d"]
    assert host_nodes(prog) == {"d"}
    assert_verified(verify(m, inputs={"x": rng.standard_normal((5, k)).astype(np.float32),
                                      "lo_in": np.array(-0.25, np.float32)}), 1e-5)
