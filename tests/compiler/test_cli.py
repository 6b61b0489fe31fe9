"""The anac command, through click's CliRunner: outputs, --json, exit codes, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import assert_clean_error, const, make_model, node, save, tensor
from helpers import run_cli as run

MODELS = Path(__file__).parents[2] / "models"
KWS = MODELS / "kws_mlp.onnx"
DIGITS = MODELS / "digits_mlp.onnx"


def leftovers(where: Path) -> list[str]:
    return sorted(p.name for p in where.iterdir() if p.name.endswith((".anac", ".tmp", ".old")) or ".anac." in p.name)


def test_compile_json_inspect_and_verify(tmp_path: Path) -> None:
    out = tmp_path / "kws.anac"
    code, stdout, _ = run("compile", KWS, "-o", out, "--json", "-q")
    assert code == 0
    rep = json.loads(stdout)
    for key in ("tiles", "chips", "pcm_devices", "weights", "analog_nodes", "host_stages", "output"):
        assert key in rep
    assert rep["output"] == str(out) and (out / "program.json").is_file() and (out / "weights.npz").is_file()
    assert rep["weights"] == 1960 * 512 + 512 * 512 * 2 + 512 * 12
    assert rep["pcm_devices"] == 4 * rep["weights"]  # default encoding: 4-PCM
    assert rep["analog_nodes"] == 4 and rep["chips"] == 1
    # Five full 512 x 512 slices (fc0 rows 0:1536 in three, fc1, fc2) take a tile each; fc0's last 424 rows
    # and the 512 x 12 head (223,232 weights of a tile's 262,144) share the sixth: 6 tiles, the lower bound
    # ceil(1,533,952 * 4 / 1,048,576) = ceil(5.85). Packing cuts fc0's 424 x 512 rest into 6 pieces (see
    # inspect): 3 + 6 + 1 + 1 + 1 = 12 slices.
    assert rep["tiles"] == 6 and rep["slices"] == 12
    assert rep["device_utilisation"] == round(1533952 * 4 / (6 * 1048576), 4)
    # Gemm -> Relu x 3 -> Gemm: each Relu is its Gemm's only reader, so it is fused and runs at the tile
    # outputs; four analog stages in a row, no host stage, so no host/*.onnx.
    assert rep["analog_stages"] == 4 and rep["host_stages"] == 0 and rep["host_nodes"] == 0
    assert sorted(p.name for p in (out / "host").glob("*")) == []
    pj = json.loads((out / "program.json").read_text())
    assert [s["kind"] for s in pj["stages"]] == ["analog"] * 4
    assert [(m["node"], (m["activation"] or {}).get("node"), m["output"]) for m in pj["mvms"]] == [
        ("fc0", "relu0", "relu0_out"), ("fc1", "relu1", "relu1_out"), ("fc2", "relu2", "relu2_out"),
        ("fc3", None, "logits")]

    code, stdout, _ = run("inspect", out)
    assert code == 0
    brief = stdout.splitlines()
    assert "chip 0: 6 of 34 tiles used   map [@@@@@%" + "_" * 28 + "]" in brief
    assert "  4 layer(s), utilisation 97.5% of the used tiles' devices; 1 tile(s) hold several layers" in brief
    assert not any("0:512" in line for line in brief)  # no per-tile slice table by default
    code, stdout, _ = run("inspect", out, "--tiles")
    assert code == 0
    lines = stdout.splitlines()
    assert set(brief) - set(lines) == {"(the layers of each chip and its per-tile slice table: --tiles)"}
    rows = [line.split() for line in lines if line.split()[-1:] and line.split()[-1].count(":") == 1
            and line.split()[-2].count(":") == 1]
    # tile, utilisation, encoding, layer, matrix rows, matrix columns; tile 5 is 85.2 % full:
    # (424 x 512 + 512 x 12) / 512^2. The head fills tile columns 0:12; fc0's rows 1536:1960 take columns
    # 0:500 of the matrix beside it (tile rows 0:424), and the 424 x 12 rest goes under that in strips of
    # the 88 free tile rows: 4 x 88 + 72.
    assert rows == [
        ["0", "100.0%", "4-PCM", "fc0", "0:512", "0:512"],
        ["1", "100.0%", "4-PCM", "fc0", "512:1024", "0:512"],
        ["2", "100.0%", "4-PCM", "fc0", "1024:1536", "0:512"],
        ["3", "100.0%", "4-PCM", "fc1", "0:512", "0:512"],
        ["4", "100.0%", "4-PCM", "fc2", "0:512", "0:512"],
        ["5", "85.2%", "4-PCM", "fc0", "1536:1624", "500:512"],
        ["4-PCM", "fc0", "1536:1960", "0:500"],
        ["4-PCM", "fc0", "1624:1712", "500:512"],
        ["4-PCM", "fc0", "1712:1800", "500:512"],
        ["4-PCM", "fc0", "1800:1888", "500:512"],
        ["4-PCM", "fc0", "1888:1960", "500:512"],
        ["4-PCM", "fc3", "0:512", "0:12"]]
    assert "summary: 6 tiles on 1 chip(s), 6,135,808 PCM devices for 1,533,952 weights (4.0 PCM per weight, " \
           "97.5% of the used tiles' devices), 4 analog nodes in 12 slices, 0 host stage(s)" in brief
    code, stdout, _ = run("inspect", out, "--json")
    table = json.loads(stdout)
    assert sum(len(t["slices"]) for c in table["chips"] for t in c["tiles"]) == rep["slices"]
    (last,) = [t for c in table["chips"] for t in c["tiles"] if t["tile"] == 5]
    # (matrix, tile rows, tile columns, slot): the head and fc0's 424 x 500 share tile rows 0:424, so
    # different slots; each 88-row strip shares tile rows with the head and the other strips and tile
    # columns with the 424 x 500 piece, so every slice on this tile runs in a slot of its own.
    assert sorted((s["matrix"], tuple(s["tile_rows"]), tuple(s["tile_cols"]), s["slot"]) for s in last["slices"]) == [
        ("fc0", (0, 424), (12, 512), 1),
        ("fc0", (424, 496), (60, 72), 6),
        ("fc0", (424, 512), (12, 24), 2),
        ("fc0", (424, 512), (24, 36), 3),
        ("fc0", (424, 512), (36, 48), 4),
        ("fc0", (424, 512), (48, 60), 5),
        ("fc3", (0, 512), (0, 12), 0)]
    assert all(s["slot"] == 0 for c in table["chips"] for t in c["tiles"] if t["tile"] != 5 for s in t["slices"])
    assert table["summary"]["tiles"] == 6

    code, stdout, _ = run("verify", KWS, "--program", out, "--json", "-q")
    assert code == 0
    v = json.loads(stdout)
    assert v["mode"] == "ideal" and v["passed"] is True
    assert set(v["outputs"]["logits"]) >= {"max_abs_err", "rel_err", "cosine", "argmax_agreement"}
    assert v["outputs"]["logits"]["rel_err"] <= 1e-5


def test_verify_fails_with_exit_1_outside_tolerance() -> None:
    # Four row blocks of partial sums are not bit-identical to onnxruntime's single dot product.
    code, stdout, _ = run("verify", KWS, "--tolerance", "1e-12", "-q")
    assert code == 1 and "FAILED" in stdout


def test_verify_with_inputs_file_and_symbolic_batch(tmp_path: Path) -> None:
    code, stdout, _ = run("verify", DIGITS, "--inputs", MODELS / "digits_test.npz", "--json", "-q")
    assert code == 0
    assert json.loads(stdout)["outputs"]["logits"]["shape"] == [540, 10]
    code, stdout, _ = run("verify", DIGITS, "--batch", "3", "--json", "-q")
    assert code == 0 and json.loads(stdout)["outputs"]["probabilities"]["shape"] == [3, 10]


def test_check_lists_analog_and_host_nodes() -> None:
    code, stdout, _ = run("check", MODELS / "digits_cnn.onnx", "--json")
    assert code == 0
    rep = json.loads(stdout)
    assert rep["ok"] and len(rep["analog"]) == 3 and rep["unsupported"] == []
    # Both ReLUs follow a Conv and are its only reader: fused at the tile outputs, as compile does.
    assert [(f["op_type"], f["into"]) for f in rep["fused"]] == [("Relu", "node_conv2d"), ("Relu", "node_conv2d_1")]
    assert sorted(h["op_type"] for h in rep["host"]) == ["AveragePool", "MaxPool", "Reshape"]


def test_passes_lists_the_pipeline() -> None:
    code, stdout, _ = run("passes", "--json")
    rows = json.loads(stdout)["pipeline"]
    assert [r["name"] for r in rows][:1] == ["partition"] and "place" in [r["name"] for r in rows]
    assert all(r["requires"] and r["produces"] for r in rows)
    code, text, _ = run("passes")
    assert code == 0 and "requires" in text


def test_compile_twice_is_byte_identical(tmp_path: Path) -> None:
    for name in ("a.anac", "b.anac"):
        assert run("compile", MODELS / "digits_cnn.onnx", "-o", tmp_path / name, "-q")[0] == 0
    for f in ("program.json", "weights.npz", "host/host0.onnx"):
        assert (tmp_path / "a.anac" / f).read_bytes() == (tmp_path / "b.anac" / f).read_bytes(), f


# ---- bad input: one clear paragraph, exit 1, nothing left behind ----

def test_missing_file(tmp_path: Path) -> None:
    code, _, err = run("compile", tmp_path / "nope.onnx")
    assert_clean_error(code, err, "nope.onnx", "no such file")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("content", [b"this is not an onnx model\n", "truncated"])
def test_truncated_or_non_onnx_file(tmp_path: Path, content: bytes | str) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(KWS.read_bytes()[:5000] if content == "truncated" else content)  # type: ignore[arg-type]
    code, _, err = run("compile", bad)
    assert_clean_error(code, err, "bad.onnx", "not a readable ONNX model")
    assert leftovers(tmp_path) == []


def _unsupported_model(rng: np.random.Generator) -> onnx.ModelProto:
    w = rng.standard_normal((8, 4)).astype(np.float32)
    w[2, 3] = np.inf
    graph = onnx.helper.make_graph(
        [node("MatMul", ["x", "w"], ["h"], name="proj"), node("Relu", ["h"], ["r"]),
         node("Frobnicate", ["r"], ["s"], name="frob", domain="acme.ops"),
         node("Wibble", ["s"], ["y"], name="wib", domain="acme.ops")],
        "bad", [tensor("x", [1, 8])], [tensor("y", [1, 4])], [const("w", w)])
    return onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17),
                                                        onnx.helper.make_opsetid("acme.ops", 1)])


def test_unsupported_ops_and_inf_weights_listed_at_once(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_unsupported_model(rng), str(path))
    code, _, err = run("compile", path)
    assert_clean_error(code, err, "3 node(s)", "'frob' (acme.ops.Frobnicate)", "'wib' (acme.ops.Wibble)",
                       "'proj' (MatMul)", "1 Inf")
    assert leftovers(tmp_path) == []
    code, stdout, _ = run("check", path, "--json")
    assert code == 1
    assert sorted(u["node"] for u in json.loads(stdout)["unsupported"]) == ["frob", "proj", "wib"]


def test_nan_weights_name_the_node(tmp_path: Path, rng: np.random.Generator) -> None:
    w = rng.standard_normal((6, 3)).astype(np.float32)
    w[4, 1] = np.nan
    path = save(make_model([node("Gemm", ["x", "w"], ["y"], name="dense_1")], [tensor("x", [2, 6])],
                           [tensor("y", [2, 3])], [const("w", w)]), tmp_path)
    code, _, err = run("compile", path)
    assert_clean_error(code, err, "'dense_1' (Gemm)", "1 NaN", "(4, 1)")


def test_symbolic_batch_binds_to_one_or_to_batch(tmp_path: Path) -> None:
    def shape(prog: Path) -> list[int]:
        return json.loads((prog / "program.json").read_text())["inputs"][0]["shape"]

    code, _, err = run("compile", DIGITS, "-o", tmp_path / "d.anac")
    assert code == 0, err
    assert "symbolic batch dim 'N' of input(s) input bound to 1" in err and shape(tmp_path / "d.anac") == [1, 64]
    assert run("compile", DIGITS, "-o", tmp_path / "b.anac", "--batch", "3", "-q")[0] == 0
    assert shape(tmp_path / "b.anac") == [3, 64]
    code, _, _ = run("compile", DIGITS, "-o", tmp_path / "s.anac", "--input-shape", "input=5,64", "-q")
    assert code == 0 and shape(tmp_path / "s.anac") == [5, 64]
    for bad in ("0", "-2"):
        code, _, err = run("compile", DIGITS, "-o", tmp_path / "z.anac", "--batch", bad)
        assert code == 2 and "--batch" in err
    assert not (tmp_path / "z.anac").exists()


def test_symbolic_dim_other_than_batch_is_refused(tmp_path: Path, rng: np.random.Generator) -> None:
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", ["N", "T", 16])], [tensor("y", ["N", "T", 8])],
                   [const("w", rng.standard_normal((16, 8)).astype(np.float32))])
    code, _, err = run("compile", save(m, tmp_path), "-o", tmp_path / "m.anac")
    assert_clean_error(code, err, "input 'x'", "dim 1 is symbolic ('T')", "--input-shape x=1,1,16")
    assert leftovers(tmp_path) == []
    assert run("compile", save(m, tmp_path), "-o", tmp_path / "m.anac", "--input-shape", "x=2,7,16", "-q")[0] == 0


def test_bad_input_shape_option(tmp_path: Path) -> None:
    code, _, err = run("compile", DIGITS, "--input-shape", "input=5,63", "-o", tmp_path / "d.anac")
    assert_clean_error(code, err, "dim 1 is fixed to 64")
    code, _, err = run("compile", DIGITS, "--input-shape", "pixels=5,64", "-o", tmp_path / "d.anac")
    assert_clean_error(code, err, "unknown input(s) pixels", "input")
    code, _, err = run("compile", DIGITS, "--input-shape", "input:5")
    assert code == 2 and "NAME=D0,D1" in err


def test_unwritable_output_path(tmp_path: Path) -> None:
    code, _, err = run("compile", KWS, "-o", tmp_path / "no" / "such" / "dir.anac")
    assert_clean_error(code, err, "does not exist")
    (tmp_path / "file.anac").write_text("x")
    code, _, err = run("compile", KWS, "-o", tmp_path / "file.anac")
    assert_clean_error(code, err, "a file of that name exists")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        code, _, err = run("compile", KWS, "-o", ro / "k.anac")
        import os

        if os.access(ro, os.W_OK):  # root ignores permission bits; the check is still exercised above
            assert code == 0
        else:
            assert_clean_error(code, err, "not writable")
    finally:
        ro.chmod(0o700)


@pytest.mark.parametrize("case,needle", [
    ("name", "unknown pixels"),
    ("shape", "has shape [2, 1960]"),
    ("dtype", "is float64"),
])
def test_verify_rejects_wrong_inputs(tmp_path: Path, case: str, needle: str) -> None:
    arr = np.zeros((1, 1960), np.float32)
    inputs = {"name": {"pixels": arr}, "shape": {"input": np.zeros((2, 1960), np.float32)},
              "dtype": {"input": arr.astype(np.float64)}}[case]
    np.savez(tmp_path / "in.npz", **inputs)
    code, _, err = run("verify", KWS, "--inputs", tmp_path / "in.npz")
    assert_clean_error(code, err, needle)
    assert leftovers(tmp_path) == []
    prog = tmp_path / "k.anac"
    assert run("compile", KWS, "-o", prog, "-q")[0] == 0
    code, _, err = run("verify", KWS, "--program", prog, "--inputs", tmp_path / "in.npz")
    assert_clean_error(code, err, needle)


def test_batch_on_a_fixed_batch_model_is_an_error(tmp_path: Path) -> None:
    code, _, err = run("verify", KWS, "--batch", "4")
    assert_clean_error(code, err, "no input of the model has a symbolic leading (batch) dim", "--batch 4")
    code, _, err = run("compile", KWS, "--batch", "4", "-o", tmp_path / "k.anac")
    assert_clean_error(code, err, "no input of the model has a symbolic leading (batch) dim", "--batch 4")
    assert leftovers(tmp_path) == []


def test_hardware_file_errors_and_overrides(tmp_path: Path) -> None:
    bad = tmp_path / "hw.toml"
    bad.write_text('tiles_per_chip = 8\nbogus = 1\n')
    code, _, err = run("compile", KWS, "--hardware", bad, "-o", tmp_path / "k.anac")
    assert_clean_error(code, err, "unknown hardware field(s): bogus")
    good = tmp_path / "small.toml"
    good.write_text('tiles_per_chip = 2\ndefault_encoding = "2-PCM"\n')
    code, stdout, _ = run("compile", KWS, "--hardware", good, "-o", tmp_path / "k.anac", "--json", "-q")
    rep = json.loads(stdout)
    # 2-PCM: 1024 x 512 weights per tile. fc0's rows 0:1024 fill a tile; its 936 remaining rows, fc1, fc2 and
    # the head pack into two more: 3 tiles, the lower bound ceil(1,533,952 * 2 / 1,048,576) = ceil(2.93);
    # 2 tiles per chip, so 2 chips.
    assert code == 0 and rep["tiles"] == 3 and rep["chips"] == 2 and rep["pcm_devices"] == 2 * rep["weights"]
    code, _, err = run("compile", KWS, "--hardware", good, "--max-chips", "1", "-o", tmp_path / "k2.anac")
    assert_clean_error(code, err, "needs 3 tiles (2 chips of 2)", "budget of 1 chips gives 2 tiles")
    assert not (tmp_path / "k2.anac").exists()
    code, stdout, _ = run("compile", KWS, "--hardware", good, "--max-chips", "2", "-o", tmp_path / "k3.anac",
                          "--json", "-q")
    assert code == 0 and json.loads(stdout)["chips"] == 2


def _host_weighted(tmp_path: Path) -> Path:
    """An embedding table (a Gather: on the host), a LayerNorm's scale and bias, and a crossbar MatMul."""
    rng = np.random.default_rng(0)
    table = rng.standard_normal((50, 16)).astype(np.float32)
    w = rng.standard_normal((16, 8)).astype(np.float32)
    m = make_model([node("Gather", ["table", "ids"], ["e"], name="embed"),
                    node("LayerNormalization", ["e", "gamma", "beta"], ["n"], name="norm", axis=-1),
                    node("MatMul", ["n", "w"], ["y"], name="proj")],
                   [tensor("ids", [2, 3], onnx.TensorProto.INT64)], [tensor("y", [2, 3, 8])],
                   [const("table", table), const("gamma", np.ones(16, np.float32)),
                    const("beta", np.zeros(16, np.float32)), const("w", w)])
    return save(m, tmp_path, "emb.onnx")


