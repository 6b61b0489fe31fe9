"""Every bundled models/*.onnx: compile -> save -> load -> simulate == onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import check_placement

from compiler.api import compile_model, load_program, make_inputs, model_inputs, save_program, verify
from compiler.frontend import load_onnx

MODELS = sorted((Path(__file__).parent.parent / "models").glob("*.onnx"))


def test_models_are_bundled() -> None:
    assert len(MODELS) >= 3, MODELS


@pytest.mark.parametrize("path", MODELS, ids=[p.stem for p in MODELS])
def test_model_compiles_and_matches_onnxruntime(path: Path, tmp_path: Path) -> None:
    infos = model_inputs(load_onnx(path))
    symbolic_batch = not isinstance(infos[0].shape[0], int)
    inputs = make_inputs(infos, batch=4 if symbolic_batch else None, seed=1)
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
    from compiler.api import simulate

    logits = simulate(prog, inputs)["logits"]
    assert np.mean(logits.argmax(axis=1) == labels) > 0.95
