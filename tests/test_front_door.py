"""The front door: one import name, layering, batch by default, labels that never collide,
``anac.InferenceSession`` and ``anac.backend``, and the README's commands."""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import anac
import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from anac.cli import main
from anac.core.errors import AnacError, InputError
from click.testing import CliRunner
from helpers import const, make_model, node, save, tensor

ROOT = Path(__file__).parents[1]
MODELS = ROOT / "models"
DIGITS = MODELS / "digits_mlp.onnx"
# The front: what drives the passes and backends. Everything else under compiler/ is the core.
FRONT = {"anac.driver", "anac.api", "anac.plan", "anac.session", "anac.backend", "anac.cli", "anac.htmlreport",
         "anac.views"}


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


# --------------------------------------------------------------------------------------------------
# One import name
# --------------------------------------------------------------------------------------------------

def test_wheel_installs_one_top_level_package(tmp_path: Path) -> None:
    """Built and installed from a copy of the sources, the distribution puts only ``anac`` in site-packages."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("compiler", "passes", "backends"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    [wheel] = list((tmp_path / "dist").glob("anac-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
        listed = {line.split(",")[0] for line in z.read(record).decode().splitlines() if line}
    assert {p.split("/")[0] for p in listed} == {"anac", f"anac-{anac.__version__}.dist-info"}
    for sub in ("core", "passes", "backends"):
        assert f"anac/{sub}/__init__.py" in listed
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    assert sorted(p.name for p in target.iterdir() if p.name != "bin") == ["anac", f"anac-{anac.__version__}.dist-info"]


def test_version_agrees_everywhere() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.strip() == f"anac, version {anac.__version__}"
    assert importlib.metadata.version("anac") == anac.__version__


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names a file imports anywhere in it (function-level imports included)."""
    found = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import):
            found.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.module:
            base = n.module if n.level == 0 else ".".join(package.split(".")[:len(package.split(".")) + 1 - n.level]
                                                         + [n.module])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in n.names)
    return found


def _modules() -> dict[str, Path]:
    folders = {"anac": ROOT / "compiler", "anac.passes": ROOT / "passes", "anac.backends": ROOT / "backends"}
    mods = {}
    for pkg, folder in folders.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            mods[".".join([pkg, *parts])] = f
    return mods


def test_layering_runs_one_way() -> None:
    """The core imports neither the front nor passes/backends; passes/backends never import the front;
    no module imports in a circle."""
    mods = _modules()
    assert "anac.core.ir" in mods and "anac.passes.place" in mods and "anac.session" in mods
    graph = nx.DiGraph()
    for name, path in mods.items():
        graph.add_node(name)
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for imp in _imports(path, package):
            if imp in mods and imp != name:
                graph.add_edge(name, imp)
    for name in mods:
        targets = set(graph.successors(name))
        if name.startswith("anac.core"):
            bad = {t for t in targets if not t.startswith("anac.core") and t != "anac"}  # anac: __version__ only
            assert not bad, f"{name} (core) imports {bad}"
        if name.startswith(("anac.passes", "anac.backends")):
            bad = {t for t in targets if t in FRONT}
            assert not bad, f"{name} imports the front: {bad}"
    assert nx.is_directed_acyclic_graph(graph), nx.find_cycle(graph)


def test_importing_anac_imports_nothing_else() -> None:
    code = "import sys, anac; print(sorted(m for m in sys.modules if m.startswith('anac')))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "['anac']"


def test_readme_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line.strip() for line in readme.splitlines() if "pytest" in line)
    assert command in ci.splitlines()
    assert "from anac" in readme or "import anac" in readme
    assert "from compiler" not in readme and "import compiler" not in readme


# --------------------------------------------------------------------------------------------------
# Labels never collide
# --------------------------------------------------------------------------------------------------

def _model_with_labels_input(rng: np.random.Generator) -> onnx.ModelProto:
    """x [N, 8] @ W plus an embedding of an int64 input named ``labels`` (an RNN-T's token input)."""
    return make_model([node("MatMul", ["x", "w"], ["h"]), node("Gather", ["table", "labels"], ["e"]),
                       node("Add", ["h", "e"], ["y"])],
                      [tensor("x", ["N", 8]), tensor("labels", ["N"], onnx.TensorProto.INT64)],
                      [tensor("y", ["N", 6])],
                      [const("w", rng.standard_normal((8, 6)).astype(np.float32)),
                       const("table", rng.standard_normal((5, 6)).astype(np.float32))])


def test_input_named_labels_is_an_input(tmp_path: Path, rng: np.random.Generator) -> None:
    path = save(_model_with_labels_input(rng), tmp_path)
    data = tmp_path / "in.npz"
    np.savez(data, x=rng.standard_normal((4, 8)).astype(np.float32), labels=np.array([0, 1, 4, 2]))
    code, out, err = run("verify", path, "--inputs", data)
    assert code == 0, err
    assert "PASSED" in out
    np.savez(tmp_path / "extra.npz", x=rng.standard_normal((4, 8)).astype(np.float32),
             labels=np.array([0, 1, 4, 2]), classes=np.array([1, 2, 3, 4]))
    code, _, err = run("verify", path, "--inputs", tmp_path / "extra.npz")
    assert code == 1 and "Traceback" not in err
    assert "unknown classes" in err and "x " in err and "labels " in err
    code, out, err = run("verify", path, "--inputs", tmp_path / "extra.npz", "--labels",
                         f"{tmp_path / 'extra.npz'}:classes", "--mode", "hardware", "--json", "-q")
    assert code in (0, 1) and "Traceback" not in err


