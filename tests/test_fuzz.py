"""Bad input of every kind answered with a clear error: exit 1 (AnacError) or 2 (usage), no traceback,
nothing half-written (issue 17)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from anac.cli import main
from click.testing import CliRunner
from helpers import const, make_model, node, save, tensor

RNG = np.random.default_rng(17)


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_error(code: int, out: str, err: str, *needles: str, exit_code: int = 1) -> None:
    assert code == exit_code, (out, err)
    assert "Traceback" not in err + out
    text = out + err
    for n in needles:
        assert n in text, (n, text)


def gemm_model(tmp_path: Path, w: np.ndarray | None = None, name: str = "model.onnx") -> Path:
    w = RNG.standard_normal((4, 3)).astype(np.float32) if w is None else w
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [2, 4])], [tensor("y", [2, 3])],
                   [const("w", w)])
    return save(m, tmp_path, name)


# 1. verify on garbage


def test_verify_refuses_nonfinite_inputs(tmp_path: Path) -> None:
    model = gemm_model(tmp_path)
    x = np.full((2, 4), np.nan, np.float32)
    np.savez(tmp_path / "nan.npz", x=x)
    code, out, err = run("verify", model, "--inputs", tmp_path / "nan.npz")
    assert_error(code, out, err, "input 'x' holds 8 non-finite value(s)", "--allow-nonfinite-inputs")
    assert "PASSED" not in out
    # Allowed explicitly, the NaN outputs still fail verification with a count.
    code, out, err = run("verify", model, "--inputs", tmp_path / "nan.npz", "--allow-nonfinite-inputs")
    assert_error(code, out, err, "FAILED", "output 'y' of onnxruntime (the reference) has 6 non-finite value(s)")
    assert "PASSED" not in out


def test_verify_fails_on_an_uninformative_reference(tmp_path: Path) -> None:
    model = gemm_model(tmp_path, np.zeros((4, 3), np.float32))
    code, out, err = run("verify", model)
    assert_error(code, out, err, "FAILED", "the reference output 'y' is all zeros")
    code, out, err = run("verify", model, "--json")
    assert code == 1 and json.loads(out)["problems"] and not json.loads(out)["passed"]
    const_model = make_model([node("Mul", ["x", "z"], ["p"]), node("Add", ["p", "c"], ["y"])],
                             [tensor("x", [2, 4])], [tensor("y", [2, 4])],
                             [const("z", np.zeros((1,), np.float32)), const("c", np.ones((1,), np.float32))])
    code, out, err = run("verify", save(const_model, tmp_path, "const.onnx"))
    assert_error(code, out, err, "FAILED", "the reference output 'y' is constant (1 everywhere)")


@pytest.mark.parametrize("tol", ["nan", "inf", "-1", "-inf"])
def test_verify_tolerance_must_be_finite(tmp_path: Path, tol: str) -> None:
    code, out, err = run("verify", gemm_model(tmp_path), "--tolerance", tol)
    assert_error(code, out, err, "--tolerance", exit_code=2)


def test_verify_api_tolerance_must_be_finite(tmp_path: Path) -> None:
    from anac.api import verify
    from anac.core.errors import AnacError

    with pytest.raises(AnacError, match="tolerance must be a finite number"):
        verify(gemm_model(tmp_path), tolerance=float("nan"))


# 2. the report's embedded JSON


def test_html_report_json_parses_back_with_markup_in_names(tmp_path: Path) -> None:
    import re

    from anac.api import compile_model
    from anac.htmlreport import render_html

    name = 'fc</script><b a="1">&amp;'
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    m = make_model([node("MatMul", ["x", "w"], ["y"], name=name)], [tensor("x", [2, 4])], [tensor("y", [2, 3])],
                   [const("w", w)])
    page = render_html(compile_model(m))
    blocks = re.findall(r'<script type="application/json" id="report">(.*?)</script>', page, re.S)
    assert len(blocks) == 1 and "<" not in blocks[0] and "&" not in blocks[0]
    assert [layer["node"] for layer in json.loads(blocks[0])["layers"]] == [name]


# 4. other tracebacks


@pytest.fixture(scope="module")
def program_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("prog")
    code, _, err = run("compile", gemm_model(where), "-o", where / "p.anac", "-q")
    assert code == 0, err
    return where / "p.anac"


@pytest.mark.parametrize("content", [b"", b"garbage", None])
def test_verify_inputs_not_an_npz(tmp_path: Path, content: bytes | None) -> None:
    bad = tmp_path / "x.npy"
    if content is None:
        np.save(bad, np.zeros((2, 4), np.float32))
    else:
        bad.write_bytes(content)
    code, out, err = run("verify", gemm_model(tmp_path), "--inputs", bad)
    assert_error(code, out, err, str(bad))


def test_inspect_html_into_a_missing_directory(program_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "missing" / "dir" / "r.html"
    code, out, err = run("inspect", program_dir, "--html", target)
    assert_error(code, out, err, "cannot write the report", "r.html")
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', '{"times": [{"t": "1s"}]}', '{"times": 3}'])
def test_inspect_verify_json_of_the_wrong_shape(program_dir: Path, tmp_path: Path, content: str) -> None:
    (tmp_path / "v.json").write_text(content)
    code, out, err = run("inspect", program_dir, "--html", tmp_path / "r.html", "--verify-json", tmp_path / "v.json")
    assert_error(code, out, err, "is not the output of `anac verify --mode hardware --json`")
    assert not (tmp_path / "r.html").exists()


# 3. kill -9 during a save


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_save_killed_with_sigkill_is_cleaned_up_by_the_next_save(tmp_path: Path) -> None:
    import subprocess
    import sys

    model = gemm_model(tmp_path)
    out = tmp_path / "m.anac"
    assert run("compile", model, "-o", out, "-q")[0] == 0
    # A compile that kills itself (SIGKILL) after writing the new program beside the old, before renaming.
    script = ("import os, signal, anac.core.artifact as a\n"
              "real = a._write\n"
              "def write(prog, where):\n"
              "    real(prog, where)\n"
              "    os.kill(os.getpid(), signal.SIGKILL)\n"
              "a._write = write\n"
              "from anac.cli import main\n"
              f"main(['compile', {str(model)!r}, '-o', {str(out)!r}, '-q'], prog_name='anac')\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stderr
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".m.anac."))
    assert len(left) == 1 and left[0].endswith(".tmp"), left
    # Siblings of other names, a live writer's and a dead writer's .old.
    dead = tmp_path / f".m.anac.{_dead_pid()}-abcdefgh.old"
    live = tmp_path / f".m.anac.{os.getpid()}-abcdefgh.tmp"
    others = [tmp_path / ".m.anac.notes.tmp", tmp_path / f".n.anac.{_dead_pid()}-abcdefgh.tmp"]
    for p in (dead, live, *others):
        p.mkdir()
    assert run("compile", model, "-o", out, "-q")[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == \
        sorted(p.name for p in (live, *others))
    assert (out / "program.json").is_file()


# 5. numbers at the edges


@pytest.mark.parametrize("args,needle", [
    (["--pcm-per-weight", "nan"], "--pcm-per-weight"), (["--pcm-per-weight", "inf"], "--pcm-per-weight"),
    (["--clip-sigma", "nan"], "--clip-sigma"), (["--time-limit", "inf"], "--time-limit"),
    (["--chips", str(10**30)], "--chips"), (["--tiles", str(2**63)], "--tiles"),
    (["--max-chips", str(2**64)], "--max-chips"),
])
def test_compile_numbers_out_of_range(tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "m.anac"
    code, o, err = run("compile", gemm_model(tmp_path), "-o", out, *args)
    assert_error(code, o, err, needle, exit_code=2)
    assert not out.exists()


@pytest.mark.parametrize("args,needle", [
    (["--seed", "-1"], "--seed"), (["--seed", str(2**64)], "--seed"), (["--batch", str(10**12)], "--batch"),
    (["--repeats", str(10**9)], "--repeats"),
])
def test_verify_numbers_out_of_range(tmp_path: Path, args: list[str], needle: str) -> None:
    code, o, err = run("verify", gemm_model(tmp_path), *args)
    assert_error(code, o, err, needle, exit_code=2)


def test_random_inputs_too_large(tmp_path: Path) -> None:
    from anac.api import make_inputs
    from anac.core.errors import InputError
    from anac.core.ir import TensorInfo

    info = TensorInfo("x", 1, ("N", 1 << 20))
    with pytest.raises(InputError, match="input 'x' of shape .* would take more than 4 GiB"):
        make_inputs([info], batch=1 << 20)


@pytest.mark.parametrize("content,needle", [
    ('{"device": {"g_max_us": NaN}}', "device.g_max_us must be a finite number > 0, got nan"),
    ('{"device": {"g_max_us": "big"}}', "device.g_max_us must be a finite number > 0"),
    ('{"device": {"read_noise_q": [0.0088, 0.65, 0, 0.2]}}', "floor > 0"),
    ('{"device": {"read_noise_q": [0.0088, 0.65, 0.2]}}', "device.read_noise_q must hold 4 numbers"),
    ('{"device": {"t_read_s": -1}}', "device.t_read_s must be a finite number > 0"),
    ('{"links": {"bandwidth_bytes_per_ns": Infinity}}', "links.bandwidth_bytes_per_ns must be a finite number > 0"),
    ('{"energy": {"mac_pj": -0.1}}', "energy.mac_pj must be a finite number >= 0"),
    ('{"tiles_per_chip": 1e300}', "tiles_per_chip must be a positive integer"),
    ('{"tile_rows": 1099511627776}', "tile_rows must be an integer >= 1 and <= 1.04858e+06"),
    ('{"mvm_time_ns": 0}', "mvm_time_ns must be a finite number > 0"),
    ('{"encodings": 3}', "hardware field 'encodings' must be a list"),
    ('{"tile_grid": 5}', "hardware field 'tile_grid' must be a list"),
    ('{"device": {"drift_mu": 3}}', "hardware field 'device.drift_mu' must be a list of 4 numbers"),
    ('{"name": 5}', "hardware field 'name' must be a string"),
    ('{"encodings": [{"name": "4-PCM", "devices_per_weight": 4, "significance_factor": NaN}]}',
     "encoding '4-PCM' significance_factor must be a finite number > 0"),
])
def test_hardware_spec_numbers_out_of_range(tmp_path: Path, content: str, needle: str) -> None:
    (tmp_path / "hw.json").write_text(content)
    out = tmp_path / "m.anac"
    code, o, err = run("compile", gemm_model(tmp_path), "-o", out, "--hardware", tmp_path / "hw.json")
    assert_error(code, o, err, needle)
    assert not out.exists()


# 6. the program directory is not trusted


def _copy_program(program_dir: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / "p.anac"
    shutil.copytree(program_dir, dst, symlinks=True)
    return dst


def _edit_json(prog: Path, edit) -> None:  # type: ignore[no-untyped-def]
    pj = prog / "program.json"
    data = json.loads(pj.read_text())
    edit(data)
    pj.write_text(json.dumps(data))


def _host_model_program(tmp_path: Path) -> Path:
    w = RNG.standard_normal((4, 3)).astype(np.float32)
    m = make_model([node("MatMul", ["x", "w"], ["h"]), node("Softmax", ["h"], ["y"], axis=1)],
                   [tensor("x", [2, 4])], [tensor("y", [2, 3])], [const("w", w)])
    out = tmp_path / "h.anac"
    assert run("compile", save(m, tmp_path, "h.onnx"), "-o", out, "-q")[0] == 0
    return out


@pytest.mark.parametrize("model_path,needle", [
    ("../outside.onnx", "must be a relative path inside the program directory"),
    ("/etc/passwd", "must be a relative path inside the program directory"),
    ("host/link.onnx", "leads outside the program directory"),
    (7, "must be a relative path inside the program directory"),
])
def test_program_file_paths_stay_inside(tmp_path: Path, model_path: object, needle: str) -> None:
    prog = _host_model_program(tmp_path)
    (tmp_path / "outside.onnx").write_bytes(b"")
    (prog / "host" / "link.onnx").symlink_to(tmp_path / "outside.onnx")

    def edit(d: dict) -> None:
        st = next(s for s in d["stages"] if s["kind"] == "host")
        st["model"] = model_path
    _edit_json(prog, edit)
    code, out, err = run("inspect", prog)
    assert_error(code, out, err, needle, "stages[")


def test_weights_npz_symlinked_out_is_refused(program_dir: Path, tmp_path: Path) -> None:
    prog = _copy_program(program_dir, tmp_path)
    (prog / "weights.npz").rename(tmp_path / "w.npz")
    (prog / "weights.npz").symlink_to(tmp_path / "w.npz")
    code, out, err = run("inspect", prog)
    assert_error(code, out, err, "weights.npz", "leads outside the program directory")


@pytest.mark.parametrize("edit,field", [
    (lambda d: d.pop("slices"), "slices"),
    (lambda d: d.__setitem__("slices", 3), "slices"),
    (lambda d: d["slices"][0].pop("rows"), "slices[0]"),
    (lambda d: d["slices"][0].__setitem__("rows", "ab"), "slices[0]"),
    (lambda d: d["matrices"][0].__setitem__("shape", None), "matrices[0]"),
    (lambda d: d["mvms"][0].pop("node"), "mvms[0]"),
    (lambda d: d.__setitem__("stages", [{"name": "s"}]), "stages[0]"),
    (lambda d: d.__setitem__("placement", []), "placement"),
    (lambda d: d.__setitem__("inputs", [None]), "inputs"),
])
def test_malformed_program_json_names_the_field(program_dir: Path, tmp_path: Path, edit, field: str) -> None:  # type: ignore[no-untyped-def]
    prog = _copy_program(program_dir, tmp_path)
    _edit_json(prog, edit)
    code, out, err = run("inspect", prog)
    assert_error(code, out, err, f"field '{field}'")


def test_program_json_not_an_object(program_dir: Path, tmp_path: Path) -> None:
    prog = _copy_program(program_dir, tmp_path)
    (prog / "program.json").write_text("[]")
    assert_error(*run("inspect", prog), "must hold a JSON object")


def _rewrite_npz(prog: Path, change) -> None:  # type: ignore[no-untyped-def]
    import zipfile

    from anac.core.artifact import _write_npz

    with np.load(prog / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}
    change(arrays)
    _write_npz(prog / "weights.npz", list(arrays.items()))
    assert zipfile.is_zipfile(prog / "weights.npz")


@pytest.mark.parametrize("change,needle", [
    (lambda a: a.__setitem__("matrix_0", np.zeros((3, 3), np.float32)), "has shape [3, 3]; program.json declares"),
    (lambda a: a.__setitem__("matrix_0", a["matrix_0"].astype(np.complex64)), "weights must be real numbers"),
    (lambda a: a["matrix_0"].__setitem__((0, 0), np.nan), "1 non-finite value(s)"),
    (lambda a: a.__setitem__("matrix_0", a["matrix_0"].astype(np.float64)), "matrix_0 is float64; weights are float32"),
])
def test_weights_npz_members_are_checked(program_dir: Path, tmp_path: Path, change, needle: str) -> None:  # type: ignore[no-untyped-def]
    prog = _copy_program(program_dir, tmp_path)
    _rewrite_npz(prog, change)
    assert_error(*run("inspect", prog), needle)


def test_weights_npz_header_lying_about_its_size(program_dir: Path, tmp_path: Path) -> None:
    import zipfile

    prog = _copy_program(program_dir, tmp_path)
    with np.load(prog / "weights.npz") as z:
        arrays = {k: z[k] for k in z.files}
    with zipfile.ZipFile(prog / "weights.npz", "w") as zf:
        for k, v in arrays.items():
            with zf.open(k + ".npy", "w") as f:
                if k == "matrix_0":
                    np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                             "shape": (2**20, 2**20)})
                    f.write(b"\0" * 16)
                else:
                    np.lib.format.write_array(f, v)
    assert_error(*run("inspect", prog), "member matrix_0 declares shape [1048576, 1048576]")


# 7. malformed ONNX graphs


def _graph(nodes, inputs, outputs, inits=(), opset: int = 17):  # type: ignore[no-untyped-def]
    from onnx import helper

    g = helper.make_graph(list(nodes), "t", list(inputs), list(outputs), list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    return m


def _malformed(case: str):  # type: ignore[no-untyped-def]
    from onnx import TensorProto

    w = np.ones((4, 3), np.float32)
    mm = [node("MatMul", ["x", "w"], ["y"])]
    x, y = [tensor("x", [2, 4])], [tensor("y", [2, 3])]
    if case == "no nodes":
        return _graph([], x, y)
    if case == "output is an input":
        return _graph(mm, x, [*y, tensor("x", [2, 4])], [const("w", w)])
    t = const("w", w)
    if case == "raw_data short":
        t.raw_data = t.raw_data[:-4]
    elif case == "negative dim":
        t.dims[0] = -4
    elif case == "huge dim":
        t.dims[0] = 2**40
    elif case == "huge input":
        return _graph(mm, [tensor("x", [2**40, 4])], [tensor("y", [2**40, 3])], [t])
    elif case == "opset 99":
        return _graph(mm, x, y, [t], opset=99)
    elif case == "string input":
        return _graph([node("Identity", ["x"], ["y"])], [tensor("x", [2], TensorProto.STRING)],
                      [tensor("y", [2], TensorProto.STRING)])
    elif case == "cycle":
        return _graph([node("MatMul", ["h", "w"], ["a"]), node("Relu", ["a"], ["h"]), node("Relu", ["a"], ["y"])],
                      x, y, [t])
    return _graph(mm, x, y, [t])


@pytest.mark.parametrize("case,needle", [
    ("no nodes", "has no nodes"),
    ("output is an input", "output(s) x are graph inputs passed straight through"),
    ("raw_data short", "weight 'w' has dims [4, 3] (float32, 48 bytes) but holds 44 bytes"),
    ("negative dim", "weight 'w' has dims [-4, 3]"),
    ("huge dim", "weight 'w' has dims [1099511627776, 3]"),
    ("huge input", "input 'x' has dims [1099511627776, 4]"),
    ("opset 99", "opset 99 of the default ONNX domain"),
    ("string input", "input 'x' is a string tensor"),
    ("cycle", "has a cycle: node(s) 'a' (MatMul), 'h' (Relu)"),
])
def test_malformed_graphs_are_clear_errors(tmp_path: Path, case: str, needle: str) -> None:
    import onnx

    path = tmp_path / "bad.onnx"
    onnx.save(_malformed(case), str(path))
    for args in (["check", path], ["compile", path, "-o", tmp_path / "bad.anac"]):
        assert_error(*run(*args), needle)
    assert not (tmp_path / "bad.anac").exists()


# 8. external data


def _external_model(where: Path) -> Path:
    import onnx

    where.mkdir(parents=True, exist_ok=True)
    w = RNG.standard_normal((64, 64)).astype(np.float32)
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [2, 64])], [tensor("y", [2, 64])],
                   [const("w", w)])
    path = where / "model.onnx"
    onnx.save(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data",
              size_threshold=0)
    return path


def _set_location(path: Path, location: str) -> None:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    for e in m.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = location
    onnx.save(m, str(path))


def test_external_data_is_read(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "m")
    assert run("check", path)[0] == 0


def test_missing_external_data_file(tmp_path: Path) -> None:
    path = _external_model(tmp_path / "m")
    (path.parent / "model.onnx.data").unlink()
    for args in (["check", path], ["compile", path, "-o", tmp_path / "m.anac"]):
        assert_error(*run(*args), "tensor 'w'", "model.onnx.data", f"looked for at {path.parent / 'model.onnx.data'}",
                     "no such file")


@pytest.mark.parametrize("kind", ["absolute", "parent", "symlink"])
def test_external_data_outside_the_model_directory(tmp_path: Path, kind: str) -> None:
    path = _external_model(tmp_path / "m")
    data = path.parent / "model.onnx.data"
    outside = tmp_path / "outside.data"
    data.rename(outside)
    if kind == "absolute":
        _set_location(path, str(outside))
        needle = "must be a file name relative to the model's directory"
    elif kind == "parent":
        _set_location(path, "../outside.data")
        needle = "must be a file name relative to the model's directory"
    else:
        data.symlink_to(outside)
        needle = "leads outside the model's directory"
    assert_error(*run("check", path), "tensor 'w'", needle)


def test_verify_with_a_program_from_another_model(tmp_path: Path) -> None:
    first = gemm_model(tmp_path, name="first.onnx")
    retrained = gemm_model(tmp_path, RNG.standard_normal((4, 3)).astype(np.float32), name="retrained.onnx")
    code, _, err = run("compile", first, "-o", tmp_path / "p.anac", "-q")
    assert code == 0, err
    code, out, err = run("verify", first, "--program", tmp_path / "p.anac")
    assert code == 0 and "PASSED" in out, (out, err)
    # Same graph, other weights: the stale program is named, not compared.
    code, out, err = run("verify", retrained, "--program", tmp_path / "p.anac")
    assert_error(code, out, err, "compiled from another model", "retrained.onnx")
    assert "PASSED" not in out
    # A program written before digests were stored is still accepted.
    data = json.loads((tmp_path / "p.anac" / "program.json").read_text())
    del data["model_digest"]
    (tmp_path / "p.anac" / "program.json").write_text(json.dumps(data))
    code, out, err = run("verify", retrained, "--program", tmp_path / "p.anac")
    assert "compiled from another model" not in out + err
