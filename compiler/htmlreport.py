"""A self-contained HTML report of a placed program: chip maps, links, timeline, summary, accuracy.

No network access is needed to open it: the SVG pictures and the one small
script are inline. Each tile is an SVG rect of class "tile" carrying its chip,
tile, layers and utilisation; each scheduled task a rect of class "task".
The script counts what the browser actually drew (non-empty bounding boxes)
into ``data-drawn-tiles`` and ``data-drawn-tasks`` on the body, for tests.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
from anac.core.artifact import report_json
from anac.core.estimates import performance
from anac.core.program import Program
from anac.views import placement_table

_CELL, _GAP = 46, 6


def _palette(prog: Program) -> dict[str, str]:
    """A colour per layer, in program order (``distinct_colours``)."""
    layers = list(prog.mvms or {})
    return dict(zip(layers, distinct_colours(len(layers)), strict=True))


def distinct_colours(n: int) -> list[str]:
    """``n`` colours as far apart as possible in CIELAB (greedy farthest point over an sRGB grid, as in
    Glasbey et al. 2007): each colour is the grid colour farthest from all earlier ones (and from the
    white page), so consecutive layers differ most and no two layers share a look-alike hue, unlike
    golden-angle hues whose lightness and saturation never change."""
    levels = np.linspace(0, 1, 18)
    rgb = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    lab = _lab(rgb)
    keep = (lab[:, 0] > 25) & (lab[:, 0] < 88)  # dark enough to see on white, light enough for tile numbers
    rgb, lab = rgb[keep], lab[keep]
    nearest = np.linalg.norm(lab - _lab(np.ones((1, 3))), axis=1)
    out = []
    for _ in range(n):
        i = int(np.argmax(nearest))
        out.append("#" + "".join(f"{round(c * 255):02x}" for c in rgb[i]))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[i], axis=1))
    return out


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB (0..1) to CIELAB (D65)."""
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192], [0.1805, 0.0722, 0.9505]])
    xyz /= np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def chip_svg(prog: Program, chip: dict[str, Any]) -> str:
    """One chip's tile grid: tiles coloured by their main layer, shaded by utilisation, 2-PCM hatched."""
    hw = prog.hardware
    color = _palette(prog)
    rows, cols = hw.tile_grid
    w, h = cols * (_CELL + _GAP) + _GAP, rows * (_CELL + _GAP) + _GAP + 18
    used = {t["tile"]: t for t in chip["tiles"]}
    parts = [f'<svg class="chip" data-chip="{chip["chip"]}" xmlns="http://www.w3.org/2000/svg" width="{w}" '
             f'height="{h}" viewBox="0 0 {w} {h}">',
             '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
             'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="white" stroke-width="2"/>'
             '</pattern></defs>',
             f'<text x="{_GAP}" y="13" font-size="12">chip {chip["chip"]}: {len(used)} of {hw.tiles_per_chip} '
             f'tiles</text>']
    for i in range(hw.tiles_per_chip):
        x, y = _GAP + (i % cols) * (_CELL + _GAP), 18 + _GAP + (i // cols) * (_CELL + _GAP)
        t = used.get(i)
        if t is None:
            parts.append(f'<rect class="free" x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" fill="#eee" '
                         f'stroke="#ccc"/>')
            continue
        share: dict[str, int] = {}
        for s in t["slices"]:
            share[s["layer"]] = share.get(s["layer"], 0) + (s["rows"][1] - s["rows"][0]) * (s["cols"][1] - s["cols"][0])
        layers = sorted(share, key=lambda n: (-share[n], n))  # the layer with most weights on the tile first
        tip = "\n".join(f'{s["matrix"]} rows {s["rows"][0]}:{s["rows"][1]} cols {s["cols"][0]}:{s["cols"][1]} '
                        f'({s["encoding"]}, slot {s["slot"]}'
                        + (f', {"averaged" if s["copy_mode"] == "average" else "split"} copy {s["copy"]}'
                           if s["copy"] else "") + ")" for s in t["slices"])
        opacity = 0.35 + 0.65 * t["utilisation"]
        names = html.escape(", ".join(layers))
        parts.append(f'<g><title>tile {i}, {t["encoding"]}, {t["utilisation"]:.1%} used, layers {names}\n'
                     f'{html.escape(tip)}</title>'
                     f'<rect class="tile" data-chip="{chip["chip"]}" data-tile="{i}" data-encoding="{t["encoding"]}" '
                     f'data-utilisation="{t["utilisation"]}" data-layers="{html.escape(",".join(layers))}" '
                     f'x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" fill="{color[layers[0]]}" '
                     f'fill-opacity="{opacity:.3f}" stroke="#333"/>')
        if len(layers) > 1:  # a stripe per layer, as wide as its share of the tile's weights
            total, left = sum(share.values()), float(x)
            for n in layers:
                w = _CELL * share[n] / total
                parts.append(f'<rect class="layer" data-layer="{html.escape(n)}" x="{left:.2f}" y="{y}" '
                             f'width="{w:.2f}" height="{_CELL}" fill="{color[n]}" fill-opacity="{opacity:.3f}" '
                             f'pointer-events="none"/>')
                left += w
        if t["encoding"] != hw.default_encoding:
            parts.append(f'<rect x="{x}" y="{y}" width="{_CELL}" height="{_CELL}" fill="url(#hatch)" '
                         f'pointer-events="none"/>')
        parts.append(f'<text x="{x + 3}" y="{y + 12}" font-size="9" pointer-events="none">{i}</text></g>')
    parts.append("</svg>")
    return "".join(parts)


def timeline_svg(prog: Program) -> str:
    """The schedule of one inference: one row per chip (its tiles), link and the host."""
    sched = prog.schedule or {}
    items = sched.get("timeline", [])
    end = max((t["end_ns"] for t in items), default=1) or 1

    def row(t: dict[str, Any]) -> str:
        r = t["resources"][0] if t["resources"] else "host"
        return f"chip {r.split(':')[1].split('.')[0]}" if r.startswith("tile:") else r

    rows = sorted({row(t) for t in items}, key=lambda r: (not r.startswith("chip"), r))
    width, label, height = 900, 90, 22
    colors = {"mvm": "#3b82f6", "transfer": "#f59e0b", "host": "#10b981", "sum": "#8b5cf6"}
    parts = [f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width + label + 10}" '
             f'height="{height * len(rows) + 30}">']
    for i, r in enumerate(rows):
        parts.append(f'<text x="2" y="{i * height + 15}" font-size="11">{html.escape(r)}</text>')
    for t in items:
        y = rows.index(row(t)) * height + 3
        x = label + width * t["start_ns"] / end
        w = max(1.0, width * (t["end_ns"] - t["start_ns"]) / end)
        parts.append(f'<rect class="task" data-kind="{t["kind"]}" x="{x:.2f}" y="{y}" width="{w:.2f}" '
                     f'height="{height - 6}" fill="{colors.get(t["kind"], "#999")}"><title>'
                     f'{html.escape(t["id"])}: {t["start_ns"]:,}-{t["end_ns"]:,} ns'
                     f'{", " + format(t["bytes"], ",") + " bytes" if t["bytes"] else ""}</title></rect>')
    parts.append(f'<text x="{label}" y="{height * len(rows) + 20}" font-size="11">0</text>'
                 f'<text x="{label + width - 80}" y="{height * len(rows) + 20}" font-size="11">'
                 f'{end / 1e3:,.1f} us</text></svg>')
    return "".join(parts)


