"""Hardware mode end to end: PCM noise and 8-bit I/O against onnxruntime, at fixed seeds."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model, load_inputs, load_program, save_program, verify
from anac.backends.calibrate import calibrate
from anac.backends.simulator import Simulator
from anac.cli import main
from anac.core.errors import AnacError, InputError
from anac.core.hardware import load_hardware
from click.testing import CliRunner
from helpers import const, make_model, node, tensor, weights

MODELS = Path(__file__).parents[2] / "models"
DIGITS = MODELS / "digits_mlp.onnx"


@pytest.fixture(scope="module")
def digits() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    return load_inputs(MODELS / "digits_test.npz"), load_inputs(MODELS / "digits_calib.npz")


def _report(encoding: str, data, comp: bool = True, times: str = "1s,1d,1y", repeats: int = 3):  # type: ignore[no-untyped-def]
    test, calib = data
    prog = compile_model(DIGITS, input_shapes={"input": test["input"].shape}, options={"encoding": encoding},
                         calibration_data=calib)
    return verify(DIGITS, program=prog, inputs=test, mode="hardware", times=times, repeats=repeats,
                  drift_compensation=comp)


def _err(rep, label: str) -> float:  # type: ignore[no-untyped-def]
    return next(t for t in rep.times if t.label == label).outputs["logits"]["rel_err"].mean


def test_4pcm_is_closer_to_float_than_2pcm(digits) -> None:  # type: ignore[no-untyped-def]
    four, two = _report("4-PCM", digits), _report("2-PCM", digits)
    for label in ("1s", "1d", "1y"):
        assert _err(four, label) < _err(two, label), label
    # Both stay near the float model: a few per cent of output error, accuracy within 2 points.
    assert four.reference_accuracy == pytest.approx(0.9796, abs=1e-4)
    for t in four.times:
        assert t.outputs["logits"]["rel_err"].mean < 0.2
        assert t.accuracy.mean > four.reference_accuracy - 0.02
    assert four.passed and four.accuracy_output == "logits"


def test_drift_compensation_recovers_the_drift(digits) -> None:  # type: ignore[no-untyped-def]
    on, off = _report("4-PCM", digits, True, "1s,1y"), _report("4-PCM", digits, False, "1s,1y")
    # Right after programming the two agree; a year of drift shrinks the uncompensated outputs.
    assert abs(_err(on, "1s") - _err(off, "1s")) < 0.02
    assert _err(off, "1y") > 0.5 and _err(on, "1y") < 0.15
    acc_off = next(t for t in off.times if t.label == "1y").accuracy.mean
    acc_on = next(t for t in on.times if t.label == "1y").accuracy.mean
    assert acc_on > acc_off
    assert not off.passed  # 0.85 mean relative error is outside the default 0.25


def test_programming_is_seeded(digits) -> None:  # type: ignore[no-untyped-def]
    test, calib = digits
    prog = compile_model(DIGITS, input_shapes={"input": test["input"].shape}, calibration_data=calib)
    sim = Simulator(prog, "hardware")
    x = {"input": test["input"]}
    runs = []
    for seed in (7, 7, 8):
        sim.program(seed)
        sim.at(3600.0)
        runs.append(sim.run(x)["logits"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_saved_program_simulates_the_same(tmp_path: Path, digits) -> None:  # type: ignore[no-untyped-def]
    test, calib = digits
    prog = compile_model(DIGITS, input_shapes={"input": test["input"].shape}, calibration_data=calib)
    loaded = load_program(save_program(prog, tmp_path / "d.anac"))
    assert [m.input_range for m in loaded.mvms.values()] == [m.input_range for m in prog.mvms.values()]
    for s in prog.slices:
        np.testing.assert_array_equal(loaded.targets(s)[0], prog.targets(s)[0])
    outs = []
    for p in (prog, loaded):
        sim = Simulator(p, "hardware")
        sim.program(3)
        sim.at(86400.0)
        outs.append(sim.run({"input": test["input"]})["logits"])
    np.testing.assert_array_equal(*outs)


def _gemm_relu(rng: np.random.Generator, k: int, bias: bool):  # type: ignore[no-untyped-def]
    inits = [const("w", weights(rng, k, 20))] + ([const("b", weights(rng, 20))] if bias else [])
    return make_model([node("Gemm", ["x", "w"] + (["b"] if bias else []), ["h"], name="fc"),
                       node("Relu", ["h"], ["y"], name="relu")],
                      [tensor("x", [64, k])], [tensor("y", [64, 20])], inits)


@pytest.mark.parametrize("k,bias,at_tile", [(100, False, True), (100, True, False), (700, False, False)])
def test_fused_relu_runs_at_the_tile_output_when_it_can(rng: np.random.Generator, k: int, bias: bool,
                                                         at_tile: bool) -> None:
    model = _gemm_relu(rng, k, bias)
    x = {"x": rng.standard_normal((64, k)).astype(np.float32)}
    prog = compile_model(model, calibration_data=x)
    from anac.backends.simulator import tile_activation

    assert tile_activation(prog, prog.mvms["fc"]) is at_tile
    y = Simulator(prog, "hardware")
    y.program(0)
    out = y.run(x)["y"]
    assert out.min() >= 0
    if at_tile:  # one slice, unsigned 8-bit conversion of the ReLU output: 256 levels of each column's step
        (s,) = prog.slices
        gains = prog.column_gains(s)
        step = s.output_range / (np.ones(out.shape[1]) if gains is None else gains) / 255
        levels = out / step
        np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)
        assert levels.max() <= 255 + 1e-3
    rep = verify(model, program=prog, inputs=x, mode="hardware", times="1s")
    assert rep.times[0].outputs["y"]["rel_err"].mean < 0.15


def test_noiseless_devices_leave_only_quantization_error(rng: np.random.Generator) -> None:
    model = _gemm_relu(rng, 300, True)
    x = {"x": rng.standard_normal((64, 300)).astype(np.float32)}
    hw = load_hardware(preset="mythic-m1076")  # flash, with every noise and loss term turned off
    quiet = dataclasses.replace(hw.device, flash_first_sigma=0.0, flash_verify_floor=0.0, flash_read_sigma=0.0,
                                flash_retention_tau_s=1e30, flash_retention_spread=0.0)
    prog = compile_model(model, hardware=dataclasses.replace(hw, device=quiet), calibration_data=x)
    rep = verify(model, program=prog, inputs=x, mode="hardware", times="1s,1y", repeats=2)
    errs = [t.outputs["y"]["rel_err"] for t in rep.times]
    assert all(e.mean < 0.03 and e.std == 0 for e in errs)  # 8-bit weights and I/O, no noise, no drift
    assert errs[0].mean == errs[1].mean


def test_two_pass_inputs(rng: np.random.Generator) -> None:
    from dataclasses import replace

    model = _gemm_relu(rng, 300, True)
    x = {"x": rng.standard_normal((64, 300)).astype(np.float32)}
    hw = replace(load_hardware(), input_sign="two-pass")
    prog = compile_model(model, hardware=hw, calibration_data=x)
    rep = verify(model, program=prog, inputs=x, mode="hardware", times="1s", repeats=2)
    assert rep.times[0].outputs["y"]["rel_err"].mean < 0.15


def test_hardware_mode_needs_calibration_and_a_programmed_chip(rng: np.random.Generator) -> None:
    model = _gemm_relu(rng, 50, True)
    prog = compile_model(model)
    with pytest.raises(AnacError, match="no calibrated input/output ranges"):
        Simulator(prog, "hardware")
    calibrate(prog, {"x": rng.standard_normal((64, 50)).astype(np.float32)})
    sim = Simulator(prog, "hardware")
    with pytest.raises(AnacError, match="program a chip instance"):
        sim.run({"x": np.zeros((64, 50), np.float32)})
    with pytest.raises(AnacError, match="finite number >= 0"):
        sim.program(0)
        sim.at(-5.0)


def test_calibration_fallback_warns_and_bad_data_is_rejected(rng: np.random.Generator,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    model = _gemm_relu(rng, 50, True)
    prog = compile_model(model)
    with caplog.at_level(logging.WARNING):
        info = calibrate(prog)
    assert "no calibration data" in caplog.text and info["source"].startswith("fallback")
    assert all(m.input_range > 0 for m in prog.mvms.values()) and all(s.output_range > 0 for s in prog.slices)
    with pytest.raises(InputError, match="missing x; unknown pixels"):
        calibrate(prog, {"pixels": np.zeros((64, 50), np.float32)})
    with pytest.raises(InputError, match=r"calibration array 'x' is float32 \[64, 49\]"):
        calibrate(prog, {"x": np.zeros((64, 49), np.float32)})
    # Fewer samples than one compiled batch wrap around to fill it.
    assert calibrate(prog, {"x": rng.standard_normal((10, 50)).astype(np.float32)})["source"] == "data: 1 batch(es)"


def _cli(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(main, [str(a) for a in args])
    if r.exception and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.stdout, r.stderr


def test_cli_hardware_verify_json() -> None:
    code, out, _ = _cli("verify", DIGITS, "--inputs", MODELS / "digits_test.npz", "--mode", "hardware",
                        "--t", "1s,1d", "--repeats", "2", "--calibration-data", MODELS / "digits_calib.npz",
                        "--json", "-q")
    rep = json.loads(out)
    assert code == 0 and rep["mode"] == "hardware" and rep["passed"] and rep["repeats"] == 2
    assert [t["t"] for t in rep["times"]] == ["1s", "1d"] and rep["times"][1]["seconds"] == 86400.0
    acc = rep["times"][0]["accuracy"]
    assert set(acc) == {"mean", "std"} and abs(acc["mean"] - rep["reference_accuracy"]) < 0.02
    assert set(rep["times"][0]["outputs"]["logits"]) == {"max_abs_err", "rel_err", "cosine", "argmax_agreement"}


@pytest.mark.parametrize("args,needle", [
    (["--mode", "hardware", "--t", "1h,-2d"], "cannot read time '-2d'"),
    (["--mode", "hardware", "--t", "soon"], "cannot read time 'soon'"),
    (["--mode", "hardware", "--calibration-data", MODELS / "mnist_calib.npz"], "calibration array 'input'"),
])
def test_cli_hardware_bad_input(args: list[object], needle: str) -> None:
    code, _, err = _cli("verify", DIGITS, "--batch", "2", *args)
    assert code == 1 and needle in err and "Traceback" not in err


def test_cli_unknown_encoding(tmp_path: Path) -> None:
    code, _, err = _cli("compile", DIGITS, "--input-shape", "input=1,64", "--encoding", "3-PCM",
                        "-o", tmp_path / "d.anac")
    assert code == 1 and "unknown encoding '3-PCM'" in err and not (tmp_path / "d.anac").exists()
    code, _, err = _cli("compile", DIGITS, "--input-shape", "input=1,64", "--encoding", "fc9_matmul=2-PCM",
                        "-o", tmp_path / "d.anac")
    assert code == 1 and "fc9_matmul" in err and "fc0_matmul" in err


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_conv_row_blocks_on_onnxruntime_compute_what_im2col_rows_do(rng: np.random.Generator, input_sign: str,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Hardware-mode convs run each row block as an onnxruntime Conv of the quantized input with the block's
    read weights; the im2col path (one matmul per row block over receptive-field rows) gives the same outputs,
    here with two groups, 2 x 100 x 9 = 900 rows per group (two row blocks, the second starting mid-channel),
    rows pruned (a zero input channel), strides, dilation, padding and a fused ReLU."""
    w = weights(rng, 8, 100, 3, 3, scale=0.05)
    w[:, 7] = 0  # channel 7 of each group contributes nothing: prune_inputs drops its rows
    attrs = {"group": 2, "strides": [2, 1], "dilations": [1, 2], "pads": [1, 2, 0, 1]}
    model = make_model([node("Conv", ["x", "w", "b"], ["c"], name="conv", **attrs),
                        node("Relu", ["c"], ["y"], name="relu")],
                       [tensor("x", [3, 200, 9, 10])], [tensor("y", [None] * 4)],
                       [const("w", w), const("b", weights(rng, 8, scale=0.1))])
    x = {"x": rng.standard_normal((3, 200, 9, 10)).astype(np.float32)}
    prog = compile_model(model, hardware=dataclasses.replace(load_hardware(), input_sign=input_sign),
                         calibration_data=x)
    assert all(m.kept_rows is not None for m in prog.matrices.values())
    assert len({s.rows[0] for s in prog.slices if s.matrix == "conv#g0"}) == 2

    def run() -> np.ndarray:
        sim = Simulator(prog, "hardware")
        sim.program(3)
        sim.at(3600.0)
        return sim.run(x)["y"]

    y = run()
    monkeypatch.setattr("anac.backends.simulator._hw_conv_model", lambda mvm, n: None)  # the im2col path
    ref = run()
    assert np.abs(ref).max() > 0
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-6)
