"""Artifact: round trip, determinism, atomic writes, and hardware spec files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import anac.core.artifact as artifact
import numpy as np
import pytest
from anac.api import compile_model, load_program, save_program, simulate
from anac.core.errors import ArtifactError, HardwareSpecError
from anac.core.hardware import IBM_PCM_14NM, MYTHIC_M1076, HardwareSpec, load_hardware
from helpers import const, make_model, node, tensor, weights

MODELS = Path(__file__).parents[2] / "models"


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
        assert npz.files == ["matrix_0", "matrix_1", "bias_0"]  # the weights once; no conductance targets


# sha256 of every slice's float16 targets and float32 scales, in slice order, as format version 1 (which
# stored them in weights.npz) computed them for the committed KWS model; recomputation must not drift.
_KWS_TARGETS = {
    "4-PCM,fc0=2-PCM": ({"encoding": "4-PCM,fc0=2-PCM", "scale": "tile"},
                        "834b93e30972145e988032debb8efa12a7680bbda857efc870be16d54e2d2856"),
    "2-PCM,column,clip": ({"encoding": "2-PCM", "scale": "column", "clip_sigma": 3.0},
                          "dc9d2f0d7e90baea9f458beb12829fd6934578365b283ecd81b8ecd129ef3384"),
}


@pytest.mark.parametrize("case", sorted(_KWS_TARGETS))
def test_conductance_targets_recomputed_on_load_equal_the_stored_ones(tmp_path: Path, case: str) -> None:
    options, digest = _KWS_TARGETS[case]
    prog = compile_model(MODELS / "kws_mlp.onnx", options=options)
    loaded = load_program(save_program(prog, tmp_path / "k.anac"))
    h = hashlib.sha256()
    for s in loaded.slices:
        targets, scale = loaded.targets(s)
        assert targets.dtype == np.float16 and scale.dtype == np.float32
        np.testing.assert_array_equal(targets, prog.targets(s)[0])
        h.update(targets.tobytes())
        h.update(scale.tobytes())
    assert h.hexdigest() == digest


def test_program_directory_holds_the_weights_once(tmp_path: Path, rng: np.random.Generator) -> None:
    prog = compile_model(_model(rng), options={"encoding": "4-PCM"})
    path = save_program(prog, tmp_path / "m.anac")
    weight_bytes = 4 * prog.analog_weights
    # Members are the weights, one bias and .npy/zip headers of a few hundred bytes each.
    assert (path / "weights.npz").stat().st_size <= 1.05 * weight_bytes
    loaded = load_program(path)
    for mid, m in prog.matrices.items():
        w = loaded.matrices[mid].weights
        assert w.dtype == np.float32 and w.flags.c_contiguous == m.weights.flags.c_contiguous
        np.testing.assert_array_equal(w, m.weights)


def test_an_old_program_directory_is_refused_with_the_way_out(tmp_path: Path, rng: np.random.Generator) -> None:
    path = save_program(compile_model(_model(rng)), tmp_path / "m.anac")
    data = json.loads((path / "program.json").read_text())
    data.update(version=1, compiler="anac 0.1.0")
    (path / "program.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"written by an older anac \(anac 0.1.0, format version 1\); this anac "
                                            r"reads version 3, .* compile the model again"):
        load_program(path)
    data.update(version=2)
    (path / "program.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"format version 2\); this anac reads version 3, which converts "
                                            r"per-column outputs in current units .* compile the model again"):
        load_program(path)


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
