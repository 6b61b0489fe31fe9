"""Hardware mode: a cell's product of [x_t, h] with the x rows' analog sums made for all steps first.

A slice holding x rows and h rows converts their analog sum x_t W_x + h W_h. The simulator makes the x part of
every step in one product before the loop and per step only h's part, adds them and converts. That is the same
physics (both row groups summed before the ADC); only the order of the float32 additions in each sum differs.
The first test records every output conversion of one step, split and unsplit (``_matmul_hardware`` on [x_t, h],
the plain path), and check the analog sums agree to float32 rounding and the 8-bit outputs agree except where a
sum lies that close to a level boundary. With polarity inputs a direction runs as one onnxruntime Scan doing
the same per step (its MatMul another float32 kernel); the second test pins it against the step-by-step path.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends import simulator
from anac.backends.simulator import Simulator
from anac.core.hardware import load_hardware
from helpers import const, make_model, node, tensor, weights

BATCH, N_IN, HIDDEN = 48, 128, 256


def _lstm(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """One step of a 128-input, 256-hidden LSTM from a random state: [W; R] is 384 x 1024, packed with slices
    of x and h rows together (converted per step) and of x rows only (converted over all steps)."""
    w = weights(rng, 1, 4 * HIDDEN, N_IN, scale=1 / np.sqrt(N_IN))
    r = weights(rng, 1, 4 * HIDDEN, HIDDEN, scale=1 / np.sqrt(HIDDEN))
    b = weights(rng, 1, 8 * HIDDEN, scale=0.1)
    model = make_model([node("LSTM", ["x", "w", "r", "b", "", "h0", "c0"], ["y", "y_h", "y_c"], name="rec",
                             hidden_size=HIDDEN)],
                       [tensor("x", [1, BATCH, N_IN]), tensor("h0", [1, BATCH, HIDDEN]),
                        tensor("c0", [1, BATCH, HIDDEN])],
                       [tensor("y", [1, 1, BATCH, HIDDEN]), tensor("y_h", [1, BATCH, HIDDEN]),
                        tensor("y_c", [1, BATCH, HIDDEN])],
                       [const("w", w), const("r", r), const("b", b)])
    feeds = {"x": rng.standard_normal((1, BATCH, N_IN)).astype(np.float32),
             "h0": np.tanh(rng.standard_normal((1, BATCH, HIDDEN))).astype(np.float32),
             "c0": rng.standard_normal((1, BATCH, HIDDEN)).astype(np.float32)}
    return model, feeds


def _conversions(prog, feeds, monkeypatch: pytest.MonkeyPatch,  # type: ignore[no-untyped-def]
                 split: bool) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray]], dict[str, np.ndarray], int]:
    """(analog sums, full scale, converted outputs) of every output conversion of one run, its outputs, and
    how many split steps ran; unsplit: each step's [x_t, h] through ``_matmul_hardware``, as before the split."""
    seen: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    quantize = simulator.quantize_signed

    def recorded(x: np.ndarray, full_scale, bits: int, inplace: bool = False) -> np.ndarray:  # type: ignore[no-untyped-def]
        before = x.copy()
        q = quantize(x, full_scale, bits, inplace)
        seen.append((before, np.broadcast_to(np.asarray(full_scale, np.float32), before.shape[-1:]), q.copy()))
        return q

    steps = []
    split_step = Simulator._split_step

    def step(self: Simulator, sp, h: np.ndarray, t: int) -> np.ndarray:  # type: ignore[no-untyped-def]
        steps.append(t)
        if split:
            return split_step(self, sp, h, t)
        return self._matmul_hardware(sp.mvm, np.concatenate([feeds["x"][t], h], axis=1), sp.blocks, sp.n)

    with monkeypatch.context() as m:
        m.setattr(simulator, "quantize_signed", recorded)
        m.setattr(Simulator, "_split_step", step)
        m.setattr(Simulator, "_hw_cell_scan", lambda *_: None)  # step by step (the Scan: the test below)
        sim = Simulator(prog, "hardware")
        sim.program(5)
        sim.at(86400.0)
        out = sim.run(feeds)
    return seen, out, len(steps)


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_split_sums_agree_to_float32_rounding_and_outputs_but_at_level_boundaries(
        rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, input_sign: str) -> None:
    model, feeds = _lstm(rng)
    prog = compile_model(model, hardware=replace(load_hardware(), input_sign=input_sign), calibration_data=feeds)
    got, out, n_split = _conversions(prog, feeds, monkeypatch, split=True)
    want, ref, n_plain = _conversions(prog, feeds, monkeypatch, split=False)
    assert n_split == n_plain == 1, "the cell's [x, h] product did not take the split path"
    sim = Simulator(prog, "hardware")
    sim.program(5)
    sim.at(86400.0)
    node = next(iter(sim._x_blocks))
    mixed = [s for s in sim._stacks[node][0].starts if s < N_IN]
    assert mixed, "no row block holds x and h rows: this test no longer exercises the split sums"
    assert [g[0].shape for g in got] == [w[0].shape for w in want]
    levels = 2 ** (prog.hardware.output_bits - 1) - 1
    total = mismatched = 0
    differ = False
    for (a, scale, q), (a0, _, q0) in zip(got, want, strict=True):
        tol = 1e-6 * scale  # float32 rounding of sums of a few hundred products, relative to the column's range
        np.testing.assert_array_less(np.abs(a - a0), tol + 1e-6 * np.abs(a0))
        differ |= not np.array_equal(a, a0)
        step = scale / levels
        off = q != q0
        total, mismatched = total + q.size, mismatched + int(off.sum())
        if off.any():  # one level apart, and the unsplit sum lies within the rounding of a level boundary
            np.testing.assert_allclose(np.abs(q - q0)[off], np.broadcast_to(step, q.shape)[off], rtol=1e-5)
            frac = np.abs(a0 / step - np.floor(a0 / step) - 0.5)
            assert (frac[off] * np.broadcast_to(step, q.shape)[off] <= 2 * np.broadcast_to(tol, q.shape)[off]).all()
    assert differ, "the split sums are bit for bit the unsplit ones: the test does not see the other order"
    assert total >= BATCH * 4 * HIDDEN and mismatched <= total * 1e-3
    for name in ("y", "y_h", "y_c"):  # a level flip moves a gate by one step: outputs within a few levels
        np.testing.assert_allclose(out[name], ref[name], atol=0.05)
        assert np.mean(out[name] == ref[name]) > 0.99


