"""Views of a placed program for people: the per-chip tile table and a text chip map."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from anac.core.artifact import summary
from anac.core.estimates import energy, performance
from anac.core.program import Program, Slice

_SHADES = " .:-=+*#%@"  # tile utilisation 0 % .. 100 % in ten steps
_FEW = 5  # list items shown before "... N more" in the default (one screen) view


def placement_table(prog: Program) -> dict[str, Any]:
    """Per chip, each used tile with its slices; then the summary (what ``inspect --json`` prints)."""
    hw = prog.hardware
    by_tile: dict[tuple[int, int], list[Slice]] = defaultdict(list)
    for s in prog.slices or []:
        by_tile[(s.chip, s.tile)].append(s)  # type: ignore[index]
    chips: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (chip, tile), slices in sorted(by_tile.items()):
        devices = sum(s.n_rows * s.n_cols * hw.encoding(s.encoding).devices_per_weight for s in slices)
        chips[chip].append({
            "tile": tile,
            "encoding": slices[0].encoding,
            "utilisation": round(devices / hw.devices_per_tile, 4),
            "slices": [{"id": s.id, "layer": prog.matrices[s.matrix].node, "matrix": s.matrix,  # type: ignore[index]
                        "rows": list(s.rows), "cols": list(s.cols), "encoding": s.encoding, "slot": s.slot,
                        "copy": s.copy, "copy_mode": prog.matrices[s.matrix].copy_mode,  # type: ignore[index]
                        "tile_rows": [s.row_offset, s.row_offset + s.n_rows],  # type: ignore[operator]
                        "tile_cols": [s.col_offset, s.col_offset + s.n_cols]}  # type: ignore[operator]
                       for s in slices],
        })
    host = [{"stage": st.name, "nodes": len(st.nodes), "inputs": st.inputs, "outputs": st.outputs}
            for st in prog.stages or [] if st.kind == "host"]
    layers: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for (chip, tile), slices in sorted(by_tile.items()):
        for s in slices:
            node = prog.matrices[s.matrix].node  # type: ignore[index]
            if tile not in layers[chip][node]:
                layers[chip][node].append(tile)
    sched = prog.schedule or {}
    links: dict[str, dict[str, float]] = defaultdict(lambda: {"bytes": 0, "transfers": 0, "busy_ns": 0})
    for t in sched.get("timeline", []):
        for r in t["resources"]:
            if r.startswith("link:"):
                links[r]["bytes"] += t["bytes"]
                links[r]["transfers"] += 1
                links[r]["busy_ns"] += t["end_ns"] - t["start_ns"]
    return {"hardware": hw.name,
            "chips": [{"chip": c, "tiles": t, "layers": dict(layers[c])} for c, t in sorted(chips.items())],
            "host_stages": host, "pruning": prog.pruning, "assignment": prog.assignment,
            "placement": prog.placement_info, "links": dict(sorted(links.items())),
            "schedule": sched, "summary": summary(prog)}


def render_text(prog: Program, tiles: bool = False) -> str:
    """The placement as text: per chip its map, tiles used, layers and utilisation, then the summary
    (a screenful); ``tiles`` adds every chip's layer list and per-tile slice table, and the long lists."""
    table = placement_table(prog)
    hw = prog.hardware
    lines = [f"hardware: {hw.name} ({hw.tiles_per_chip} tiles of {hw.tile_rows} x {hw.tile_cols} unit cells, "
             f"{hw.devices_per_cell} devices per cell)"]
    for chip in table["chips"]:
        used = {t["tile"]: t["utilisation"] for t in chip["tiles"]}
        cells = "".join(_SHADES[min(9, max(1, round(used[i] * 9)))] if i in used else "_"
                        for i in range(hw.tiles_per_chip))
        shared = sum(len({s["layer"] for s in t["slices"]}) > 1 for t in chip["tiles"])
        lines.append("")
        lines.append(f"chip {chip['chip']}: {len(used)} of {hw.tiles_per_chip} tiles used   map [{cells}]")
        lines.append(f"  {len(chip['layers'])} layer(s), utilisation {sum(used.values()) / max(1, len(used)):.1%} "
                     f"of the used tiles' devices; {shared} tile(s) hold several layers")
        if not tiles:
            continue
        lines.append("  layers: " + "; ".join(f"{n} on tile(s) {','.join(map(str, t))}"
                                              for n, t in chip["layers"].items()))
        lines.append(f"  {'tile':>4}  {'util':>6}  {'enc':<6} {'layer':<28} {'rows':>13} {'cols':>13}")
        for t in chip["tiles"]:
            for j, s in enumerate(t["slices"]):
                head = f"  {t['tile']:>4}  {t['utilisation']:>6.1%}" if j == 0 else " " * 14
                lines.append(f"{head}  {s['encoding']:<6} {_short(_copy_label(s), 28):<28} "
                             f"{_rng(s['rows']):>13} {_rng(s['cols']):>13}")
    lines.append("")
    lines.append(f"map: one character per tile, '_' unused, '{_SHADES[1]}' to '{_SHADES[9]}' = "
                 "utilisation low to full")
    if prog.pruning:
        pruned = [f"{mid} {p['rows']} -> {p['kept']} rows" for mid, p in prog.pruning.items()]
        lines.append("pruned inputs: " + ", ".join(pruned if tiles else pruned[:_FEW])
                     + ("" if tiles or len(pruned) <= _FEW else f", ... {len(pruned) - _FEW} more"))
    a = prog.assignment or {}
    if a.get("encodings"):
        counts: dict[str, int] = defaultdict(int)
        for enc in a["encodings"].values():
            counts[enc] += 1
        how = f"{a['status']}" + (f", {a['budget']}" if a.get("budget") else "")
        if a.get("estimated_error") is not None:
            how += f", estimated error {a['estimated_error']:.4g}"
        lines.append("encodings: " + ", ".join(f"{n} layer(s) {e}" for e, n in sorted(counts.items()))
                     + f" ({how})")
        if tiles or len(counts) > 1 and len(a["encodings"]) <= _FEW:
            for enc in sorted(counts):
                lines.append(f"  {enc}: " + ", ".join(sorted(n for n, e in a["encodings"].items() if e == enc)))
    p = table["placement"] or {}
    if "link_bytes" in p:
        g = p.get("greedy", {})
        lines.append(f"placement: {p.get('method')}, {p.get('status')}; {p['link_bytes']:,} bytes on links "
                     f"per inference (greedy: {g.get('link_bytes', 0):,})")
    links = sorted(table["links"].items(), key=lambda kv: (-kv[1]["bytes"], kv[0]))
    for name, lk in links if tiles else links[:_FEW]:
        lines.append(f"  {name}: {int(lk['bytes']):,} bytes in {int(lk['transfers'])} transfers, "
                     f"busy {lk['busy_ns'] / 1e3:,.1f} us per inference")
    if not tiles and len(links) > _FEW:
        lines.append(f"  ... {len(links) - _FEW} more links (--tiles lists them)")
    sched = table["schedule"]
    if sched:
        tp = sched.get("throughput_per_s")
        lines.append(f"schedule: {sched['status']}; latency {sched['latency_ns'] / 1e3:,.1f} us per inference, "
                     f"throughput {tp:,.0f} inferences/s pipelined (bottleneck {sched['bottleneck']})")
    if prog.slices is not None and prog.stages is not None:
        en = energy(prog)
        lines.append(f"energy: {en['total_pj'] / 1e6:,.3f} uJ per inference (host {en['host_share']:.1%}); "
                     f"{en['chip_tops_per_w']} TOPS/W on chip, {en['system_tops_per_w']} with links and host "
                     f"(paper: {en['paper_tops_per_w']['sustained']} sustained, "
                     f"{en['paper_tops_per_w']['peak_tile']} peak per tile)")
    host = table["host_stages"]
    if host and tiles:
        lines.append("host stages: " + ", ".join(f"{h['stage']} ({h['nodes']} nodes)" for h in host))
    elif host:
        lines.append(f"host stages: {len(host)} with {sum(h['nodes'] for h in host)} nodes")
    lines += busy_bars(prog, limit=None if tiles else 8)
    s = table["summary"]
    hw_ = s["host_weights"]
    if hw_["weights"]:
        lines.append(f"host weights: {hw_['weights']:,} ({hw_['share']:.1%} of all) in {hw_['weighted_nodes']} "
                     "node(s); largest: " + "; ".join(f"{n['node']} ({n['op_type']}, {n['weights']:,}): "
                                                      f"{n['reason']}" for n in hw_["nodes"][:3]))
    if s["zero_block_weights"]:
        lines.append(f"grouped convs: {s['zero_block_weights']:,} zero-block cells between packed groups "
                     f"({s['zero_block_weights'] / (s['weights'] + s['zero_block_weights']):.1%} of the weight "
                     "cells on crossbars)")
    lines.append(f"summary: {s['tiles']} tiles on {s['chips']} chip(s), {s['pcm_devices']:,} PCM devices for "
                 f"{s['weights']:,} weights ({s['pcm_per_weight']} PCM per weight, {s['device_utilisation']:.1%} of "
                 f"the used tiles' devices), {s['analog_nodes']} analog nodes in {s['slices']} slices, "
                 f"{s['host_stages']} host stage(s)")
    if not tiles:
        lines.append("(the layers of each chip and its per-tile slice table: --tiles)")
    return "\n".join(lines)


