"""partition: analog vs host, stage levels, and self-contained host subgraphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from helpers import const, make_model, node, tensor, weights

from compiler.driver import compile_model


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
