"""anac sweep: the grid run serially, in a local process pool and on a local Ray instance gives one table;
a sweep killed with SIGKILL restarts where it stopped; the numbers are verify's; bad grids fail before work."""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from anac.api import load_inputs, load_program, verify
from anac.sweep import load_grid, plan, run_sweep
from helpers import assert_clean_error
from helpers import run_cli as run

MODELS = Path(__file__).resolve().parents[1] / "models"
RESULT = ("model", "hardware", "encoding", "drift_compensation", "seed", "time", "seconds", "accuracy",
          "reference_accuracy", "rel_err")  # every column but the wall times

GRID = f"""
seed = 3
repeats = {{repeats}}
times = ["1s", "1d"]
drift_compensation = [true, false]

[[model]]
name = "mlp <&>"
path = "{MODELS / 'digits_mlp.onnx'}"
test_data = "{MODELS / 'digits_test.npz'}"
calibration_data = "{MODELS / 'digits_calib.npz'}"
samples = 100

[[hardware]]
preset = "neurram"

[[hardware]]
preset = "ibm-pcm-14nm"
encodings = ["2-PCM"]
"""


def grid(tmp_path: Path, repeats: int = 2, text: str | None = None) -> Path:
    p = tmp_path / "grid.toml"
    p.write_text(text if text is not None else GRID.format(repeats=repeats))
    return p


