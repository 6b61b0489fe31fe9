"""The HTML report: its numbers are the program's, and a real headless browser draws every tile and task."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model, load_program, report_json, save_program, summary
from anac.cli import main
from anac.htmlreport import distinct_colours, render_html
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


def _lab(hexes: list[str]) -> np.ndarray:
    """CIELAB of '#rrggbb' colours (an independent sRGB D65 conversion)."""
    rgb = np.array([[int(h[i:i + 2], 16) / 255 for i in (1, 3, 5)] for h in hexes])
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750],
                  [0.0193339, 0.1191920, 0.9503041]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


@pytest.mark.parametrize("n", [8, 40, 100])
def test_layer_colours_stay_distinct_for_many_layers(n: int) -> None:
    colours = distinct_colours(n)
    lab = _lab(colours)
    d = np.linalg.norm(lab[:, None] - lab[None], axis=2) + np.eye(n) * 1e9
    # CIE76 distance: about 2.3 is just noticeable; golden-angle hues at fixed lightness and saturation
    # put pairs of 82 layers 1.2 apart, this palette keeps every pair of 100 layers more than 15 apart.
    assert len(set(colours)) == n and d.min() > 15
    assert all(25 < lightness < 88 for lightness in lab[:, 0])  # visible on white, tile numbers legible


def test_report_is_titled_by_the_model_file_and_shows_every_layer_of_a_shared_tile(
        programs: dict[str, Path], tmp_path: Path) -> None:
    prog = load_program(programs["kws"])
    page = render_html(prog)
    assert "<title>anac: kws_mlp.onnx on ibm-pcm-14nm</title>" in page and "<h1>anac: kws_mlp.onnx on" in page
    # tile 5 holds fc0's last rows and the head fc3: a stripe per layer, the larger share first
    stripes = re.findall(r'<rect class="layer" data-layer="([^"]+)" x="([^"]+)" y="[^"]+" width="([^"]+)"', page)
    assert [s[0] for s in stripes] == ["fc0", "fc3"]
    assert abs(sum(float(s[2]) for s in stripes) - 46) < 0.05 and float(stripes[0][2]) > float(stripes[1][2])
    assert re.search(r'data-tile="5"[^>]*data-layers="fc0,fc3"', page)
    # a program compiled from an in-memory model is titled by the name given (the CLI: the program directory)
    prog.model_file = None
    assert "<title>anac: kws.anac on" in render_html(prog, source="kws.anac")