def test_compile_reports_the_weights_left_on_the_host(tmp_path: Path) -> None:
    model = _host_weighted(tmp_path)
    code, stdout, _ = run("compile", model, "-o", tmp_path / "a.anac", "--json", "-q")
    assert code == 0
    host = json.loads(stdout)["host_weights"]
    assert host["weights"] == 50 * 16 + 16 + 16 and host["weighted_nodes"] == 2
    assert host["share"] == round(832 / (832 + 16 * 8), 4)
    assert [(n["node"], n["op_type"], n["weights"], n["reason"]) for n in host["nodes"]] == [
        ("embed", "Gather", 800, "not a matrix-vector product"),
        ("norm", "LayerNormalization", 32, "not a matrix-vector product")]
    code, stdout, _ = run("compile", model, "-o", tmp_path / "b.anac", "-q")
    assert code == 0
    assert "  832 weights stay on the host (86.7%), largest: embed (Gather, 800): not a matrix-vector product; " \
           "norm (LayerNormalization, 32): not a matrix-vector product" in stdout.splitlines()
    # the same figures from the saved program
    code, stdout, _ = run("inspect", tmp_path / "b.anac")
    assert any(line.startswith("host weights: 832 (86.7% of all) in 2 node(s); largest: embed (Gather, 800)")
               for line in stdout.splitlines())


