"""The self-contained HTML report of a sweep: accuracy against time after programming, and the tables.

One inline SVG per model: a line per (hardware, encoding, drift compensation) through the mean accuracy over
chip instances at each time, a band of mean +- one standard deviation, a dot per instance, onnxruntime's
accuracy dashed, and a log time axis. Then the summary table (one row per series and time) and every row of
results.csv. Nothing is loaded from the network; every text from the grid is escaped.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

_COLORS = ("#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#65a30d", "#475569")
_W, _H, _L, _R, _T, _B = 720, 320, 56, 250, 28, 44


def _series_name(key: tuple[str, str, bool]) -> str:
    hw, enc, comp = key
    return f"{hw}, {enc}, {'with' if comp else 'no'} drift comp."


def summarize(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (model, hardware, encoding, drift compensation, time): instances, accuracy and error stats."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["hardware"], r["encoding"], r["drift_compensation"], r["time"]), []).append(r)
    out = []
    for (model, hw, enc, comp, t), rs in groups.items():
        acc = np.array([r["accuracy"] for r in rs], np.float64)
        err = np.array([r["rel_err"] for r in rs], np.float64)
        out.append({"model": model, "hardware": hw, "encoding": enc, "drift_compensation": comp, "time": t,
                    "seconds": rs[0]["seconds"], "instances": len(rs), "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std()), "accuracy_min": float(acc.min()),
                    "accuracy_max": float(acc.max()), "rel_err_mean": float(err.mean()),
                    "reference_accuracy": rs[0]["reference_accuracy"],
                    "wall_s_mean": float(np.mean([r["wall_s"] for r in rs]))})
    return out


def _x_positions(seconds: Sequence[float]) -> dict[float, float]:
    """Log time axis: each time's x in [0, 1]; a time of 0 sits one decade left of the smallest positive one."""
    pos = sorted({s for s in seconds if s > 0})
    zero = (pos[0] / 10) if pos else 1.0
    logs = {s: math.log10(s if s > 0 else zero) for s in set(seconds)}
    lo, hi = min(logs.values()), max(logs.values())
    return {s: 0.5 if hi == lo else (v - lo) / (hi - lo) for s, v in logs.items()}


