"""Artifact: round trip, determinism, atomic writes, and hardware spec files."""

from __future__ import annotations

import json
from pathlib import Path

import anac.core.artifact as artifact
import numpy as np
import pytest
from anac.api import compile_model, load_program, save_program, simulate
from anac.core.errors import ArtifactError, HardwareSpecError
from anac.core.hardware import IBM_PCM_14NM, MYTHIC_M1076, HardwareSpec, load_hardware
from helpers import const, make_model, node, tensor, weights


def _model(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    return make_model([node("Gemm", ["x", "w", "b"], ["h"], name="fc", transB=1), node("Relu", ["h"], ["r"]),
                       node("MatMul", ["r", "w2"], ["y"], name="out")],
                      [tensor("x", [3, 700])], [tensor("y", [3, 9])],
                      [const("w", weights(rng, 600, 700)), const("b", weights(rng, 600)),
                       const("w2", weights(rng, 600, 9))])


def test_round_trip_gives_the_same_program_and_outputs(tmp_path: Path, rng: np.random.Generator) -> None:
    prog = compile_model(_model(rng))
    path = save_program(prog, tmp_path / "m.anac")
    loaded = load_program(path)
    assert [s.to_json() for s in loaded.slices] == [s.to_json() for s in prog.slices]
    assert [s.to_json() for s in loaded.stages] == [s.to_json() for s in prog.stages]
    assert loaded.hardware == prog.hardware
    for mid, m in prog.matrices.items():
        np.testing.assert_array_equal(loaded.matrices[mid].weights, m.weights)
    x = {"x": rng.standard_normal((3, 700)).astype(np.float32)}
    np.testing.assert_array_equal(simulate(loaded, x)["y"], simulate(prog, x)["y"])
    report = json.loads((path / "report.json").read_text())
    assert report["tiles"] == len(prog.tiles_used()) and report["layers"][0]["node"] == "fc"
    assert set(report["timings_s"]) >= {"frontend", "partition", "split_matrices", "place"}


def test_weights_npz_is_plain_npy_and_deterministic(tmp_path: Path, rng: np.random.Generator) -> None:
    model = _model(rng)
    a = save_program(compile_model(model), tmp_path / "a.anac")
    b = save_program(compile_model(model), tmp_path / "b.anac")
    for f in ("program.json", "weights.npz"):
        assert (a / f).read_bytes() == (b / f).read_bytes()
    with np.load(a / "weights.npz", allow_pickle=False) as npz:
        assert "slice_0" in npz.files and "bias_0" in npz.files


def test_a_failed_write_leaves_nothing_and_keeps_the_old_program(tmp_path: Path, rng: np.random.Generator,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    prog = compile_model(_model(rng))
    out = save_program(prog, tmp_path / "m.anac")
    before = (out / "program.json").read_bytes()

    def boom(prog, where):  # type: ignore[no-untyped-def]
        (where / "program.json").write_text("half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(artifact, "_write", boom)
    with pytest.raises(ArtifactError, match="No space left on device"):
        save_program(prog, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.anac"]
    assert (out / "program.json").read_bytes() == before
    with pytest.raises(ArtifactError, match="No space left"):
        save_program(prog, tmp_path / "new.anac")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.anac"]


def test_overwrite_replaces_a_program_but_not_other_directories(tmp_path: Path, rng: np.random.Generator) -> None:
    prog = compile_model(_model(rng))
    save_program(prog, tmp_path / "m.anac")
    save_program(prog, tmp_path / "m.anac")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.anac"]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.txt").write_text("keep")
    with pytest.raises(ArtifactError, match="non-empty directory"):
        save_program(prog, tmp_path / "data")
    assert (tmp_path / "data" / "precious.txt").read_text() == "keep"


def test_load_rejects_what_is_not_a_program(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no program.json"):
        load_program(tmp_path)
    (tmp_path / "program.json").write_text(json.dumps({"format": "other", "version": 9}))
    with pytest.raises(ArtifactError, match="format 'other' version 9"):
        load_program(tmp_path)


def test_default_preset_holds_the_papers_numbers() -> None:
    hw = load_hardware()
    assert hw is IBM_PCM_14NM or hw == IBM_PCM_14NM
    assert (hw.tiles_per_chip, hw.tile_rows, hw.tile_cols, hw.devices_per_cell) == (34, 512, 512, 4)
    assert hw.devices_per_tile * hw.tiles_per_chip == 34 * 512 * 2048  # 35.65 M PCM devices per chip
    assert hw.weight_grid("4-PCM") == (512, 512) and hw.weight_grid("2-PCM") == (1024, 512)
    assert MYTHIC_M1076.weight_grid("flash-8b") == (1024, 1024)


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_hardware_file_overrides_a_preset(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"hw{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps({"preset": "mythic-m1076", "tiles_per_chip": 10, "device": {"g_max_us": 5.0}}))
    else:
        path.write_text('preset = "mythic-m1076"\ntiles_per_chip = 10\n[device]\ng_max_us = 5.0\n')
    hw = load_hardware(path)
    assert hw.name == "mythic-m1076" and hw.tiles_per_chip == 10 and hw.device.g_max_us == 5.0
    assert hw.device.kind == "flash"  # the rest of the preset's device model is kept
    assert HardwareSpec.from_json(json.loads(json.dumps(hw.to_json()))) == hw


@pytest.mark.parametrize("content,match", [
    ('{"tile_rows": 0}', "tile_rows must be a positive integer"),
    ('{"preset": "nope"}', "unknown hardware preset 'nope'"),
    ('{"default_encoding": "8-PCM"}', "unknown encoding '8-PCM'"),
    ('{"device": {"gmax": 3}}', r"unknown field\(s\) in 'device': gmax"),
    ('{"encodings": [{"name": "big", "devices_per_weight": 8}]}', "exceed the 4 devices of a unit cell"),
    ("[1, 2]", "must hold a table/object"),
    ("{not json", "not valid JSON"),
])
def test_bad_hardware_files(tmp_path: Path, content: str, match: str) -> None:
    path = tmp_path / "hw.json"
    path.write_text(content)
    with pytest.raises(HardwareSpecError, match=match):
        load_hardware(path)