def test_labels_option_and_labels_key(tmp_path: Path) -> None:
    test = np.load(MODELS / "digits_test.npz")
    np.savez(tmp_path / "x.npz", input=test["input"][:64])
    np.savez(tmp_path / "y.npz", digit=test["labels"][:64])
    args = ["verify", DIGITS, "--mode", "hardware", "--json", "-q",
            "--calibration-data", MODELS / "digits_calib.npz"]
    import json

    code, out, err = run(*args, "--inputs", tmp_path / "x.npz", "--labels", f"{tmp_path / 'y.npz'}:digit")
    assert code == 0, err
    with_option = json.loads(out)
    assert with_option["times"][0]["accuracy"]["mean"] > 0.8
    np.savez(tmp_path / "both.npz", input=test["input"][:64], labels=test["labels"][:64])
    code, out, err = run(*args, "--inputs", tmp_path / "both.npz")  # no input is named labels: they are labels
    assert code == 0, err
    assert json.loads(out)["times"][0]["accuracy"] == with_option["times"][0]["accuracy"]
    code, _, err = run(*args, "--inputs", tmp_path / "x.npz", "--labels", f"{tmp_path / 'y.npz'}:nope")
    assert code == 1 and "no array 'nope'" in err and "digit" in err


# --------------------------------------------------------------------------------------------------
# InferenceSession and anac.backend
# --------------------------------------------------------------------------------------------------

def test_inference_session_is_shaped_like_onnxruntime(tmp_path: Path) -> None:
    ref = ort.InferenceSession(str(DIGITS), providers=["CPUExecutionProvider"])
    sess = anac.InferenceSession(DIGITS, batch=8)
    assert [(a.name, a.type) for a in sess.get_inputs()] == [(a.name, a.type) for a in ref.get_inputs()]
    assert [(a.name, a.type) for a in sess.get_outputs()] == [(a.name, a.type) for a in ref.get_outputs()]
    assert sess.get_inputs()[0].shape == [8, 64]
    x = np.load(MODELS / "digits_test.npz")["input"][:8]
    feeds = {"input": x}
    got, want = sess.run(None, feeds), ref.run(None, feeds)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    [logits] = sess.run([ref.get_outputs()[0].name], feeds)
    np.testing.assert_array_equal(logits, got[0])
    with pytest.raises(InputError, match="unknown output"):
        sess.run(["nope"], feeds)
    # The same program from its directory; hardware mode reads one seeded chip at t.
    anac.save_program(sess.program, tmp_path / "d.anac")
    loaded = anac.InferenceSession(tmp_path / "d.anac")
    np.testing.assert_array_equal(loaded.run(None, feeds)[0], got[0])
    calib = dict(np.load(MODELS / "digits_calib.npz"))
    hw = [anac.InferenceSession(DIGITS, "hardware", t="1d", seed=s, batch=8, calibration_data=calib).run(None, feeds)[0]
          for s in (0, 0, 1)]
    np.testing.assert_array_equal(hw[0], hw[1])
    assert not np.array_equal(hw[0], hw[2])
    assert np.mean(hw[0].argmax(1) == want[0].argmax(1)) >= 0.75
    with pytest.raises(AnacError, match="fixed when a program is compiled"):
        anac.InferenceSession(tmp_path / "d.anac", batch=2)
    with pytest.raises(AnacError, match="unknown mode"):
        anac.InferenceSession(DIGITS, "analog")


def test_anac_backend_is_an_onnx_backend(rng: np.random.Generator) -> None:
    import anac.backend
    from onnx.backend.base import Backend

    assert issubclass(anac.backend.AnacBackend, Backend)
    assert anac.backend.supports_device("CPU") and not anac.backend.supports_device("CUDA")
    w = rng.standard_normal((5, 3)).astype(np.float32)
    m = make_model([node("MatMul", ["x", "w"], ["y"])], [tensor("x", [2, 5]), tensor("w", [5, 3])],
                   [tensor("y", [2, 3])])
    x = rng.standard_normal((2, 5)).astype(np.float32)
    rep = anac.backend.prepare(m)
    [y] = rep.run([x, w])  # the weight operand is bound and placed on a crossbar
    np.testing.assert_allclose(y, x @ w, rtol=1e-5, atol=1e-6)
    assert rep.program is not None and rep.program.slices
    [y2] = anac.backend.run_model(m, [x, w])
    np.testing.assert_array_equal(y, y2)


def test_verify_binds_the_batch_and_says_so() -> None:
    code, out, err = run("verify", DIGITS)
    assert code == 0 and "PASSED" in out
    assert "symbolic batch dim of input(s) input bound to 1" in err
    code, out, err = run("verify", DIGITS, "--batch", "3", "--json", "-q")
    assert code == 0 and "bound to 1" not in err