def busy_bars(prog: Program, width: int = 40, limit: int | None = None) -> list[str]:
    """Per crossbar layer (the ``limit`` busiest, in program order), its busy time per inference on its
    busiest tile as a bar (the pipeline's stages), then the estimate's throughput, latency and bounding stage."""
    if prog.chips_used is None or not prog.mvms:
        return []
    perf = performance(prog)
    layers = perf["layers"]
    if limit is not None and len(layers) > limit:
        keep = set(sorted(layers, key=lambda n: -layers[n]["busy_s"])[:limit])
        layers = {n: v for n, v in layers.items() if n in keep}
    top = max([perf["bottleneck_busy_s"] or 0.0, *(v["busy_s"] for v in layers.values())]) or 1.0
    lines = [f"busy time per inference (bar: share of the bounding stage, {top * 1e6:,.1f} us):"]
    for n, v in layers.items():
        bar = "#" * max(1, round(width * v["busy_s"] / top))
        lines.append(f"  {_short(n, 24):<24} {bar:<{width}} {v['busy_s'] * 1e6:>10,.1f} us  {v['mvms']:,} MVMs"
                     + (f" over {v['copies']} copies" if v["copies"] > 1 and v.get("copy_mode") != "average"
                        else f" on each of {v['copies']} averaged copies" if v["copies"] > 1 else "")
                     + f", tile {v['tile']}")
    if len(layers) < len(perf["layers"]):
        lines.append(f"  ... {len(perf['layers']) - len(layers)} less busy layer(s) (--tiles shows all)")
    if perf["throughput_per_s"]:
        lines.append(f"estimate: {perf['throughput_per_s']:,.0f} inferences/s pipelined, latency "
                     f"{(perf['latency_s'] or 0) * 1e6:,.1f} us, bound by {perf['bottleneck']}")
    r = prog.replication
    if r:
        lines.append(f"copies ({r['status']}, {r['budget']}): "
                     + (", ".join(f"{n} x{k}" for n, k in r["copies"].items()) or "none")
                     + f"; {r['tiles']} tiles (without copies {r['tiles_without_copies']})")
    a = prog.averaging
    if a:
        lines.append(f"averaged copies ({a['mode']}, {a['budget']}): "
                     + (", ".join(f"{n} x{k}" for n, k in a["copies"].items()) or "none")
                     + f"; {a['tiles']} tiles (without them {a['tiles_without_copies']})")
    return lines


def _copy_label(s: dict[str, Any]) -> str:
    """A slice's matrix, and which copy it is when it is one (replicated copies split, averaged ones average)."""
    if not s.get("copy"):
        return str(s["matrix"])
    return f"{s['matrix']} #{s['copy']} {'avg' if s['copy_mode'] == 'average' else 'split'}"


def _rng(r: list[int]) -> str:
    return f"{r[0]}:{r[1]}"


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]