def plot_svg(model: str, summary: Sequence[dict[str, Any]]) -> str:
    """Accuracy against time after programming for one model, every series of the sweep."""
    series: dict[tuple[str, str, bool], list[dict[str, Any]]] = {}
    for s in summary:
        series.setdefault((s["hardware"], s["encoding"], s["drift_compensation"]), []).append(s)
    ref = summary[0]["reference_accuracy"]
    values = [v for s in summary for v in (s["accuracy_min"], s["accuracy_max"],
                                           s["accuracy_mean"] - s["accuracy_std"],
                                           s["accuracy_mean"] + s["accuracy_std"])] + [ref]
    lo, hi = max(0.0, min(values)), min(1.0, max(values))
    pad = max(0.01, (hi - lo) * 0.05)
    lo, hi = max(0.0, lo - pad), min(1.0, hi + pad)
    xs = _x_positions([s["seconds"] for s in summary])
    pw, ph = _W - _L - _R, _H - _T - _B

    def x(sec: float) -> float:
        return _L + xs[sec] * pw

    def y(v: float) -> float:
        return _T + (hi - v) / (hi - lo) * ph

    parts = [f'<svg class="sweep-plot" data-model="{html.escape(model)}" xmlns="http://www.w3.org/2000/svg" '
             f'width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}">',
             f'<text x="{_L}" y="16" font-size="13">{html.escape(model)}: top-1 accuracy against time after '
             f'programming</text>',
             f'<rect x="{_L}" y="{_T}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for i in range(5):
        v = lo + (hi - lo) * i / 4
        parts.append(f'<line x1="{_L}" x2="{_L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#eee"/>'
                     f'<text x="{_L - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end">{v:.3f}</text>')
    labels = {s["seconds"]: s["time"] for s in summary}
    for sec, label in sorted(labels.items()):
        parts.append(f'<line x1="{x(sec):.1f}" x2="{x(sec):.1f}" y1="{_T}" y2="{_T + ph}" stroke="#eee"/>'
                     f'<text x="{x(sec):.1f}" y="{_T + ph + 16}" font-size="10" text-anchor="middle">'
                     f'{html.escape(str(label))}</text>')
    parts.append(f'<text x="{_L + pw / 2:.0f}" y="{_H - 8}" font-size="11" text-anchor="middle">time after '
                 f'programming (log scale)</text>')
    parts.append(f'<line class="reference" x1="{_L}" x2="{_L + pw}" y1="{y(ref):.1f}" y2="{y(ref):.1f}" '
                 f'stroke="#111" stroke-dasharray="5,4"><title>onnxruntime: {ref:.4f}</title></line>')
    for i, (key, pts) in enumerate(series.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = sorted(pts, key=lambda s: s["seconds"])
        name = html.escape(_series_name(key))
        upper = [(x(s["seconds"]), y(min(hi, s["accuracy_mean"] + s["accuracy_std"]))) for s in pts]
        lower = [(x(s["seconds"]), y(max(lo, s["accuracy_mean"] - s["accuracy_std"]))) for s in pts[::-1]]
        parts.append(f'<polygon class="spread" fill="{color}" fill-opacity="0.15" stroke="none" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in upper + lower) + '"/>')
        parts.append(f'<polyline class="mean" data-series="{name}" fill="none" stroke="{color}" stroke-width="2" '
                     'points="' + " ".join(f"{x(s['seconds']):.1f},{y(s['accuracy_mean']):.1f}" for s in pts) + '"/>')
        for s in pts:
            parts.append(f'<circle cx="{x(s["seconds"]):.1f}" cy="{y(s["accuracy_mean"]):.1f}" r="3" fill="{color}">'
                         f'<title>{name} at {html.escape(str(s["time"]))}: {s["accuracy_mean"]:.4f} +- '
                         f'{s["accuracy_std"]:.4f} over {s["instances"]} instance(s)</title></circle>')
        ly = _T + 6 + i * 16
        parts.append(f'<line x1="{_L + pw + 10}" x2="{_L + pw + 28}" y1="{ly}" y2="{ly}" stroke="{color}" '
                     f'stroke-width="2"/><text x="{_L + pw + 32}" y="{ly + 4}" font-size="10">{name}</text>')
    ly = _T + 6 + len(series) * 16
    parts.append(f'<line x1="{_L + pw + 10}" x2="{_L + pw + 28}" y1="{ly}" y2="{ly}" stroke="#111" '
                 f'stroke-dasharray="5,4"/><text x="{_L + pw + 32}" y="{ly + 4}" font-size="10">onnxruntime '
                 f'(float)</text></svg>')
    return "".join(parts)


def _table(cols: Sequence[str], rows: Sequence[Sequence[Any]], tid: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table id="{tid}"><tr>{head}</tr>{body}</table>'


def render_report(rows: Sequence[dict[str, Any]], title: str = "anac sweep") -> str:
    """The whole report as one HTML document."""
    summary = summarize(rows)
    models = list(dict.fromkeys(s["model"] for s in summary))
    plots = "".join(plot_svg(m, [s for s in summary if s["model"] == m]) for m in models)
    sum_rows = [(s["model"], s["hardware"], s["encoding"], "on" if s["drift_compensation"] else "off", s["time"],
                 s["instances"], f"{s['accuracy_mean']:.4f} +- {s['accuracy_std']:.4f}",
                 f"{s['accuracy_min']:.4f} .. {s['accuracy_max']:.4f}", f"{s['reference_accuracy']:.4f}",
                 f"{s['rel_err_mean']:.4f}", f"{s['wall_s_mean']:.3f}") for s in summary]
    all_cols = ("model", "hardware", "encoding", "drift_compensation", "seed", "time", "accuracy", "rel_err",
                "wall_s")
    all_rows = [tuple(f"{r[c]:.4f}" if c in ("accuracy", "rel_err") else r[c] for c in all_cols) for r in rows]
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>{len(rows)} rows: {len(models)} model(s), {len({(s['hardware'], s['encoding']) for s in summary})} "
            "hardware/encoding pair(s). Lines are the mean top-1 accuracy over programmed chip instances, bands "
            "mean +- one standard deviation; the dashed line is onnxruntime's float accuracy.</p>",
            f'<div class="plots">{plots}</div>', "<h2>Summary</h2>",
            _table(("model", "hardware", "encoding", "drift comp.", "time", "instances", "accuracy mean +- std",
                    "min .. max", "onnxruntime", "rel. error (mean)", "wall s (mean)"), sum_rows, "summary"),
            f"<h2>All rows</h2><details><summary>{len(rows)} rows (results.csv)</summary>"
            f"{_table(all_cols, all_rows, 'rows')}</details>"]
    style = ("body{font-family:sans-serif;margin:20px}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:left}.plots svg{margin:4px;border:1px solid #999}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")