def test_hardware_scan_matches_the_step_by_step_path_and_follows_reads(rng: np.random.Generator,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A bidirectional LSTM with short sequences (masking), as one Scan per direction against step by step, at
    two read times: the Scan's sessions hold the read weights, so a new read must make new ones."""
    from test_sim_fast_paths import _lstm as lstm  # noqa: PLC0415 - the shared LSTM builder
    model, feeds = lstm(rng, 6, 3, 128, 256, direction="bidirectional")
    prog = compile_model(model, calibration_data=feeds)
    assert prog.hardware.input_sign == "polarity"
    scan = Simulator(prog, "hardware")
    steps = Simulator(prog, "hardware")
    monkeypatch.setattr(steps, "_hw_cell_scan", lambda *_: None)
    for sim in (scan, steps):
        sim.program(2)
    for t in (60.0, 86400.0 * 30):
        outs = []
        for sim in (scan, steps):
            sim.at(t)
            outs.append(sim.run(feeds))
        assert len(scan._hw_scans) == 2 and all(v is not None for v in scan._hw_scans.values())
        for name in ("y", "y_h", "y_c"):
            np.testing.assert_allclose(outs[0][name], outs[1][name], atol=0.05)
            assert np.mean(outs[0][name] == outs[1][name]) > 0.95
        assert scan.run(feeds)["y"].tobytes() == outs[0]["y"].tobytes()  # deterministic