def test_a_host_conv_with_an_activation_kernel_says_why(tmp_path: Path) -> None:
    x, k = tensor("x", [1, 2, 5, 5]), tensor("k", [3, 2, 3, 3])
    m = make_model([node("Conv", ["x", "k", "b"], ["y"], name="dyn")], [x, k], [tensor("y", [1, 3, 3, 3])],
                   [const("b", np.ones(3, np.float32))])
    code, stdout, _ = run("compile", save(m, tmp_path), "-o", tmp_path / "c.anac", "--json", "-q")
    assert code == 0
    (n,) = json.loads(stdout)["host_weights"]["nodes"]
    assert (n["node"], n["weights"], n["reason"]) == ("dyn", 3, "no constant weight operand")


def test_inspect_of_a_many_layer_model_fits_a_screen(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    nodes, inits, cur = [], [], "x"
    for i in range(40):  # 40 depthwise + pointwise pairs: 80 layers, many tiles
        inits += [const(f"d{i}", rng.standard_normal((64, 1, 3, 3)).astype(np.float32)),
                  const(f"p{i}", rng.standard_normal((64, 64, 1, 1)).astype(np.float32))]
        nodes += [node("Conv", [cur, f"d{i}"], [f"a{i}"], group=64, pads=[1, 1, 1, 1]),
                  node("Conv", [f"a{i}", f"p{i}"], [f"b{i}"])]
        cur = f"b{i}"
    m = make_model(nodes, [tensor("x", [1, 64, 6, 6])], [tensor(cur, [1, 64, 6, 6])], inits)
    out = tmp_path / "deep.anac"
    assert run("compile", save(m, tmp_path), "-o", out, "-q")[0] == 0
    code, stdout, _ = run("inspect", out)
    assert code == 0 and len(stdout.splitlines()) <= 30
    assert "  80 layer(s), utilisation" in stdout
    code, stdout, _ = run("inspect", out, "--tiles")
    assert code == 0 and len(stdout.splitlines()) > 80  # every slice of the 80 layers
