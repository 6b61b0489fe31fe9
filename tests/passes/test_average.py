"""average: averaged copies on spare tiles (every copy computes every product); the estimate, auto, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from anac import driver
from anac.api import _layer_inputs, compile_model, load_program, save_program, summary, verify
from anac.backends.estimates import layer_sensitivity, output_sensitivity
from anac.core.errors import AnacError
from anac.core.estimates import energy, performance
from anac.core.program import copy_counts
from anac.passes.average import choose, estimated_error
from helpers import (
    assert_clean_error,
    assert_verified,
    const,
    make_model,
    node,
    run_cli,
    save,
    small_cnn,
    tensor,
    weights,
)


def _table(**sens: float) -> dict[str, dict[str, float]]:
    return {n: {"4-PCM": s, "2-PCM": 2 * s} for n, s in sens.items()}


def test_averaged_copies_run_every_product_at_the_same_time_for_more_energy(rng: np.random.Generator) -> None:
    model = small_cnn(rng)
    base = compile_model(model)
    prog = compile_model(model, options={"average": "conv1=4,conv2=2"})
    assert copy_counts(prog) == {"conv1": 4, "conv2": 2, "fc": 1}
    assert {m.node: m.copy_mode for m in prog.matrices.values()} == {"conv1": "average", "conv2": "average",
                                                                     "fc": "split"}
    # copy 0 stays where the mapping put it; each slice of every other copy on a tile of its own
    assert all(s.own_tile == (s.copy > 0) for s in prog.slices)
    assert len(prog.tiles_used()) == 1 + 3 + 1
    assert prog.averaging == {"mode": "fixed", "copies": {"conv1": 4, "conv2": 2}, "tiles": 5,
                              "tiles_without_copies": 1, "budget_tiles": 34,
                              "budget": "the 1 chip(s) the model occupies (34 tiles)"}
    # no product is split: every copy runs all 256, so throughput is that without copies; MACs grow K x
    perf, perf0 = performance(prog), performance(base)
    step = prog.hardware.mvm_time_ns * 1e-9
    for n in ("conv1", "conv2"):
        assert perf["layers"][n]["mvms"] == 256 and perf["layers"][n]["copy_mode"] == "average"
    assert perf["layers"]["conv1"]["busy_s"] == pytest.approx(256 * step)
    assert perf["throughput_per_s"] == pytest.approx(perf0["throughput_per_s"])
    macs = {"conv1": 256 * 27 * 8, "conv2": 256 * 72 * 16, "fc": 16 * 10}
    assert energy(base)["macs"] == sum(macs.values())
    assert energy(prog)["macs"] == 4 * macs["conv1"] + 2 * macs["conv2"] + macs["fc"]
    assert summary(prog)["pcm_per_weight"] == summary(base)["pcm_per_weight"]


def test_ideal_mode_with_averaged_copies_equals_onnxruntime(rng: np.random.Generator, tmp_path: Path) -> None:
    model = small_cnn(rng, batch=2)
    path = save(model, tmp_path)
    prog = compile_model(path, options={"average": "conv1=3,conv2=4,fc=2", "replicate": "conv2=1"})
    assert_verified(verify(path, program=prog), 1e-5)
    out = save_program(prog, tmp_path / "m.anac")
    back = load_program(out)
    assert copy_counts(back) == copy_counts(prog)
    assert {k: m.copy_mode for k, m in back.matrices.items()} == {k: m.copy_mode for k, m in prog.matrices.items()}
    assert back.averaging == prog.averaging
    assert_verified(verify(path, program=back), 1e-5)
    # a program written before averaged copies (no copy_mode) loads with copies that split
    pj = out / "program.json"
    data = json.loads(pj.read_text())
    for m in data["matrices"]:
        del m["copy_mode"]
    del data["averaging"]
    pj.write_text(json.dumps(data))
    old = load_program(out)
    assert {m.copy_mode for m in old.matrices.values()} == {"split"} and old.averaging is None
    data["matrices"][0]["copy_mode"] = "sum"
    pj.write_text(json.dumps(data))
    with pytest.raises(AnacError, match="copy_mode 'sum'; expected one of split, average"):
        load_program(out)


def test_auto_prefers_the_more_sensitive_layer_within_the_budget(rng: np.random.Generator) -> None:
    model = small_cnn(rng)
    # conv2 is 4x as sensitive as conv1: its first copies remove the most error per tile (scored by the
    # given table: the driver alone measures no error at the outputs)
    prog = driver.compile_model(model, options={"average": "auto", "tiles": 4,
                                                "sensitivity": _table(conv1=0.05, conv2=0.2, fc=0.01)})
    assert prog.averaging["copies"] == {"conv2": 4} and prog.averaging["score"] == "layer"
    assert len(prog.tiles_used()) <= 4 and prog.averaging["tiles"] <= prog.averaging["budget_tiles"] == 4
    assert prog.averaging["estimated_error"]["with"] < prog.averaging["estimated_error"]["without"]
    # without a budget option: the tiles of the chip the model occupies, all used, never more
    prog = driver.compile_model(model, options={"average": "auto",
                                                "sensitivity": _table(conv1=0.05, conv2=0.2, fc=0.01)})
    k = copy_counts(prog)
    assert len(prog.tiles_used()) == prog.averaging["tiles"] == 34 and prog.chips_used == 1
    assert k["conv2"] > k["conv1"] > k["fc"] >= 1
    # measured sensitivities (anac.api measures them for auto)
    prog = compile_model(model, options={"average": "auto", "tiles": 6})
    assert len(prog.tiles_used()) <= 6 and sum(prog.averaging["copies"].values()) > 0
    assert prog.averaging["score"] == "output"
    out = prog.averaging["estimated_output_error"]
    assert 0 < out["with"] < out["without"]


def _amplified(rng: np.random.Generator) -> onnx.ModelProto:
    """y = (x Wa) G + (x Wb) H: G (x100) amplifies a's errors at the output, H (x0.01) damps b's. b's first
    row is 40x its largest weight and sets its conductance scale, so on inputs whose first feature is ~0 (the
    calibration data's) its own relative error under device noise is large."""
    wb = weights(rng, 32, 32)
    wb[0] = 40 * np.abs(wb).max()
    nodes = [node("Gemm", ["x", "wa"], ["a"], name="a"), node("Gemm", ["x", "wb"], ["b"], name="b"),
             node("Gemm", ["a", "g"], ["ga"], name="ga"), node("Gemm", ["b", "h"], ["hb"], name="hb"),
             node("Add", ["ga", "hb"], ["y"], name="add")]
    inits = [const("wa", weights(rng, 32, 32)), const("wb", wb),
             const("g", 100 * np.eye(32, dtype=np.float32)), const("h", 0.01 * np.eye(32, dtype=np.float32))]
    return make_model(nodes, [tensor("x", [2, 32])], [tensor("y", [2, 32])], inits)


def test_auto_scores_layers_by_their_error_at_the_outputs(rng: np.random.Generator) -> None:
    model = _amplified(rng)
    data = {"x": rng.standard_normal((6, 32)).astype(np.float32)}
    data["x"][:, 0] *= 1e-3
    # one spare tile for the copies: one copy; the 4 layers share one tile
    prog = compile_model(model, options={"average": "auto", "average.tiles": 2}, calibration_data=data)
    own = {n: s[prog.matrices[prog.mvms[n].matrices[0]].encoding] for n, s in _measured(model, data).items()}
    assert own["b"] > 2 * own["a"]  # the old score: b's own error is the larger
    old = driver.compile_model(model, options={"average": "auto", "average.tiles": 2,
                                               "sensitivity": _measured(model, data)})
    assert old.averaging["copies"] == {"b": 2} and old.averaging["score"] == "layer"
    # at the outputs a (amplified x100) costs far more than b (damped x100): it gets the copy
    assert prog.averaging["score"] == "output"
    assert "b" not in prog.averaging["copies"] and prog.averaging["copies"].keys() <= {"a", "ga"}
    assert len(prog.tiles_used()) <= 2 and prog.averaging["tiles"] <= 2
    # measured the same way twice: the same choice, the same estimate
    again = compile_model(model, options={"average": "auto", "average.tiles": 2}, calibration_data=data)
    assert again.averaging == prog.averaging
    # more spare tiles: never more than the budget, and without calibration data (seeded random inputs)
    for tiles in (3, 5):
        p = compile_model(model, options={"average": "auto", "average.tiles": tiles})
        assert p.averaging["score"] == "output" and "b" not in p.averaging["copies"]
        assert len(p.tiles_used()) <= tiles and p.averaging["tiles"] <= tiles


def _measured(model: onnx.ModelProto, data: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """The layers' own sensitivities, as the API measures them for auto (on the calibration data's layer inputs)."""
    prog = driver.compile_model(model, options={"average": ""})
    return layer_sensitivity(prog, _layer_inputs(prog, data))


def test_output_sensitivity_follows_the_gain_after_the_layer(rng: np.random.Generator) -> None:
    prog = driver.compile_model(_amplified(rng))
    x = [{"x": rng.standard_normal((2, 32)).astype(np.float32)}]
    e = output_sensitivity(prog, x, {"a": 0.1, "b": 0.1, "ga": 0.1})
    # ga's output is nearly all of y: its relative error passes through; b's is damped 10^4 against a's
    # (its outputs are ~40x larger on these inputs)
    assert e["ga"] == pytest.approx(0.1, rel=0.05) and e["a"] == pytest.approx(0.1, rel=0.3)
    assert e["b"] < 1e-2 * e["a"]
    assert output_sensitivity(prog, x, {"a": 0.1, "b": 0.1}) == {k: e[k] for k in ("a", "b")}  # deterministic
    assert output_sensitivity(prog, x, {"a": 0.2})["a"] == pytest.approx(2 * e["a"], rel=0.01)  # linear


def test_greedy_choice_and_estimated_error() -> None:
    # one copy of a (2-tile) layer removes s^2/2 over 2 tiles; the 1-tile layer with half its s^2 goes first
    assert choose({"a": 2, "b": 1}, {"a": 0.2, "b": 0.15}, ["a", "b"], 1) == {"a": 1, "b": 2}
    assert choose({"a": 2, "b": 1}, {"a": 0.2, "b": 0.15}, ["a", "b"], 3) == {"a": 2, "b": 2}
    assert choose({"a": 1, "b": 1}, {"a": 0.2, "b": 0.15}, ["b"], 2) == {"a": 1, "b": 3}  # only candidates
    assert choose({"a": 1}, {"a": 0.2}, ["a"], 0) == {"a": 1}
    assert estimated_error({"a": 0.2, "b": 0.1}, {"a": 4}) == pytest.approx((0.04 / 4 + 0.01) ** 0.5)


def test_auto_needs_sensitivities(rng: np.random.Generator) -> None:
    with pytest.raises(AnacError, match="--average auto chooses layers by their measured sensitivity"):
        driver.compile_model(small_cnn(rng), options={"average": "auto"})


@pytest.mark.parametrize("args, needles", [
    (["--average", "nosuch=2"], ["--average names 'nosuch', which is not a crossbar layer", "conv1, conv2, fc"]),
    (["--average", "conv1=0"], ["--average conv1=0: a layer needs at least 1 copy (itself), got 0"]),
    (["--average", "conv1=x"], ["--average conv1=x: 'x' is not a whole number of copies"]),
    (["--average", "conv1"], ["--average 'conv1' is not LAYER=COPIES"]),
    (["--average", "conv1=30,conv2=10"], ["--average conv1=30,conv2=10 needs 39 tiles (38 more than the model's 1: "
                                          "conv1 29 extra copies x 1 tile(s), conv2 9 extra copies x 1 tile(s)); "
                                          "the 1 chip(s) the model occupies (34 tiles) gives 34"]),
    (["--average", "conv1=3", "--tiles", "2"], ["needs 3 tiles", "--tiles 2 (2 tiles) gives 2"]),
    (["--average", "conv1=2", "--replicate", "conv1=2"], ["conv1 already has copies that split its products"]),
])
def test_bad_average_is_a_clean_cli_error(rng: np.random.Generator, tmp_path: Path, args: list[str],
                                          needles: list[str]) -> None:
    path = save(small_cnn(rng), tmp_path)
    out = tmp_path / "m.anac"
    code, _, err = run_cli("compile", path, *args, "-o", out)
    assert_clean_error(code, err, *needles)
    assert not out.exists()


def test_cli_compile_inspect_and_html_show_averaged_copies(rng: np.random.Generator, tmp_path: Path) -> None:
    from anac.htmlreport import render_html

    path = save(small_cnn(rng), tmp_path)
    out = tmp_path / "m.anac"
    code, stdout, err = run_cli("compile", path, "--average", "auto", "--tiles", "8", "--json", "-q", "-o", out)
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["averaging"]["mode"] == "auto" and rep["averaging"]["tiles"] <= 8 and rep["tiles"] <= 8
    assert rep["averaging"]["estimated_error"]["with"] < rep["averaging"]["estimated_error"]["without"]
    code, stdout, err = run_cli("compile", path, "--average", "conv1=3", "-o", tmp_path / "b.anac")
    assert code == 0, err
    assert "averaged copies (fixed): conv1 x3; 3 of 34 tiles" in stdout
    code, stdout, err = run_cli("inspect", tmp_path / "b.anac", "--tiles")
    assert code == 0, err
    assert "averaged copies (fixed, the 1 chip(s) the model occupies (34 tiles)): conv1 x3" in stdout
    assert "on each of 3 averaged copies" in stdout and "conv1 #2 avg" in stdout
    page = render_html(load_program(tmp_path / "b.anac"))
    assert "(3 averaged copies)" in page and "averaged copy 2" in page


def test_auto_measures_packed_depthwise_layers_on_calibration_data(rng: np.random.Generator) -> None:
    # 130 depthwise groups packed 43 or 44 per matrix (rows of two widths); the sensitivity samples
    # rows of matrices whose zero blocks stay unprogrammed
    c = 130
    nodes = [node("Conv", ["x", "w1"], ["c1"], name="dw", kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=c),
             node("Conv", ["c1", "w2"], ["y"], name="pw", kernel_shape=[1, 1])]
    model = make_model(nodes, [tensor("x", [1, c, 8, 8])], [tensor("y", [1, 8, 8, 8])],
                       [const("w1", weights(rng, c, 1, 3, 3)), const("w2", weights(rng, 8, c, 1, 1))])
    data = {"x": rng.standard_normal((4, c, 8, 8)).astype(np.float32)}
    prog = compile_model(model, options={"average": "auto", "tiles": 5}, calibration_data=data)
    assert len({prog.matrices[m].shape for m in prog.mvms["dw"].matrices}) == 2
    assert set(prog.assignment["sensitivity"]) == {"dw", "pw"} and prog.averaging["copies"]
    assert len(prog.tiles_used()) <= 5


def test_a_plan_averages_by_the_size_sensitivity(rng: np.random.Generator, tmp_path: Path) -> None:
    path = save(small_cnn(rng), tmp_path)
    code, stdout, err = run_cli("compile", path, "--plan-only", "--average", "auto", "--json", "-q",
                                "-o", tmp_path / "m.plan.anac")
    assert code == 0, err
    rep = json.loads(stdout)
    assert rep["averaging"]["copies"] and rep["averaging"]["tiles"] == rep["tiles"] <= 34


def test_auto_falls_back_to_the_own_sensitivity_over_the_layer_cap(rng: np.random.Generator,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    import anac.api

    monkeypatch.setattr(anac.api, "OUTPUT_LAYERS", 3)
    with caplog.at_level("INFO", logger="anac.api"):
        prog = compile_model(_amplified(rng), options={"average": "auto", "average.tiles": 2})
    assert prog.averaging["score"] == "layer" and "estimated_output_error" not in prog.averaging
    assert "4 candidate layers (more than 3): scoring them by their own sensitivity" in caplog.text
