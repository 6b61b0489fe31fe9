"""The simulator in ideal mode, its input checks, and the verification figures."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from anac.api import compile_model, simulate
from anac.backends.simulator import Simulator
from anac.backends.verify import compare
from anac.core.errors import AnacError, InputError
from helpers import check_placement, const, make_model, node, slice_blocks, tensor, weights


def _ort(model, feeds):  # type: ignore[no-untyped-def]
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


@pytest.mark.parametrize("k,n", [(1, 1), (511, 513), (1200, 300), (1025, 1100)])
def test_partial_sums_over_slices_match_onnxruntime(rng: np.random.Generator, k: int, n: int) -> None:
    w = weights(rng, k, n)
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [5, k])], [tensor("y", [5, n])], [const("w", w)])
    prog = compile_model(m)
    check_placement(prog)
    # Slices lie within the 512 x 512 blocks of the grid (packing may cut them further, e.g. 1200 x 300
    # fills one tile with 512 x 300 + 512 x 212 and puts 512 x 88 and 176 x 300 on the next), so each
    # output column adds the partial sums of at least ceil(k / 512) slices.
    assert slice_blocks(prog, "y") == {(r, c) for r in range(-(-k // 512)) for c in range(-(-n // 512))}
    x = rng.standard_normal((5, k)).astype(np.float32)
    y = simulate(prog, {"x": x})["y"]
    ref = _ort(m, {"x": x})
    assert y.dtype == np.float32 and y.shape == (5, n)
    assert np.linalg.norm(y - ref) <= 1e-5 * np.linalg.norm(ref)


@pytest.mark.parametrize("spatial", [1, 2, 3])
def test_conv_of_any_spatial_rank(rng: np.random.Generator, spatial: int) -> None:
    size = {1: [17], 2: [9, 8], 3: [5, 6, 4]}[spatial]
    k = [3] * spatial
    w = weights(rng, 6, 4, *k)
    attrs = {"strides": [2] * spatial, "dilations": [1] + [2] * (spatial - 1), "pads": [1] * spatial + [0] * spatial}
    m = make_model([node("Conv", ["x", "w", "b"], ["y"], name="conv", **attrs)],
                   [tensor("x", [2, 4, *size])], [tensor("y", [None] * (spatial + 2))],
                   [const("w", w), const("b", weights(rng, 6))])
    x = rng.standard_normal((2, 4, *size)).astype(np.float32)
    prog = compile_model(m)
    assert set(prog.mvms) == {"conv"}
    y, ref = simulate(prog, {"x": x})["y"], _ort(m, {"x": x})
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_simulator_is_reusable_and_checks_inputs(rng: np.random.Generator) -> None:
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [2, 3])], [tensor("y", [2, 4])],
                   [const("w", weights(rng, 3, 4))])
    sim = Simulator(compile_model(m))
    x = rng.standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_array_equal(sim.run({"x": x})["y"], sim.run({"x": x})["y"])
    with pytest.raises(InputError, match=r"missing x; unknown z"):
        sim.run({"z": x})
    with pytest.raises(InputError, match=r"input 'x' has shape \[3, 3\]; expected \[2, 3\]"):
        sim.run({"x": np.zeros((3, 3), np.float32)})
    with pytest.raises(InputError, match="input 'x' is int64; the model takes float32"):
        sim.run({"x": np.zeros((2, 3), np.int64)})
    with pytest.raises(AnacError, match="unknown simulation mode 'noisy'"):
        Simulator(compile_model(m), mode="noisy")


def test_compare_figures() -> None:
    ref = np.array([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]], np.float32)
    same = compare(ref.copy(), ref)
    assert same.max_abs_err == 0 and same.rel_err == 0 and same.cosine == pytest.approx(1.0)
    assert same.argmax_agreement == 1.0
    off = ref.copy()
    off[1] = [1.0, 2.0, 3.0]  # the second row's argmax flips
    r = compare(off, ref)
    assert r.max_abs_err == 2.0 and r.argmax_agreement == 0.5
    assert r.rel_err == pytest.approx(np.sqrt(8) / np.sqrt(28))
    assert r.cosine == pytest.approx(24 / 28)
    assert compare(np.zeros((2, 2)), np.zeros((3, 2))).rel_err == float("inf")
    labels = compare(np.array([1, 2, 3]), np.array([1, 2, 4]))
    assert labels.argmax_agreement == pytest.approx(2 / 3)
    both_nan = compare(np.array([np.nan, 1.0]), np.array([np.nan, 1.0]))
    assert both_nan.rel_err == 0.0
    assert compare(np.array([np.nan, 1.0]), np.array([0.0, 1.0])).rel_err == float("inf")


def test_host_sessions_are_made_lazily_and_bounded(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chain of MatMul/Sigmoid layers has a host stage per layer; run stage by stage (here: ideal mode with an
    observer, as calibration runs it), the simulator makes each stage's session when it first runs and keeps at
    most MAX_SESSIONS alive (remaking dropped ones), with the same outputs. Without an observer the whole chain
    is one onnxruntime graph: one session."""
    monkeypatch.setattr("anac.backends.host.MAX_SESSIONS", 3)
    nodes, inits, x = [], [], "x"
    for i in range(8):
        inits.append(const(f"w{i}", weights(rng, 6, 6)))
        nodes += [node("MatMul", [x, f"w{i}"], [f"m{i}"]), node("Sigmoid", [f"m{i}"], [f"s{i}"])]
        x = f"s{i}"
    m = make_model(nodes, [tensor("x", [2, 6])], [tensor(x, [2, 6])], inits)
    prog = compile_model(m)
    assert sum(s.kind == "host" for s in prog.stages) == 8
    sim = Simulator(prog, observer=lambda *_: None)
    assert len(sim._sessions) == 0
    feeds = {"x": rng.standard_normal((2, 6)).astype(np.float32)}
    for _ in range(2):
        y = sim.run(feeds)[x]
        assert len(sim._sessions) == 3
        np.testing.assert_allclose(y, _ort(m, feeds), rtol=1e-5, atol=1e-6)
    fused = Simulator(prog)
    np.testing.assert_allclose(fused.run(feeds)[x], _ort(m, feeds), rtol=1e-5, atol=1e-6)
    assert len(fused._sessions) == 1