def accuracy_svg(verify: dict[str, Any]) -> str:
    """Accuracy (or mean relative error) against time after programming, from verify --json output."""
    times = verify.get("times", [])
    key = "accuracy" if times and times[0].get("accuracy") else "rel_err"
    pts = []
    for t in times:
        v = t["accuracy"]["mean"] if key == "accuracy" else \
            max(o["rel_err"]["mean"] for o in t["outputs"].values())
        pts.append((t["t"], v))
    if not pts:
        return ""
    lo, hi = min(v for _, v in pts), max(v for _, v in pts)
    lo, hi = (lo - 0.01, hi + 0.01) if hi - lo < 1e-9 else (lo, hi)
    w, h = 420, 180
    xy = [(40 + i * (w - 60) / max(1, len(pts) - 1), h - 30 - (v - lo) / (hi - lo) * (h - 60)) for i, (_, v) in
          enumerate(pts)]
    parts = [f'<svg class="accuracy" xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}">',
             '<polyline fill="none" stroke="#2563eb" stroke-width="2" points="'
             + " ".join(f"{x:.1f},{y:.1f}" for x, y in xy) + '"/>']
    for (label, v), (x, y) in zip(pts, xy, strict=True):
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3"/><text x="{x - 10:.1f}" y="{h - 10}" '
                     f'font-size="11">{html.escape(label)}</text><text x="{x - 14:.1f}" y="{y - 8:.1f}" '
                     f'font-size="10">{v:.4f}</text>')
    ref = verify.get("reference_accuracy")
    title = f"{key} against time after programming" + (f" (onnxruntime: {ref:.4f})" if ref is not None else "")
    parts.append(f'<text x="40" y="14" font-size="12">{html.escape(title)}</text></svg>')
    return "".join(parts)


