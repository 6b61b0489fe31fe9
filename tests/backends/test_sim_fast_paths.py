"""The simulator's fast paths compute what the step-by-step paths compute.

Ideal mode without an observer runs each run of host stages and MVMs as one onnxruntime graph and a
recurrent cell as one session per step with its input products made for all steps first; hardware mode
runs a cell's x-only slices over all steps at once. These pin them against the plain paths.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
from anac.api import compile_model
from anac.backends import simulator
from anac.backends.simulator import Simulator
from anac.core.hardware import load_hardware
from helpers import const, make_model, node, tensor, weights


def _ort(model, feeds):  # type: ignore[no-untyped-def]
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _mixed(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """Host stages between MVMs of several forms: a conv with bias and a clipped output, a Gemm with alpha and
    a broadcast bias, a MatMul with all-zero weight rows (pruned: kept_rows)."""
    wc = weights(rng, 4, 3, 3, 3, scale=0.3)
    wg = weights(rng, 256, 32)
    wm = weights(rng, 32, 16)
    wm[5:9] = 0  # all-zero rows: prune_inputs drops them (kept_rows)
    nodes = [node("Conv", ["x", "wc", "bc"], ["c"], pads=[1, 1, 1, 1]),
             node("Clip", ["c", "lo", "hi"], ["cc"]),
             node("Flatten", ["cc"], ["f"]),
             node("Gemm", ["f", "wg", "bg"], ["g"], alpha=0.5),
             node("Tanh", ["g"], ["t"]),
             node("MatMul", ["t", "wm"], ["m"]),
             node("Softmax", ["m"], ["y"], axis=-1)]
    inits = [const("wc", wc), const("bc", weights(rng, 4, scale=0.1)), const("lo", np.float32(0)),
             const("hi", np.float32(1.5)), const("wg", wg), const("bg", weights(rng, 1, 32, scale=0.1)),
             const("wm", wm)]
    model = make_model(nodes, [tensor("x", [2, 3, 8, 8])], [tensor("y", [2, 16])], inits)
    return model, {"x": rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}


def test_ideal_fused_graph_matches_stage_by_stage_and_is_deterministic(rng: np.random.Generator) -> None:
    model, feeds = _mixed(rng)
    prog = compile_model(model)
    assert len(prog.stages) > 2 and len(prog.mvms) == 3
    assert any(m.kept_rows is not None for m in prog.matrices.values())
    fused = Simulator(prog)
    a = fused.run(feeds)["y"]
    assert len(fused._sessions) == 1  # the whole program in one graph
    assert fused.run(feeds)["y"].tobytes() == a.tobytes() == Simulator(prog).run(feeds)["y"].tobytes()
    staged = Simulator(prog, observer=lambda *_: None).run(feeds)["y"]  # stage by stage, slice by slice
    ref = _ort(model, feeds)[0]
    np.testing.assert_allclose(a, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a, staged, rtol=1e-5, atol=1e-6)


def _lstm(rng: np.random.Generator, seq: int, batch: int, n_in: int, hidden: int, **attrs):  # type: ignore[no-untyped-def]
    dirs = 2 if attrs.get("direction") == "bidirectional" else 1
    w = weights(rng, dirs, 4 * hidden, n_in, scale=1 / np.sqrt(n_in))
    r = weights(rng, dirs, 4 * hidden, hidden, scale=1 / np.sqrt(hidden))
    b = weights(rng, dirs, 8 * hidden, scale=0.1)
    lens = np.array([seq] + [max(1, seq - 2)] * (batch - 1), np.int32)
    model = make_model([node("LSTM", ["x", "w", "r", "b", "lens"], ["y", "y_h", "y_c"], name="rec",
                             hidden_size=hidden, **attrs)],
                       [tensor("x", [seq, batch, n_in])],
                       [tensor("y", [seq, dirs, batch, hidden]), tensor("y_h", [dirs, batch, hidden]),
                        tensor("y_c", [dirs, batch, hidden])],
                       [const("w", w), const("r", r), const("b", b), const("lens", lens)])
    return model, {"x": rng.standard_normal((seq, batch, n_in)).astype(np.float32)}


def test_ideal_lstm_fused_cell_matches_onnxruntime_and_the_plain_cell(rng: np.random.Generator) -> None:
    model, feeds = _lstm(rng, 6, 3, 5, 7, direction="bidirectional")
    prog = compile_model(model)
    fast = Simulator(prog)
    got = fast.run(feeds)
    assert any(k[0] == "cell" for k in fast._fused) and all(v is not None for v in fast._fused.values())
    plain = Simulator(prog, observer=lambda *_: None).run(feeds)
    for name, ref in zip(("y", "y_h", "y_c"), _ort(model, feeds), strict=True):
        np.testing.assert_allclose(got[name], ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[name], plain[name], rtol=1e-5, atol=1e-6)
        assert fast.run(feeds)[name].tobytes() == got[name].tobytes()


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_hardware_lstm_x_only_slices_over_all_steps_change_nothing(rng: np.random.Generator,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   input_sign: str) -> None:
    """A 128-input, 256-hidden LSTM: its [W; R] (384 x 1024) is packed with a slice of x rows only, which
    runs over all steps in one product; the outputs are those of running every slice per step, bit for bit
    (two-pass inputs: to the float32 rounding of the digital sums, added in another order)."""
    model, feeds = _lstm(rng, 5, 2, 128, 256)
    prog = compile_model(model, hardware=replace(load_hardware(), input_sign=input_sign), calibration_data=feeds)
    fast = Simulator(prog, "hardware")
    fast.program(3)
    fast.at(3600.0)
    got = fast.run(feeds)
    assert fast._x_blocks, "the plan has no x-only slice: this test no longer exercises the split"
    monkeypatch.setattr(Simulator, "_layout_recurrent", lambda self: None)
    plain = Simulator(prog, "hardware")
    plain.program(3)
    plain.at(3600.0)
    want = plain.run(feeds)
    assert fast.read_weight_bytes() <= plain.read_weight_bytes()  # held once (less zero padding when split)
    for name in ("y", "y_h", "y_c"):
        if input_sign == "polarity":
            assert got[name].tobytes() == want[name].tobytes()
        else:  # (x+ - x-) + (h+ - h-) against (x+ + h+) - (x- + h-): the digital sum's float32 rounding
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6)


def test_fused_graphs_are_cut_at_a_weight_budget(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a budget below one layer's weights each MVM starts a graph of its own (and the host stages after
    it join it); the outputs are the same (to float32 rounding: onnxruntime may fuse ops across the joins)."""
    model, feeds = _mixed(rng)
    prog = compile_model(model)
    whole = Simulator(prog).run(feeds)["y"]
    monkeypatch.setattr("anac.backends.simulator._FUSED_BYTES", 1)
    cut = Simulator(prog)
    np.testing.assert_allclose(cut.run(feeds)["y"], whole, rtol=1e-6, atol=1e-7)
    assert len(cut._sessions) == len([s for s in cut._steps if s[0] == "fused"]) > 1


def test_a_joined_graph_onnxruntime_refuses_runs_part_by_part(rng: np.random.Generator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    model, feeds = _mixed(rng)
    prog = compile_model(model)
    want = Simulator(prog).run(feeds)["y"]
    real = simulator._fuse

    def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
        joined = real(*args, **kwargs)
        if joined is not None:
            joined[0].graph.node[0].op_type = "NoSuchOp"
        return joined
    monkeypatch.setattr(simulator, "_fuse", broken)
    sim = Simulator(prog)
    np.testing.assert_allclose(sim.run(feeds)["y"], want, rtol=1e-5, atol=1e-6)
    assert sim._steps and not any(kind == "fused" for kind, _ in sim._steps)
