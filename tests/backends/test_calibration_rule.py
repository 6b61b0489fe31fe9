"""The calibration rule: ranges minimising the conversion's squared error at the hardware's bits."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends.calibrate import _histogram, calibrate, mse_range
from anac.backends.simulator import Simulator
from anac.core.errors import InputError
from anac.core.hardware import load_hardware
from helpers import const, make_model, node, tensor, weights

QUIET = {"prog_noise_poly": (0.0, 0.0, 0.0), "read_noise_q": (0.0, 0.65, 1e-3, 0.2),
         "drift_mu": (0.0, 0.0, 0.0, 0.0), "drift_sigma": (0.0, 0.0, 0.0, 0.0)}


def test_mse_range_follows_the_bits(rng: np.random.Generator) -> None:
    x = rng.standard_normal(200_000)
    top = np.abs(x).max()
    coarse, fine = mse_range(_histogram(x), 15), mse_range(_histogram(x), 2 ** 16 - 1)
    assert 2.0 < coarse < 3.5  # a 4-bit word clips a Gaussian near 2.5-3 sigma
    assert top <= fine <= 1.1 * top  # with 16 bits nothing is worth clipping
    assert mse_range(_histogram(np.zeros(10)), 255) == 0.0


def test_mse_range_counts_zeros_as_exact(rng: np.random.Generator) -> None:
    x = rng.standard_normal(10_000)
    relu = np.concatenate([np.maximum(x, 0), np.zeros(90_000)])
    assert mse_range(_histogram(relu), 255) == pytest.approx(mse_range(_histogram(np.maximum(x, 0)), 255))


def _heavy_tailed(rng: np.random.Generator) -> tuple[object, dict[str, np.ndarray]]:
    """Two Gemms on Laplacian inputs scaled per feature (as BN-folded, gated activations are)."""
    gain = np.exp(rng.normal(0, 1.0, 64)).astype(np.float32)
    x = (rng.laplace(size=(256, 64)) * gain).astype(np.float32)
    model = make_model([node("MatMul", ["x", "w1"], ["h"], name="fc1"), node("MatMul", ["h", "w2"], ["y"], name="fc2")],
                       [tensor("x", [256, 64])], [tensor("y", [256, 8])],
                       [const("w1", weights(rng, 64, 32)), const("w2", weights(rng, 32, 8))])
    return model, {"x": x}


def test_sixteen_bit_noiseless_hardware_is_exact_with_mse_ranges(rng: np.random.Generator) -> None:
    """The issue 18 setting: no noise, no drift, 16-bit I/O, calibrated on the test input itself. The
    99.99th percentile clips the heaviest inputs and outputs; the MSE rule keeps them."""
    model, x = _heavy_tailed(rng)
    hw = load_hardware()
    hw = replace(hw, input_bits=16, output_bits=16, device=replace(hw.device, **QUIET))
    prog = compile_model(model, hardware=hw)
    ref = Simulator(prog, "ideal").run(x)["y"]

    def err(percentile: float | None) -> float:
        info = calibrate(prog, x, percentile=percentile)
        assert info["rule"] == ("mse" if percentile is None else f"percentile {percentile}")
        sim = Simulator(prog, "hardware")
        sim.program(0)
        sim.at(1.0)
        return float(np.linalg.norm(sim.run(x)["y"] - ref) / np.linalg.norm(ref))

    mse, pct = err(None), err(99.99)
    assert mse < 1e-3 and pct > 10 * mse, (mse, pct)


def test_bad_percentile_is_refused(rng: np.random.Generator) -> None:
    model, x = _heavy_tailed(rng)
    prog = compile_model(model)
    with pytest.raises(InputError, match=r"percentile must be in \(0, 100\], got 0"):
        calibrate(prog, x, percentile=0)
