"""Output conversion in current units: with a conductance scale per column, each column's range in weights
is the slice's range over the column's gain (its current per unit of weight output), as on the chip, where
the converter sees the column's current and the per-column scale is undone digitally afterwards."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends.simulator import Simulator
from anac.core.hardware import load_hardware
from helpers import const, make_model, node, tensor, weights

QUIET = {"prog_noise_poly": (0.0, 0.0, 0.0), "read_noise_q": (0.0, 0.65, 1e-3, 0.2),
         "drift_mu": (0.0, 0.0, 0.0, 0.0), "drift_sigma": (0.0, 0.0, 0.0, 0.0)}
SMALL = 0.01  # the weights of every other column, relative to the others


def _column_errors(rng: np.random.Generator, scale: str) -> np.ndarray:
    """Relative error per output column of a 64 -> 8 MatMul whose odd columns are 100x smaller, devices
    without noise, 8-bit I/O."""
    w = weights(rng, 64, 8)
    w[:, 1::2] *= SMALL
    x = {"x": rng.standard_normal((256, 64)).astype(np.float32)}
    model = make_model([node("MatMul", ["x", "w"], ["y"], name="fc")], [tensor("x", [256, 64])],
                       [tensor("y", [256, 8])], [const("w", w)])
    hw = load_hardware()
    prog = compile_model(model, hardware=replace(hw, device=replace(hw.device, **QUIET)), calibration_data=x,
                         options={"scale": scale})
    sim = Simulator(prog, "hardware")
    sim.program(0)
    y, ref = sim.run(x)["y"], x["x"] @ w
    return np.linalg.norm(y - ref, axis=0) / np.linalg.norm(ref, axis=0)  # type: ignore[no-any-return]


def test_per_column_scale_converts_each_column_in_its_own_current(rng: np.random.Generator) -> None:
    """Mapped to the full conductance range, a column of small weights draws as much current as the others,
    so the shared converter range serves it as well: its outputs keep 8-bit precision."""
    err = _column_errors(rng, "column")
    assert err.max() < 0.02, err


def test_per_tile_scale_leaves_small_columns_a_few_levels(rng: np.random.Generator) -> None:
    """One scale per slice: the small columns' currents are 100x smaller than the range the large ones need."""
    err = _column_errors(rng, "tile")
    assert err[0::2].max() < 0.02, err
    assert err[1::2].min() > 0.2, err


def test_calibrated_range_is_in_current_units(rng: np.random.Generator) -> None:
    """The stored range is the one of the slice's largest weights (gain 1); the small columns' range in
    weights is 100x smaller, as their gains are 100x larger."""
    w = weights(rng, 64, 4)
    w[:, 1::2] *= SMALL
    x = {"x": rng.standard_normal((128, 64)).astype(np.float32)}
    model = make_model([node("MatMul", ["x", "w"], ["y"], name="fc")], [tensor("x", [128, 64])],
                       [tensor("y", [128, 4])], [const("w", w)])
    prog = compile_model(model, calibration_data=x, options={"scale": "column"})
    (s,) = prog.slices
    gains = prog.column_gains(s)
    peak = np.abs(w).max(axis=0)
    np.testing.assert_allclose(gains, peak.max() / peak, rtol=1e-5)
    current = (x["x"] @ w) * gains
    assert s.output_range == pytest.approx(np.abs(current).max(), rel=0.25)