_SCRIPT = """<script>
window.addEventListener('load', function () {
  function drawn(sel) { return Array.from(document.querySelectorAll(sel)).filter(function (e) {
    var b = e.getBBox(); return b.width > 0 && b.height > 0; }).length; }
  document.body.setAttribute('data-drawn-tiles', drawn('rect.tile'));
  document.body.setAttribute('data-drawn-tasks', drawn('rect.task'));
});
</script>"""


def json_for_html(obj: Any) -> str:
    """``obj`` as JSON that is safe inside a <script> element and still parses as JSON: HTML entities would not
    be decoded there, so ``<``, ``>`` and ``&`` become JSON's own \\u escapes instead (no "</script>" can
    appear); ensure_ascii escapes U+2028/U+2029."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(prog: Program, verify: dict[str, Any] | None = None, source: str | None = None) -> str:
    """The whole report as one HTML document, titled by the model file (else ``source``, else the graph's name)."""
    table = placement_table(prog)
    report = report_json(prog)
    s, en = table["summary"], report.get("energy") or {}
    rows = [("tiles", s["tiles"]), ("chips", s["chips"]), ("PCM devices", f"{s['pcm_devices']:,}"),
            ("weights on crossbars", f"{s['weights']:,}"), ("PCM per weight", s["pcm_per_weight"]),
            ("analog nodes", s["analog_nodes"]), ("host stages", s["host_stages"]), ("slices", s["slices"])]
    sched = prog.schedule or {}
    if sched:
        rows += [("latency per inference", f"{sched['latency_ns'] / 1e3:,.1f} us"),
                 ("throughput, pipelined", f"{sched['throughput_per_s']:,.0f} inferences/s")]
    if en:
        rows += [("energy per inference", f"{en['total_pj'] / 1e6:,.3f} uJ (host {en['host_share']:.1%})"),
                 ("TOPS/W chip / system", f"{en['chip_tops_per_w']} / {en['system_tops_per_w']} "
                                          f"(paper: {en['paper_tops_per_w']['sustained']} sustained, "
                                          f"{en['paper_tops_per_w']['peak_tile']} peak per tile)")]
    legend = sorted({layer for c in table["chips"] for t in c["tiles"] for layer in
                     {x["layer"] for x in t["slices"]}})
    links = "".join(f"<tr><td>{html.escape(n)}</td><td>{int(v['bytes']):,}</td><td>{int(v['transfers'])}</td>"
                    f"<td>{v['busy_ns'] / 1e3:,.1f}</td></tr>" for n, v in table["links"].items())
    model = prog.model_file or source or prog.graph.name
    title = f"anac: {model} on {prog.hardware.name}"
    body = [f"<h1>{html.escape(title)}</h1>",
            '<h2>Summary</h2><table id="summary">' + "".join(
                f'<tr><th>{k}</th><td data-key="{k}">{v}</td></tr>' for k, v in rows) + "</table>",
            "<h2>Chips</h2><p>Tiles are coloured by layer and shaded by utilisation; hatched tiles use an "
            "encoding other than the default (" + html.escape(prog.hardware.default_encoding) + "); a tile "
            "holding several layers shows a stripe per layer, as wide as its share of the tile's weights. Hover a "
            "tile for its layers and slices.</p>",
            '<div class="chips">' + "".join(chip_svg(prog, c) for c in table["chips"]) + "</div>",
            '<p class="legend">' + " ".join(f'<span style="background:{_palette(prog)[n]}">&nbsp;&nbsp;&nbsp;</span> '
                                             f'{html.escape(n)}' for n in legend) + "</p>",
            '<h2>Links</h2><table id="links"><tr><th>link</th><th>bytes per inference</th><th>transfers</th>'
            f"<th>busy (us)</th></tr>{links}</table>",
            f"<h2>Timeline of one inference</h2>{timeline_svg(prog)}",
            f"<h2>Busy time per layer</h2>{busy_svg(prog)}"]
    if verify is not None:
        body.append(f"<h2>Accuracy after programming</h2>{accuracy_svg(verify)}")
    body.append(f'<script type="application/json" id="report">{json_for_html(report)}</script>')
    style = ("body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}.chips svg{margin:4px;border:1px solid #999}")
    return (f"<!DOCTYPE html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}{_SCRIPT}</body></html>")


def busy_svg(prog: Program) -> str:
    """Per crossbar layer, its busy time per inference on its busiest tile as a bar (rect class "busy"),
    scaled to the bounding stage, which is named below."""
    if prog.chips_used is None or not prog.mvms:
        return "<p>not placed</p>"
    perf = performance(prog)
    layers = perf["layers"]
    top = max([perf["bottleneck_busy_s"] or 0.0, *(v["busy_s"] for v in layers.values())]) or 1.0
    color = _palette(prog)
    label, width, bar_h = 220, 420, 16
    h = bar_h * len(layers) + 8
    parts = [f'<svg class="busy" xmlns="http://www.w3.org/2000/svg" width="{label + width + 160}" height="{h}">']
    for i, (n, v) in enumerate(layers.items()):
        y = 4 + i * bar_h
        w = max(1.0, width * v["busy_s"] / top)
        kind = "averaged copies" if v["copy_mode"] == "average" else "copies"
        extra = f" ({v['copies']} {kind})" if v["copies"] > 1 else ""
        parts.append(f'<text x="0" y="{y + 12}" font-size="11">{html.escape(n)}</text>'
                     f'<g><title>{html.escape(n)}: {v["busy_s"] * 1e6:,.1f} us per inference, {v["mvms"]:,} MVMs, '
                     f'{v["copies"]} {kind}, tile {v["tile"]}</title>'
                     f'<rect class="busy" data-layer="{html.escape(n)}" data-busy-s="{v["busy_s"]}" x="{label}" '
                     f'y="{y}" width="{w:.1f}" height="{bar_h - 3}" fill="{color[n]}"/></g>'
                     f'<text x="{label + w + 4:.1f}" y="{y + 12}" font-size="11">{v["busy_s"] * 1e6:,.1f} us'
                     f'{extra}</text>')
    parts.append("</svg>")
    tp = perf["throughput_per_s"]
    note = (f"<p>Bars: share of the bounding stage, {html.escape(str(perf['bottleneck']))} "
            f"({top * 1e6:,.1f} us per inference); estimate {tp:,.0f} inferences/s pipelined.</p>" if tp else "")
    return "".join(parts) + note


def write_html(prog: Program, path: str | Path, verify: dict[str, Any] | None = None,
               source: str | None = None) -> Path:
    """Write the HTML report; return its path."""
    path = Path(path)
    path.write_text(render_html(prog, verify, source))
    return path


def write_svgs(prog: Program, where: str | Path) -> list[Path]:
    """One SVG file per chip map."""
    where = Path(where)
    where.mkdir(parents=True, exist_ok=True)
    out = []
    for chip in placement_table(prog)["chips"]:
        p = where / f"chip{chip['chip']}.svg"
        p.write_text(chip_svg(prog, chip))
        out.append(p)
    return out