def table(path: Path) -> list[tuple[str, ...]]:
    with open(path, newline="") as f:
        return [tuple(r[c] for c in RESULT) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def serial(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small grid run in this process, one cell after another."""
    where = tmp_path_factory.mktemp("serial")
    run_sweep(grid(where), where / "out", workers=1)
    return where / "out"


def test_table_rows_and_report(serial: Path) -> None:
    rows = table(serial / "results.csv")
    # 1 model x 2 (hardware, encoding) x 2 instances x 2 times x 2 drift compensation settings
    assert len(rows) == 16
    assert {(r[1], r[2]) for r in rows} == {("neurram", "2-RRAM"), ("ibm-pcm-14nm", "2-PCM")}
    assert {r[4] for r in rows} == {"3", "4"}  # seeds from the grid's seed
    for r in rows:
        assert 0.5 < float(r[7]) <= 1.0 and 0 < float(r[9]) < 5
    page = (serial / "report.html").read_text()
    assert page.count('<svg class="sweep-plot"') == 1 and page.count('class="mean"') == 4
    assert page.count('class="spread"') == 4 and 'class="reference"' in page
    assert "mlp &lt;&amp;&gt;" in page and "mlp <&>" not in page  # grid text is escaped
    assert page.count("<tr>") == 1 + 8 + 1 + 16  # summary header + 8 series x time, rows header + 16 rows
    assert "src=" not in page and "href=" not in page and "<script" not in page  # nothing loaded from elsewhere


def test_numbers_are_verifys(serial: Path) -> None:
    """Mean accuracy and relative error over the instances are those of `verify --mode hardware` at the same
    seeds on the same program and samples."""
    rows = [r for r in table(serial / "results.csv") if r[1] == "ibm-pcm-14nm"]
    build = load_grid(serial.parent / "grid.toml")
    b = next(b for b in plan(build)[0] if b.hardware.name == "ibm-pcm-14nm")
    with zipfile.ZipFile(serial / "programs" / f"{b.key}.zip") as zf:
        zf.extractall(serial.parent / "bundle")
    prog = load_program(serial.parent / "bundle" / "program")
    test = {k: v[:100] for k, v in load_inputs(MODELS / "digits_test.npz").items()}
    for comp in (True, False):
        rep = verify(MODELS / "digits_mlp.onnx", program=prog, inputs=test, mode="hardware", times="1s,1d",
                     seed=3, repeats=2, drift_compensation=comp)
        for t in rep.times:
            mine = [r for r in rows if r[3] == str(comp) and r[5] == t.label]
            assert len(mine) == 2
            assert np.isclose(np.mean([float(r[7]) for r in mine]), t.accuracy.mean, rtol=0, atol=1e-12)
            assert np.isclose(np.mean([float(r[9]) for r in mine]), t.outputs["logits"]["rel_err"].mean,
                              rtol=1e-9, atol=0)
            assert float(mine[0][8]) == rep.reference_accuracy


def test_pool_and_ray_give_the_same_table(serial: Path, tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the test extra installs ray; pip install -e '.[test]'")
    g = grid(tmp_path)
    run_sweep(g, tmp_path / "pool", workers=2)
    assert table(tmp_path / "pool" / "results.csv") == table(serial / "results.csv")
    res = run_sweep(g, tmp_path / "ray", use_ray=True, workers=2)  # a local Ray instance of 2 CPUs
    assert res.workers == 2 and res.skipped == 0
    assert table(tmp_path / "ray" / "results.csv") == table(serial / "results.csv")


def test_killed_sweep_restarts_where_it_stopped(tmp_path: Path) -> None:
    g = grid(tmp_path, repeats=4)
    run_sweep(g, tmp_path / "whole", workers=1)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "anac.cli", "sweep", str(g), "-o", str(out), "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not list((out / "cells").glob("*.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep and its workers, mid-way
        proc.wait()
    done = len(list((out / "cells").glob("*.json")))
    assert 1 <= done < 16, done
    assert not (out / "results.csv").exists()
    code = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert code.returncode == 0, code.stderr
    assert f"{done} already done" in code.stderr
    assert table(out / "results.csv") == table(tmp_path / "whole" / "results.csv")
    assert "cells done" in code.stderr and "left" in code.stderr  # progress on stderr


@pytest.mark.parametrize(("change", "needles"), [
    (lambda t: "repeets = 2\n" + t, ("unknown key", "'repeets'")),
    (lambda t: t.replace('samples = 100', 'samples = 100\nbacth = 4'), ("model 'mlp <&>'", "'bacth'")),
    (lambda t: t.replace("digits_mlp.onnx", "no_such.onnx"), ("model 'mlp <&>' path", "no_such.onnx")),
    (lambda t: t.replace("digits_test.npz", "no_such.npz"), ("model 'mlp <&>' test_data", "no_such.npz")),
    (lambda t: t.replace('encodings = ["2-PCM"]', 'encodings = ["3-PCM"]'), ("hardware 'ibm-pcm-14nm'", "3-PCM")),
    (lambda t: t.replace('preset = "neurram"', 'preset = "nope"'), ("hardware 'nope'", "unknown hardware preset")),
    (lambda t: t.replace('"1d"', '"1 fortnight"'), ("times", "1 fortnight")),
])
def test_bad_grid_fails_before_any_cell(tmp_path: Path, change, needles) -> None:  # type: ignore[no-untyped-def]
    g = grid(tmp_path, text=change(GRID.format(repeats=2)))
    code, _, err = run("sweep", g, "-o", tmp_path / "out")
    assert_clean_error(code, err, *needles)
    assert not (tmp_path / "out").exists()


def test_labels_of_the_wrong_length(tmp_path: Path) -> None:
    data = load_inputs(MODELS / "digits_test.npz")
    np.savez(tmp_path / "short.npz", labels=data["labels"][:99])
    text = GRID.format(repeats=2).replace("samples = 100", f'labels = "{tmp_path / "short.npz"}:labels"')
    code, _, err = run("sweep", grid(tmp_path, text=text), "-o", tmp_path / "out")
    assert_clean_error(code, err, "model 'mlp <&>'", "99 labels for 540 test samples")
    assert not (tmp_path / "out").exists()


def test_unreachable_ray_address(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    code, _, err = run("sweep", grid(tmp_path), "-o", tmp_path / "out", "--address", f"ray://127.0.0.1:{port}")
    assert_clean_error(code, err, f"cannot reach Ray at ray://127.0.0.1:{port}")
    assert time.monotonic() - t0 < 60
    assert not (tmp_path / "out").exists()


def test_one_sweep_per_directory(tmp_path: Path) -> None:
    import fcntl

    (tmp_path / "out").mkdir()
    with open(tmp_path / "out" / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a running sweep holds it
        code, _, err = run("sweep", grid(tmp_path), "-o", tmp_path / "out", "--workers", "1")
    assert_clean_error(code, err, "another sweep is running in")
    assert not (tmp_path / "out" / "results.csv").exists()
