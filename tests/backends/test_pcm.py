"""The PCM device model against HARDWARE.md's formulas, by statistics on >= 10^5 devices;
the quantizers and the conductance encodings exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
from anac.backends.analog import quantize_polarity, quantize_signed, quantize_unsigned
from anac.backends.pcm import PCMModel
from anac.core.conductance import combine, device_targets
from anac.core.hardware import IBM_PCM_14NM, DeviceModel, Encoding

N = 200_000
SPEC = DeviceModel()
GMAX = SPEC.g_max_us


def _sigma_prog(g: float) -> float:
    x = g / GMAX
    return (0.26348 + 1.9650 * x - 1.1731 * x * x) * (GMAX / 25)


@pytest.mark.parametrize("g_t", [2.0, 6.25, 12.5, 20.0, 25.0])
def test_programming_error_mean_and_std_per_target(g_t: float) -> None:
    rng = np.random.default_rng(1)
    g = PCMModel(SPEC).program(np.full(N, g_t, np.float32), rng).astype(np.float64)
    sigma = _sigma_prog(g_t)
    err = g - g_t
    # Targets >= 2 uS sit > 4 sigma above 0, so clipping at 0 does not bias these statistics.
    assert abs(err.mean()) < 5 * sigma / math.sqrt(N)
    assert abs(err.std() - sigma) < 5 * sigma / math.sqrt(2 * N)


def test_programming_never_goes_negative() -> None:
    g = PCMModel(SPEC).program(np.zeros(N, np.float32), np.random.default_rng(2))
    assert g.min() >= 0 and (g > 0).mean() == pytest.approx(0.5, abs=0.01)


def _folded_mean(mu: float, sigma: float) -> float:
    phi = 0.5 * (1 + math.erf(-mu / (sigma * math.sqrt(2))))
    return sigma * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sigma * sigma)) + mu * (1 - 2 * phi)


@pytest.mark.parametrize("g_t", [0.0, 1.0, 5.0, 12.5, 25.0])
def test_drift_exponent_mean_per_target(g_t: float) -> None:
    g = max(g_t / GMAX, 1e-7)
    mu = min(max(-0.0155 * math.log(g) + 0.0244, 0.049), 0.1)
    sigma = min(max(-0.0125 * math.log(g) - 0.0059, 0.008), 0.045)
    nu = PCMModel(SPEC).drift_exponents(np.full(N, g_t, np.float32), np.random.default_rng(3)).astype(np.float64)
    assert nu.min() >= 0
    assert abs(nu.mean() - _folded_mean(mu, sigma)) < 5 * sigma / math.sqrt(N)


def test_drift_factor_is_the_power_law() -> None:
    model = PCMModel(SPEC)
    nu = np.array([0.0, 0.05, 0.1], np.float32)
    for t in (0.0, 1.0, 3600.0, 86400.0, 3.15e7):
        want = ((t + 20.0) / 20.0) ** -nu.astype(np.float64)
        np.testing.assert_allclose(model.drift_factor(nu, t), want, rtol=1e-6)


@pytest.mark.parametrize("g_p", [1.0, 5.0, 25.0])
def test_read_noise_sigma_at_one_hour(g_p: float) -> None:
    t, t0, t_read = 3600.0, 20.0, 250e-9
    q = min(0.0088 / max((g_p / GMAX) ** 0.65, 1e-3), 0.2)
    sigma = q * math.sqrt(math.log((t + t0 + t_read) / (2 * t_read)))
    g = np.full(N, g_p, np.float32)
    read = PCMModel(SPEC).read(g, np.zeros(N, np.float32), t, np.random.default_rng(4)).astype(np.float64)
    rel = read / g_p - 1.0  # nu = 0: no drift, only 1/f noise
    assert abs(rel.mean()) < 5 * sigma / math.sqrt(N)
    assert abs(rel.std() - sigma) < 5 * sigma / math.sqrt(2 * N)


def test_quantizers_exactly() -> None:
    x = np.array([-3.0, -1.0, -0.5, -1 / 254, 0.0, 0.3, 1 / 127, 0.999, 1.0, 7.0], np.float32)
    step = np.float32(1 / 127)
    want = np.clip(np.rint(x / step), -127, 127) * step
    np.testing.assert_array_equal(quantize_signed(x, 1.0, 8), want.astype(np.float32))
    assert quantize_signed(np.float32(5.0), 2.0, 8) == np.float32(2.0)  # saturates at full scale
    assert quantize_signed(np.float32(-5.0), 2.0, 8) == np.float32(-2.0)
    assert len(np.unique(quantize_signed(np.linspace(-1, 1, 10001, dtype=np.float32), 1.0, 8))) == 255
    assert len(np.unique(quantize_unsigned(np.linspace(-1, 1, 10001, dtype=np.float32), 1.0, 8))) == 256
    assert len(np.unique(quantize_polarity(np.linspace(-1, 1, 10001, dtype=np.float32), 1.0, 8))) == 511
    assert quantize_unsigned(np.float32(-0.4), 1.0, 8) == 0.0
    assert quantize_polarity(np.float32(0.31), 1.0, 8) == np.float32(79 * np.float32(1 / 255))
    assert quantize_signed(np.float32(0.31), 1.0, 4) == np.float32(2 * np.float32(1 / 7))


@pytest.mark.parametrize("encoding", [*IBM_PCM_14NM.encodings, Encoding("F4", 4, 1, 4.0)], ids=lambda e: e.name)
@pytest.mark.parametrize("per_column", [False, True])
def test_conductance_targets_represent_the_weights(encoding: Encoding, per_column: bool) -> None:
    w = np.random.default_rng(5).standard_normal((64, 48)).astype(np.float32)
    t, scale = device_targets(w, encoding, GMAX, per_column)
    assert t.shape == (encoding.devices_per_weight, 64, 48)
    assert t.min() >= 0 and t.max() <= GMAX * (1 + 1e-6)
    np.testing.assert_allclose(combine(t, encoding, scale), w, atol=1e-5)
    # The largest weight (of the slice, or of each column) uses the full range of its devices.
    peak = np.abs(combine(np.clip(t, 0, None), encoding, np.ones_like(scale))).max(axis=0)
    expect = (encoding.significance_factor + 1 if encoding.devices_per_weight == 4 else 1) * GMAX
    if per_column:
        np.testing.assert_allclose(peak, expect, rtol=1e-5)
    else:
        assert peak.max() == pytest.approx(expect, rel=1e-5)
    if encoding.devices_per_weight == 2:
        assert ((t[0] == 0) | (t[1] == 0)).all()  # one device of a pair carries each sign


def test_clipping_outliers() -> None:
    w = np.zeros((10, 10), np.float32)
    w[0, 0] = 100.0
    w[1:] = np.random.default_rng(6).standard_normal((9, 10)).astype(np.float32)
    t, scale = device_targets(w, IBM_PCM_14NM.encoding("2-PCM"), GMAX, clip_sigma=3.0)
    back = combine(t, IBM_PCM_14NM.encoding("2-PCM"), scale)
    assert back[0, 0] == pytest.approx(3.0 * w.std(), rel=1e-5)
    np.testing.assert_allclose(back[1:], w[1:], atol=1e-4)
