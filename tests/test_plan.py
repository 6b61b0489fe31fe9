"""anac plan: what compile would make of a model, from its graph and shapes, reading no weights; and compile
refusing, before it reads them, weights that do not fit in memory."""

from __future__ import annotations

import importlib.util
import json
import math
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import compile_model
from anac.core.artifact import load_program, summary
from anac.core.dataflow import link_bytes
from anac.core.errors import ArtifactError, InsufficientMemoryError
from anac.core.frontend import MEMORY_ENV, import_model, load_onnx, weight_bytes
from anac.core.placeholder import is_placeholder, placeholder
from anac.plan import plan_model, plan_report
from helpers import assert_clean_error, const, make_model, node, save, tensor, weights
from helpers import run_cli as run

MODELS = Path(__file__).parents[1] / "models"
IBM = "ibm-pcm-14nm"
TOKEN = {"input_ids": [1, 1]}
# Fast placement for the 7B-wide decoders (thousands of tiles): greedy tiles to chips (the chip count does not
# depend on it) and a short schedule search.
FAST = {"solver": "greedy", "schedule_links.time_limit_s": 0.2}
SMALL = {"width": 256, "mlp": 688, "vocab": 1000, "heads": 4}  # the decoder's structure at CLI-test size


def _make_decoder():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_decoder", MODELS / "make_decoder.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


decoder = _make_decoder()


def expected_tiles(layers: int, devices_per_weight: int, width: int = 4096, mlp: int = 11008,
                   vocab: int = 32000) -> int:
    """Tiles of the decoder's crossbar matrices from the shapes alone: devices over devices per tile (the IBM
    tile is 512 x 512 cells of 4 devices); every LLaMA dim is a multiple of 256, so the packer fills every tile."""
    matrices = [(width, width)] * 4 * layers + [(width, mlp)] * 2 * layers + [(mlp, width)] * layers \
        + [(width, vocab)]
    devices = sum(k * n for k, n in matrices) * devices_per_weight
    return math.ceil(devices / (512 * 512 * 4))


