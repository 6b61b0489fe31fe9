"""Device families (backends/devices): statistics against each family's formulas, reproducibility,
no mutation of inputs, spec validation, the presets command, and direction tests on the digits MLP."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends.analog import ProgrammedChip
from anac.backends.devices import FAMILIES, family_model
from anac.backends.devices.ecram import ECRAMModel
from anac.backends.devices.flash import FlashModel
from anac.backends.devices.reram import ReRAMModel
from anac.cli import main
from anac.core.errors import HardwareSpecError
from anac.core.hardware import DEVICE_FAMILIES, PRESETS, DeviceModel, load_hardware
from click.testing import CliRunner

N = 100_000
MODELS = Path(__file__).parents[2] / "models"


def _spec(family: str, **kw: object) -> DeviceModel:
    return dataclasses.replace(DeviceModel(family=family), **kw)


def _within(measured: float, want: float, n: int = N) -> bool:
    return abs(measured - want) < 5 * want / math.sqrt(2 * n)


def test_registry_matches_the_spec_families() -> None:
    assert tuple(FAMILIES) == DEVICE_FAMILIES
    for f in DEVICE_FAMILIES:
        assert type(family_model(DeviceModel(family=f))) is FAMILIES[f]


# --- programming spread vs the stated sigma ---

@pytest.mark.parametrize("iters", [0, 2, 4])
def test_flash_verify_shrinks_the_programming_error(iters: int) -> None:
    spec = _spec("flash", flash_verify_iterations=iters)
    model = FlashModel(spec)
    want = max(0.05 * 0.5**iters, 0.002) * spec.g_max_us
    assert model.prog_sigma() == pytest.approx(want)
    g = model.program(np.full(N, 12.5, np.float32), np.random.default_rng(1)).astype(np.float64)
    assert abs(g.mean() - 12.5) < 5 * want / math.sqrt(N)
    assert _within(g.std(), want)


def test_flash_more_verify_iterations_means_smaller_error() -> None:
    sigmas = [FlashModel(_spec("flash", flash_verify_iterations=i)).prog_sigma() for i in range(8)]
    assert all(a >= b for a, b in zip(sigmas[:-1], sigmas[1:], strict=True)) and sigmas[0] > 10 * sigmas[-1]


@pytest.mark.parametrize("k", [16, 100, 255])
def test_ecram_up_scheme_spread_grows_with_the_pulse_count(k: int) -> None:
    model = ECRAMModel(DeviceModel(family="ecram"))
    step = 25.0 / 255
    g = model.program(np.full(N, k * step, np.float32), np.random.default_rng(2)).astype(np.float64)
    sigma = math.sqrt(k) * 0.05 * step
    if k < 255:  # away from the g_max clip
        assert abs(g.mean() - k * step) < 5 * sigma / math.sqrt(N)
        assert _within(g.std(), sigma)
    else:
        assert g.max() <= 25.0


def test_ecram_down_pulses_undershoot_by_the_asymmetry() -> None:
    model = ECRAMModel(_spec("ecram", ecram_scheme="updown"))
    step = 25.0 / 255
    n = -40
    target = 12.5 + n * step
    g = model.program(np.full(N, target, np.float32), np.random.default_rng(3)).astype(np.float64)
    want = 12.5 + n * 0.9 * step  # down steps are (1 - 0.1) of the nominal step
    assert abs(g.mean() - want) < 0.01
    # the same target reached by up pulses from 0 lands within half a state (its grid is offset by half a
    # step): the pulse scheme, not only the target, sets the programmed value
    up = ECRAMModel(DeviceModel(family="ecram")).program(np.full(N, target, np.float32), np.random.default_rng(3))
    assert abs(up.mean() - target) < step / 2 + 0.01
    assert abs(g.mean() - target) > 3 * step


@pytest.mark.parametrize("g_t", [2.0, 10.0, 30.0])
def test_reram_programming_sigma_follows_the_neurram_fit(g_t: float) -> None:
    spec = _spec("reram", g_max_us=40.0)
    sigma = 1.053 + 0.2374 * g_t - 1.167e-2 * g_t**2 + 1.536e-4 * g_t**3
    g = ReRAMModel(spec).program(np.full(N, g_t, np.float32), np.random.default_rng(4)).astype(np.float64)
    if g_t - 4 * sigma > 0 and g_t + 4 * sigma < 40:
        assert abs(g.mean() - g_t) < 5 * sigma / math.sqrt(N)
        assert _within(g.std(), sigma)
    assert g.min() >= 0 and g.max() <= 40


# --- drift / relaxation vs formula ---

@pytest.mark.parametrize("t", [0.0, 86400.0, 3.15e7, 3.15e9])
def test_flash_charge_loss_is_exponential(t: float) -> None:
    model = FlashModel(_spec("flash", flash_read_sigma=0.0))
    tau = np.array([1e8, 3.15e9, 1e11], np.float32)
    g = np.full(3, 10.0, np.float32)
    read = model.read(g, tau, t, np.random.default_rng(0))
    np.testing.assert_allclose(read, 10.0 * np.exp(-t / tau.astype(np.float64)), rtol=1e-5)


def test_flash_refresh_restores_the_charge() -> None:
    model = FlashModel(_spec("flash", flash_read_sigma=0.0, flash_refresh_s=86400.0))
    tau = np.full(1, 1e6, np.float32)
    g = np.full(1, 10.0, np.float32)
    just_before = model.read(g, tau, 86399.0, np.random.default_rng(0))
    just_after = model.read(g, tau, 86401.0, np.random.default_rng(0))
    assert just_before[0] < 9.2 and just_after[0] == pytest.approx(10.0 * math.exp(-1 / 1e6), rel=1e-6)


def test_flash_temperature_coefficient() -> None:
    hot = FlashModel(_spec("flash", flash_read_sigma=0.0, temperature_k=350.0))
    read = hot.read(np.full(1, 10.0, np.float32), np.full(1, 1e30, np.float32), 0.0, np.random.default_rng(0))
    assert read[0] == pytest.approx(10.0 * (1 - 0.002 * 50), rel=1e-6)


def test_flash_read_noise_sigma() -> None:
    model = FlashModel(DeviceModel(family="flash"))
    read = model.read(np.full(N, 10.0, np.float32), np.full(N, 1e30, np.float32), 0.0, np.random.default_rng(5))
    assert _within((read / 10.0 - 1).std(), 0.005)


@pytest.mark.parametrize("t", [0.0, 60.0, 120.0, 600.0, 86400.0])
def test_ecram_relaxation_is_exponential_in_minutes(t: float) -> None:
    model = ECRAMModel(_spec("ecram", ecram_read_sigma=0.0))
    g = np.array([5.0, 20.0], np.float32)
    delta = model.state(g, g, np.random.default_rng(0))
    read = model.read(g, delta, t, np.random.default_rng(0))
    want = g - 0.05 * (g - 0.0) * (1 - math.exp(-t / 120.0))
    np.testing.assert_allclose(read, want, rtol=1e-6)


@pytest.mark.parametrize("t", [1.0, 3600.0, 86400.0])
def test_reram_relaxation_spread_grows_per_decade(t: float) -> None:
    model = ReRAMModel(_spec("reram", g_max_us=40.0, reram_read_sigma=0.0))
    g = np.full(N, 20.0, np.float32)
    z = model.state(g, g, np.random.default_rng(6))
    read = model.read(g, z, t, np.random.default_rng(7)).astype(np.float64)
    assert _within((read - 20.0).std(), 0.4 * math.log10(1 + t))


# --- reproducibility and no mutation, every family ---

@pytest.mark.parametrize("family", DEVICE_FAMILIES)
def test_seeds_reproduce_and_inputs_are_not_mutated(family: str) -> None:
    model = family_model(DeviceModel(family=family))
    targets = np.random.default_rng(0).uniform(0, 20, (2, 50, 40)).astype(np.float32)
    keep = targets.copy()

    def run(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        g = model.program(targets, rng)
        s = model.state(targets, g, rng)
        g_keep, s_keep = g.copy(), s.copy()
        read = model.read(g, s, 3600.0, np.random.default_rng([seed, 1]))
        np.testing.assert_array_equal(g, g_keep)
        np.testing.assert_array_equal(s, s_keep)
        return g, s, read

    a, b, c = run(3), run(3), run(4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[2], c[2])
    np.testing.assert_array_equal(targets, keep)
    assert all(x.dtype == np.float32 and x.shape == targets.shape for x in a)


# --- validation ---

@pytest.mark.parametrize(("device", "words"), [
    ({"family": "mram"}, ["device.family", "pcm, flash, ecram, reram", "'mram'"]),
    ({"flash_read_sigma": -0.1}, ["device.flash_read_sigma", "[0.0, inf]", "-0.1"]),
    ({"ecram_states": 0}, ["device.ecram_states", "integer", "[2, inf]"]),
    ({"ecram_states": 2.5}, ["device.ecram_states", "integer"]),
    ({"ecram_relax_tau_s": 0}, ["device.ecram_relax_tau_s", "(0.0, inf]"]),
    ({"flash_verify_shrink": 1.5}, ["device.flash_verify_shrink", "[0.0, 1.0]"]),
    ({"g_max_us": "25"}, ["device.g_max_us", "number"]),
    ({"ecram_scheme": "random"}, ["device.ecram_scheme", "'up' or 'updown'"]),
])
def test_bad_device_fields_name_the_field_and_range(tmp_path: Path, device: dict, words: list[str]) -> None:
    f = tmp_path / "hw.json"
    f.write_text(json.dumps({"preset": "mythic-m1076", "device": device}))
    with pytest.raises(HardwareSpecError) as e:
        load_hardware(f)
    for w in words:
        assert w in str(e.value)


def test_missing_family_defaults_and_legacy_kind_is_read(tmp_path: Path) -> None:
    f = tmp_path / "hw.json"
    f.write_text(json.dumps({"preset": "ibm-pcm-14nm", "device": {"kind": "flash"}}))
    hw = load_hardware(f)
    assert hw.device.family == "flash" and "flash_read_sigma" in hw.device.sources  # the family's own sources
    assert DeviceModel().family == "pcm"


def test_hardware_option_takes_a_preset_name() -> None:
    assert load_hardware("neurram").device.family == "reram"
    assert load_hardware("protonic-ecram").tile_rows == 512


# --- anac presets ---

def test_presets_command_lists_every_preset() -> None:
    out = CliRunner().invoke(main, ["presets", "--json"])
    assert out.exit_code == 0, out.output
    rows = {r["name"]: r for r in json.loads(out.output)["presets"]}
    assert set(rows) == set(PRESETS)
    assert rows["mythic-m1076"]["family"] == "flash" and rows["mythic-m1076"]["bits_per_device"] == 8
    assert "hypothetical" in rows["protonic-ecram"]["sources"]["chip"]
    assert rows["protonic-ecram"]["array"] == [512, 512]
    assert "Wan" in rows["neurram"]["sources"]["reram_prog_poly"]
    assert any("proxy" in v for v in rows["mythic-m1076"]["sources"].values())
    text = CliRunner().invoke(main, ["presets"])
    assert text.exit_code == 0 and all(name in text.output for name in PRESETS)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_verify_in_hardware_mode_on_every_preset(preset: str) -> None:
    out = CliRunner().invoke(main, ["verify", str(MODELS / "digits_mlp.onnx"), "--mode", "hardware", "--hardware",
                                    preset, "--inputs", str(MODELS / "digits_test.npz"), "--calibration-data",
                                    str(MODELS / "digits_calib.npz"), "--t", "1s,1d", "--json", "-q"])
    assert out.exit_code == 0, out.output
    rep = json.loads(out.output)
    assert rep["passed"], rep


# --- direction tests on the digits MLP ---

def _weight_norm(preset: str, times: list[float]) -> list[float]:
    hw = load_hardware(preset=preset)
    prog = compile_model(MODELS / "digits_mlp.onnx", hardware=hw, input_shapes={"input": [1, 64]})
    chip = ProgrammedChip(prog, seed=0)
    out = []
    for t in times:
        ws = chip.weights_at(t, drift_compensation=False)
        out.append(sum(float(np.abs(w).sum()) for w in ws.values()))
    return out


def test_pcm_decays_without_compensation() -> None:
    w1s, w1d, w1y = _weight_norm("ibm-pcm-14nm", [1.0, 86400.0, 3.15e7])
    assert w1y < w1d < w1s and w1y < 0.8 * w1s


def test_flash_stays_flat_over_a_day() -> None:
    w1s, w1d = _weight_norm("mythic-m1076", [1.0, 86400.0])
    assert abs(w1d / w1s - 1) < 0.005


def test_ecram_relaxes_within_minutes() -> None:
    w0, w10m, w1h, w1d = _weight_norm("protonic-ecram", [0.0, 600.0, 3600.0, 86400.0])
    assert w10m < 0.97 * w0  # most of the 5% relaxation is done within 10 minutes
    assert abs(w1h / w1d - 1) < 0.002 and abs(w10m / w1d - 1) < 0.01  # then it is settled
