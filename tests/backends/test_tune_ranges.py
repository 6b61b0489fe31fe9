"""tune_ranges: the I/O ranges tightened for the noisy chip, chosen on calibration data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from anac.api import compile_model, load_inputs
from anac.backends.calibrate import TUNE_FACTORS, tune_ranges
from anac.core.errors import InputError
from helpers import assert_clean_error
from helpers import run_cli as run

MODELS = Path(__file__).parents[2] / "models"


@pytest.fixture(scope="module")
def calibrated():
    data = {k: v[:64] for k, v in load_inputs(MODELS / "digits_calib.npz").items()}
    prog = compile_model(MODELS / "digits_mlp.onnx", batch=32, calibration_data=data)
    return prog, data


def _ranges(prog):
    return ({k: m.input_range for k, m in prog.mvms.items()}, {s.id: s.output_range for s in prog.slices})


def test_ranges_are_scaled_by_the_chosen_factors_deterministically(calibrated) -> None:
    base, data = calibrated
    before_in, before_out = _ranges(base)
    runs = []
    for _ in range(2):
        prog = copy.deepcopy(base)
        got = tune_ranges(prog, data)
        assert got["input_factor"] in TUNE_FACTORS and got["output_factor"] in TUNE_FACTORS
        assert got["error_after"] <= got["error_before"]
        after_in, after_out = _ranges(prog)
        for k, r in before_in.items():
            assert after_in[k] == pytest.approx(r * got["input_factor"])
        for k, r in before_out.items():
            assert after_out[k] == pytest.approx(r * got["output_factor"])
        assert prog.calibration["tuned"] == got
        runs.append((got, after_in, after_out))
    assert runs[0] == runs[1]


def test_ranges_set_too_wide_are_tightened_and_the_error_falls(calibrated) -> None:
    base, data = calibrated
    prog = copy.deepcopy(base)
    for m in prog.mvms.values():  # inputs 20x wider than calibration found: most of 8 bits on empty range
        m.input_range *= 20
    got = tune_ranges(prog, data, factors=(1.0, 0.25, 0.05))
    assert got["input_factor"] < 1.0
    assert got["error_after"] < 0.9 * got["error_before"]


def test_tune_needs_calibrated_ranges_and_data() -> None:
    prog = compile_model(MODELS / "digits_mlp.onnx", batch=8)
    with pytest.raises(InputError, match="calibrate first"):
        tune_ranges(prog, None)
    with pytest.raises(InputError, match="calibration data"):
        compile_model(MODELS / "digits_mlp.onnx", batch=8, tune_ranges=True)


def test_cli_tune_ranges(tmp_path: Path) -> None:
    model, calib = MODELS / "digits_mlp.onnx", MODELS / "digits_calib.npz"
    code, _, err = run("compile", model, "--tune-ranges", "-o", tmp_path / "a.anac")
    assert_clean_error(code, err, "calibration data")
    assert not (tmp_path / "a.anac").exists()
    code, _, err = run("compile", model, "--tune-ranges", "--plan-only", "-o", tmp_path / "b")
    assert code == 2 and "--tune-ranges" in err
    code, out, err = run("compile", model, "--batch", "16", "--calibration-data", calib, "--tune-ranges",
                         "-o", tmp_path / "c.anac", "--json", "-q")
    assert code == 0, err
    tuned = json.loads((tmp_path / "c.anac" / "program.json").read_text())["calibration"]["tuned"]
    assert tuned["input_factor"] in TUNE_FACTORS and tuned["error_after"] <= tuned["error_before"]
    assert json.loads(out)["weights"] > 0