@pytest.fixture(scope="module")
def decoder2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two layers of the 7B decoder (536 M weights), its external data deleted: a plan never opens it."""
    path = decoder.write(tmp_path_factory.mktemp("decoder"), "decoder2", layers=2)
    path.with_name(path.name + ".data").unlink()
    return path


# --------------------------------------------------------------------------------------------------
# Planning the 7B-shaped decoder
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding, devices", [("4-PCM", 4), ("2-PCM", 2)])
def test_decoder_chips_match_a_count_from_the_shapes(decoder2: Path, encoding: str, devices: int) -> None:
    tracemalloc.start()
    prog = plan_model(decoder2, hardware=IBM, input_shapes=TOKEN, options={"encoding": encoding, **FAST})
    rep = plan_report(prog)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    tiles = expected_tiles(2, devices)
    assert (rep["tiles"], rep["chips"]) == (tiles, math.ceil(tiles / 34))
    assert rep["weights"] == 2 * (4 * 4096 * 4096 + 3 * 4096 * 11008) + 4096 * 32000
    assert rep["encodings"] == {encoding: {"layers": 15, "weights": rep["weights"], "tiles": tiles}}
    assert rep["plan"]["encodings"] == f"{encoding} for every layer, as --encoding gives"
    # 2.1 GB of weights planned in far less memory than one layer's (no weight is ever materialised).
    assert peak < 200 * 2**20, peak
    # Every layer's inputs come from the host (norms, attention and SiLU run there) and every output returns to it
    # (partial sums are added on the host): one 8-bit token vector each way per chip a layer occupies.
    links = rep["link_bytes"]
    assert links == link_bytes(prog)
    assert links["chip_to_chip"] == 0 and links["host_links"] == links["total"] > 0
    assert rep["schedule"]["latency_ns"] > 0 and rep["energy"]["total_pj"] > 0


def test_decoder_under_a_pcm_per_weight_budget_states_its_rule(decoder2: Path) -> None:
    prog = plan_model(decoder2, hardware=IBM, input_shapes=TOKEN, options={"pcm_per_weight": 3.0, **FAST})
    rep = plan_report(prog)
    assert 2.9 < rep["pcm_per_weight"] <= 3.0
    per = rep["encodings"]
    assert set(per) == {"2-PCM", "4-PCM"} and per["2-PCM"]["layers"] + per["4-PCM"]["layers"] == 15
    # Independently of the placement: each encoding's weights fill whole tiles of that encoding.
    tiles = math.ceil(per["4-PCM"]["weights"] / 512**2) + math.ceil(per["2-PCM"]["weights"] / (2 * 512**2))
    assert rep["tiles"] == tiles and rep["chips"] == math.ceil(tiles / 34)
    assert "sensitivity cannot be measured without weights" in rep["plan"]["encodings"]
    assert "fewest weights" in rep["plan"]["encodings"] and "pcm per weight 3.0" in rep["plan"]["encodings"]
    assert prog.assignment["status"] == "optimal"


def test_plan_reads_neither_external_data_nor_large_embedded_weights(tmp_path: Path) -> None:
    path = decoder.write(tmp_path, "d", layers=1, **SMALL)
    data = path.with_name(path.name + ".data")
    data.write_bytes(b"")  # a data file too short for any weight: reading one would fail
    graph = import_model(load_onnx(path, weights=False), TOKEN, weights=False)
    assert is_placeholder(graph.constants["layers.0.attn.q_proj.weight"])
    assert graph.constants["heads.shape"].tolist() == [0, 0, 4, 64]  # small shape constants are read
    with pytest.raises(Exception):  # noqa: B017 - the model really cannot be loaded with its weights
        load_onnx(path)
    # Embedded weights: a plan parses the file but makes placeholders of the large tensors.
    model = onnx.load(str(path), load_external_data=False)
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            t.CopyFrom(onnx.numpy_helper.from_array(rng.standard_normal(t.dims).astype(np.float32), t.name))
    embedded = save(model, tmp_path, "embedded.onnx")
    graph = import_model(load_onnx(embedded, weights=False), TOKEN, weights=False)
    assert is_placeholder(graph.constants["lm_head.weight"])
    assert not is_placeholder(graph.constants["layers.0.input_norm.weight"])  # 256 values: read


@pytest.mark.parametrize("model, shapes", [
    ("mnist_mlp.onnx", None), ("digits_cnn.onnx", None), ("kws_mlp.onnx", None),
    ("rnnt_small.onnx", {"features": (8, 2, 8), "tokens": (3, 2)}),
])
def test_plan_of_a_real_model_is_what_compile_makes(model: str, shapes: dict[str, tuple[int, ...]] | None) -> None:
    compiled = compile_model(MODELS / model, input_shapes=shapes)
    planned = plan_model(MODELS / model, input_shapes=shapes)
    assert summary(planned) == summary(compiled)
    assert link_bytes(planned) == link_bytes(compiled)
    assert [(s.matrix, s.rows, s.cols, s.chip, s.tile) for s in planned.slices] == \
        [(s.matrix, s.rows, s.cols, s.chip, s.tile) for s in compiled.slices]
    assert planned.schedule["latency_ns"] == compiled.schedule["latency_ns"]
    assert planned.plan is not None and compiled.plan is None


def test_plan_with_pruning_keeps_the_row_count_compile_keeps() -> None:
    kws = MODELS / "kws_mlp.onnx"
    compiled = compile_model(kws, options={"prune": "auto"})
    planned = plan_model(kws, options={"prune": "auto"})
    assert planned.pruning == compiled.pruning and planned.pruning
    assert summary(planned) == summary(compiled)
    assert "keeps its first ROWS rows" in planned.plan["rows"]


def test_weights_folded_through_a_transpose_stay_placeholders(tmp_path: Path, rng: np.random.Generator) -> None:
    """An exporter's MatMul(x, Transpose(W)): the fold gives a placeholder of the transposed shape."""
    model = make_model([node("Transpose", ["W"], ["Wt"], perm=[1, 0]), node("MatMul", ["x", "Wt"], ["y"])],
                       [tensor("x", [1, 5000])], [tensor("y", [1, 3000])], [const("W", weights(rng, 3000, 5000))])
    path = save(model, tmp_path)
    prog = plan_model(path)
    assert prog.matrices["y"].shape == (5000, 3000) and is_placeholder(prog.matrices["y"].weights)
    assert summary(prog) == summary(compile_model(path))


