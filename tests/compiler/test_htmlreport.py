"""The HTML report: its numbers are the program's, and a real headless browser draws every tile and task."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from anac.api import compile_model, load_program, report_json, save_program, summary
from anac.cli import main
from anac.htmlreport import render_html
from anac.views import placement_table
from click.testing import CliRunner

MODELS = Path(__file__).parents[2] / "models"
RNNT_SHAPES = {"features": (8, 2, 8), "tokens": (3, 2)}


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    where = tmp_path_factory.mktemp("html")
    return {"kws": save_program(compile_model(MODELS / "kws_mlp.onnx"), where / "kws.anac"),
            "rnnt": save_program(compile_model(MODELS / "rnnt_small.onnx", input_shapes=RNNT_SHAPES),
                                 where / "rnnt.anac")}


@pytest.mark.parametrize("name", ["kws", "rnnt"])
def test_numbers_in_the_report_are_the_programs(programs: dict[str, Path], name: str) -> None:
    prog = load_program(programs[name])
    page = render_html(prog)
    s = summary(prog)
    cells = dict(re.findall(r'<td data-key="([^"]+)">([^<]*)</td>', page))
    assert cells["tiles"] == str(s["tiles"]) and cells["chips"] == str(s["chips"])
    assert cells["PCM devices"] == f"{s['pcm_devices']:,}" and cells["PCM per weight"] == str(s["pcm_per_weight"])
    assert cells["latency per inference"] == f"{prog.schedule['latency_ns'] / 1e3:,.1f} us"
    tiles = re.findall(r'<rect class="tile" data-chip="(\d+)" data-tile="(\d+)" data-encoding="([^"]+)" '
                       r'data-utilisation="([^"]+)"', page)
    assert sorted((int(c), int(t)) for c, t, _, _ in tiles) == prog.tiles_used()
    table = placement_table(prog)
    util = {(c["chip"], t["tile"]): (t["encoding"], t["utilisation"]) for c in table["chips"] for t in c["tiles"]}
    assert all(util[(int(c), int(t))] == (e, float(u)) for c, t, e, u in tiles)
    assert len(re.findall(r'<rect class="task"', page)) == len(prog.schedule["timeline"])
    for link, v in table["links"].items():
        assert f"<td>{link}</td><td>{int(v['bytes']):,}</td>" in page
    embedded = re.search(r'<script type="application/json" id="report">(.*?)</script>', page, re.S).group(1)
    assert json.loads(embedded) == json.loads(json.dumps(report_json(prog), sort_keys=True))
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page


def test_cli_writes_html_svg_and_accuracy_chart(programs: dict[str, Path], tmp_path: Path) -> None:
    verify_json = tmp_path / "v.json"
    runner = CliRunner()
    r = runner.invoke(main, ["verify", str(MODELS / "digits_mlp.onnx"), "--inputs", str(MODELS / "digits_test.npz"),
                             "--calibration-data", str(MODELS / "digits_calib.npz"), "--mode", "hardware",
                             "--t", "1s,1d", "--json", "-q"])
    assert r.exit_code == 0
    verify_json.write_text(r.stdout)
    r = runner.invoke(main, ["inspect", str(programs["kws"]), "--html", str(tmp_path / "r.html"), "--svg",
                             str(tmp_path / "svg"), "--verify-json", str(verify_json), "-q"])
    assert r.exit_code == 0, r.stderr
    page = (tmp_path / "r.html").read_text()
    assert '<svg class="accuracy"' in page and "1d" in page
    assert sorted(p.name for p in (tmp_path / "svg").iterdir()) == ["chip0.svg"]
    (tmp_path / "bad.json").write_text("{not json")
    r = runner.invoke(main, ["inspect", str(programs["kws"]), "--html", str(tmp_path / "x.html"),
                             "--verify-json", str(tmp_path / "bad.json")])
    assert r.exit_code == 1 and "cannot read verify results" in r.stderr


def _browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_browser() is None, reason="no headless chromium here (.ci/run installs Debian's chromium)")
@pytest.mark.parametrize("name", ["kws", "rnnt"])
def test_a_headless_browser_draws_every_tile_and_task(programs: dict[str, Path], name: str, tmp_path: Path) -> None:
    prog = load_program(programs[name])
    page = tmp_path / "r.html"
    page.write_text(render_html(prog))
    dom = subprocess.run([_browser(), "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
    drawn = dict(re.findall(r'data-drawn-(tiles|tasks)="(\d+)"', dom))
    assert int(drawn["tiles"]) == len(prog.tiles_used())
    assert int(drawn["tasks"]) == len(prog.schedule["timeline"])
