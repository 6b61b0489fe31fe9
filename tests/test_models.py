"""Every bundled models/*.onnx: compile -> save -> load -> simulate == onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model, load_program, make_inputs, model_inputs, save_program, verify
from anac.core.frontend import load_onnx
from helpers import check_placement

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.onnx"))


def _shapes(infos) -> dict[str, tuple[int, ...]]:  # type: ignore[no-untyped-def]
    """Every symbolic dim (batch, sequence lengths) bound to 4: even, for the RNN-T's time stacking."""
    return {t.name: tuple(d if isinstance(d, int) else 4 for d in t.shape) for t in infos}


def test_models_are_bundled() -> None:
    assert len(MODELS) >= 3, MODELS


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_model_compiles_and_matches_onnxruntime(path: Path, tmp_path: Path) -> None:
    infos = model_inputs(load_onnx(path))
    inputs = make_inputs(infos, seed=1, input_shapes=_shapes(infos))
    prog = compile_model(path, input_shapes={k: v.shape for k, v in inputs.items()})
    assert prog.mvms, "no layer went to crossbars"
    assert prog.tiles_used() and prog.chips_used == 1
    check_placement(prog)
    out = save_program(prog, tmp_path / "p.anac")
    loaded = load_program(out)
    check_placement(loaded)
    assert [(s.chip, s.tile, s.row_offset, s.col_offset, s.slot) for s in loaded.slices] == \
        [(s.chip, s.tile, s.row_offset, s.col_offset, s.slot) for s in prog.slices]
    report = verify(path, program=loaded, inputs=inputs)
    assert report.passed, report.to_json()
    for o in report.outputs.values():
        assert o.rel_err <= 1e-5 and o.cosine > 0.999999


def test_digits_mlp_on_the_real_test_split() -> None:
    root = MODELS[0].parent
    with np.load(root / "digits_test.npz") as data:
        inputs = {"input": data["input"]}
        labels = data["labels"]
    report = verify(root / "digits_mlp.onnx", inputs=inputs)
    assert report.passed, report.to_json()
    assert report.outputs["logits"].argmax_agreement == 1.0
    # The compiled program classifies the digits as well as the float model (97.96 % on this split).
    prog = compile_model(root / "digits_mlp.onnx", input_shapes={"input": inputs["input"].shape})
    from anac.api import simulate

    logits = simulate(prog, inputs)["logits"]
    assert np.mean(logits.argmax(axis=1) == labels) > 0.95


LIGHT = Path(__import__("onnx").__file__).parent / "backend" / "test" / "data" / "light"


@pytest.mark.parametrize("path", [*MODELS, LIGHT / "light_resnet50.onnx"], ids=lambda p: p.stem)
def test_tiles_within_five_percent_of_the_lower_bound(path: Path) -> None:
    infos = model_inputs(load_onnx(path))
    shapes = _shapes(infos)
    prog = compile_model(path, input_shapes=shapes)
    bound = -(-prog.pcm_devices() // prog.hardware.devices_per_tile)
    assert prog.placement_info["lower_bound_tiles"] == bound
    assert bound <= len(prog.tiles_used()) <= 1.05 * bound


def test_budgeted_compile_reports_status_in_report_json(tmp_path: Path) -> None:
    import json

    prog = compile_model(MODELS[0].parent / "kws_mlp.onnx", options={"tiles": 5, "time_limit_s": 5.0})
    report = json.loads((save_program(prog, tmp_path / "k.anac") / "report.json").read_text())
    a = report["assignment"]
    assert a["status"] == "optimal" and a["gap"] == 0.0 and a["budget"] == "a budget of 5 tiles"
    assert sorted(a["encodings"]) == ["fc0", "fc1", "fc2", "fc3"] and report["tiles"] <= 5
    assert a["pcm_per_weight"] == report["pcm_per_weight"]