@pytest.mark.parametrize("op, gates", [("LSTM", 4), ("GRU", 3)])
def test_recurrent_weights_stay_placeholders(tmp_path: Path, rng: np.random.Generator, op: str, gates: int) -> None:
    hidden, inputs = 96, 80  # W and R of more than 4096 values each: placeholders in a plan
    model = make_model([node(op, ["x", "W", "R"], ["y"], hidden_size=hidden)], [tensor("x", [5, 1, inputs])],
                       [tensor("y", [5, 1, 1, hidden])],
                       [const("W", weights(rng, 1, gates * hidden, inputs)),
                        const("R", weights(rng, 1, gates * hidden, hidden))])
    path = save(model, tmp_path)
    prog = plan_model(path)
    assert all(is_placeholder(m.weights) for m in prog.matrices.values())
    assert summary(prog) == summary(compile_model(path))


def test_zero_rows_are_kept_by_a_plan_and_removed_by_compile(tmp_path: Path, rng: np.random.Generator) -> None:
    w = weights(rng, 5000, 8)
    w[600:] = 0
    path = save(make_model([node("MatMul", ["x", "W"], ["y"])], [tensor("x", [1, 5000])], [tensor("y", [1, 8])],
                           [const("W", w)]), tmp_path)
    assert compile_model(path).matrices["y"].shape == (600, 8)
    prog = plan_model(path)
    assert prog.matrices["y"].shape == (5000, 8) and "no all-zero input rows" in prog.plan["rows"]


def test_placeholders_are_views_of_one_value() -> None:
    p = placeholder((4096, 11008), np.float32)
    assert p.nbytes == 4096 * 11008 * 4 and not p.flags.writeable
    assert is_placeholder(p.T) and is_placeholder(p[:512, 1000:]) and is_placeholder(p.reshape(-1, 512))
    assert not is_placeholder(np.zeros((4, 4), np.float32)) and not is_placeholder(np.broadcast_to(np.float32(0), (4,)))


# --------------------------------------------------------------------------------------------------
# The command: anac plan, compile --plan-only, inspect, verify
# --------------------------------------------------------------------------------------------------

def test_plan_command_writes_a_plan_inspect_reads_and_verify_refuses(tmp_path: Path) -> None:
    path = decoder.write(tmp_path, "small", layers=2, **SMALL)
    path.with_name(path.name + ".data").unlink()
    out = tmp_path / "small.plan.anac"
    code, text, err = run("plan", path, "--hardware", IBM, "--input-shape", "input_ids=1,1")
    assert code == 0, err
    assert f"wrote {out}: a plan" in text and "tiles of" in text and "bytes on links per inference" in text
    assert "the hardware's default 4-PCM" in text and "latency" in text and "energy" in text
    assert sorted(p.name for p in out.iterdir()) == ["host", "program.json", "report.json"]  # no weights.npz
    assert json.loads((out / "program.json").read_text())["plan"]["weights"].startswith("not read")
    code, shown, err = run("inspect", out)
    assert code == 0, err
    assert shown.startswith("a plan (anac plan): weights not read") and "chip 0:" in shown and "summary:" in shown
    code, table, err = run("inspect", out, "--json")
    assert code == 0 and json.loads(table)["summary"]["tiles"] > 0 and json.loads(table)["plan"]["encodings"]
    code, _, err = run("verify", tmp_path / "small.onnx", "--program", out)  # the model has no data to run with
    assert_clean_error(code, err)
    with pytest.raises(ArtifactError, match="is a plan, made by `anac plan`.*cannot be simulated or verified"):
        load_program(out)
    assert load_program(out, plan_ok=True).plan is not None


def test_compile_plan_only_is_plan_and_json_says_so(tmp_path: Path) -> None:
    path = decoder.write(tmp_path, "small", layers=1, **SMALL)
    code, text, err = run("plan", path, "--input-shape", "input_ids=1,1", "--json", "-o", tmp_path / "a")
    assert code == 0, err
    a = json.loads(text)
    code, text, err = run("compile", path, "--plan-only", "--input-shape", "input_ids=1,1", "--json",
                          "-o", tmp_path / "b")
    assert code == 0, err
    b = json.loads(text)
    assert {k: v for k, v in a.items() if k not in ("output", "timings_s", "placement", "schedule")} == \
        {k: v for k, v in b.items() if k not in ("output", "timings_s", "placement", "schedule")}
    assert a["plan"]["encodings"] and a["link_bytes"]["total"] > 0 and a["energy"]["total_pj"] > 0
    code, _, err = run("compile", path, "--plan-only", "--calibration-data", MODELS / "mnist_calib.npz")
    assert code == 2 and "reads no weights" in err


def test_plan_errors_are_clean(tmp_path: Path) -> None:
    assert_clean_error(*run("plan", tmp_path / "nope.onnx")[::2], "no such file")
    path = decoder.write(tmp_path, "small", layers=1, **SMALL)
    code, _, err = run("plan", path)  # the sequence dim is symbolic and not bound
    assert_clean_error(code, err, "sequence", "--input-shape")
    code, _, err = run("plan", path, "--input-shape", "input_ids=1,1", "--tiles", "1")  # 1 M weights: >= 2
    assert_clean_error(code, err, "does not fit", "1 tiles")
    assert not (tmp_path / "small.plan.anac").exists()


# --------------------------------------------------------------------------------------------------
# compile: weights that do not fit in memory are refused before they are read
# --------------------------------------------------------------------------------------------------

def test_compile_refuses_weights_that_do_not_fit_before_reading_them(tmp_path: Path) -> None:
    path = decoder.write(tmp_path, "decoder7b")  # 25.1 GiB of weights in a sparse file
    need = weight_bytes(onnx.load(str(path), load_external_data=False))
    # From the headers: the parameters, each norm's 2 and eps, the attention scale, two int64 shapes.
    assert need == 4 * 6_738_415_616 + 4 * (2 * 65 + 1) + 8 * (4 + 3)
    code, _, err = run("compile", path, "--input-shape", "input_ids=1,1", env={MEMORY_ENV: "16G"})
    assert_clean_error(code, err, f"{need:,} bytes", f"needs 62.76 GiB ({int(2.5 * need):,} bytes)",
                       "16.00 GiB (17,179,869,184 bytes) is available", MEMORY_ENV, "Nothing was loaded",
                       f"anac plan {path}")
    assert not (tmp_path / "decoder7b.anac").exists()
    tracemalloc.start()
    with pytest.raises(InsufficientMemoryError):
        compile_model(path, input_shapes=TOKEN)  # whatever this machine has, 50 GiB is more
    assert tracemalloc.get_traced_memory()[1] < 50 * 2**20
    tracemalloc.stop()


def test_memory_limit_counts_embedded_weights_and_parses_sizes(tmp_path: Path, rng: np.random.Generator,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    path = save(make_model([node("MatMul", ["x", "W"], ["y"])], [tensor("x", [1, 512])], [tensor("y", [1, 512])],
                           [const("W", weights(rng, 512, 512))]), tmp_path)  # 1 MiB of weights in the file
    monkeypatch.setenv(MEMORY_ENV, "1M")
    with pytest.raises(InsufficientMemoryError, match="its file take"):
        compile_model(path)
    plan_model(path)  # a plan reads no weights: no limit applies
    monkeypatch.setenv(MEMORY_ENV, "3MiB")  # 2.5 x 1 MiB fits
    assert compile_model(path).analog_weights == 512 * 512
    monkeypatch.setenv(MEMORY_ENV, "lots")
    code, _, err = run("compile", path)
    assert_clean_error(code, err, f"{MEMORY_ENV}='lots' is not a size")


def test_simulator_refuses_a_plan_in_memory() -> None:
    """A plan's weights are placeholders (zeros): a simulator built on it would compute with zeros silently."""
    from anac.backends.simulator import Simulator
    from anac.core.errors import AnacError

    prog = plan_model(MODELS / "digits_mlp.onnx")
    for mode in ("ideal", "hardware"):
        with pytest.raises(AnacError, match="planned without weights"):
            Simulator(prog, mode)
