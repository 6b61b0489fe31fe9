"""Estimates of a placed program: energy per inference, and the pipeline's throughput and latency.

Throughput: the layers work as a pipeline (inferences in flight one behind
another), so the busiest resource bounds the steady state. Per crossbar
layer: its matrix-vector products per inference (conv output positions x
batch, recurrent time steps x batch, tokens), each ``mvm_time_ns`` of the spec
on its tiles (the IBM preset: the paper's 300 ns step), its copies sharing the
products (replicate) or each running all of them in parallel on its own tiles
(averaged copies: the time of one copy, the energy of all); slices of one tile
that share rows or columns run one after another. The host runs host stages, recurrent gates and digital partial
sums; links carry every transfer (core/dataflow.py). Latency is the
makespan of schedule_links' timeline for one inference.

Energy per inference, from the spec's energy figures and the link schedule.

MACs: every slice runs one MVM per input vector of its copy (rows x columns MACs each; every vector for
an averaged copy).
Tile I/O: every input and output word of every slice passes a landing pad.
Links: the bytes of every transfer in the dataflow. Host: one operation per
output element of host stages, digital partial sums and recurrent gates.
The chip's TOPS/W counts analog MACs (2 ops each) over the chip's energy
(MACs and tile I/O); the system figure adds links and host.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from anac.core.dataflow import layer_tiles, slice_vectors, tasks, tile_time_ns
from anac.core.program import Program, copy_counts


def performance(prog: Program) -> dict[str, Any]:
    """Steady-state throughput (inferences/s), latency of one inference (s), the bounding stage, and per
    layer its products per inference, copies (and whether they split the products or are averaged), tiles
    and busy time (s) on its busiest tile."""
    busy: dict[str, float] = defaultdict(float)
    for t in tasks(prog):
        for r in t.resources:
            busy[r] += t.duration_ns
    vec = slice_vectors(prog)
    copies = copy_counts(prog)
    on_tile: dict[str, list[str]] = defaultdict(list)
    layers: dict[str, dict[str, Any]] = {}
    for node, tiles in layer_tiles(prog).items():
        own = {key: tile_time_ns(prog, ids, vec) for key, ids in tiles.items()}
        worst = max(own, key=lambda k: (own[k], k))
        mvm = (prog.mvms or {})[node]
        for key in tiles:
            on_tile[f"tile:{key[0]}.{key[1]}"].append(node)
        layers[node] = {"mvms": max(1, mvm.params.get("traffic", {}).get("vectors", 1)),
                        "copies": max(copies.get(m, 1) for m in mvm.matrices),
                        "copy_mode": prog.matrices[mvm.matrices[0]].copy_mode,  # type: ignore[index]
                        "tiles": len(tiles),
                        "busy_s": own[worst] * 1e-9, "tile": f"{worst[0]}.{worst[1]}",
                        "tile_busy_s": busy[f"tile:{worst[0]}.{worst[1]}"] * 1e-9}
    if not busy:
        return {"throughput_per_s": None, "latency_s": None, "bottleneck": None, "bottleneck_busy_s": None,
                "layers": layers, "resources_busy_s": {}}
    top = max(busy, key=lambda r: (busy[r], r))
    latency = (prog.schedule or {}).get("latency_ns")
    return {"throughput_per_s": round(1e9 / busy[top], 3) if busy[top] else None,
            "latency_s": None if latency is None else latency * 1e-9,
            "bottleneck": _describe(top, on_tile), "bottleneck_busy_s": busy[top] * 1e-9,
            "layers": layers,
            "resources_busy_s": {r: v * 1e-9 for r, v in sorted(busy.items(), key=lambda kv: (-kv[1], kv[0]))}}


def _describe(resource: str, on_tile: dict[str, list[str]]) -> str:
    """A resource as a stage: the layers of a tile, the chip's link, the host."""
    if resource.startswith("tile:"):
        return f"{resource} ({', '.join(on_tile.get(resource, []))})"
    if resource.startswith("link:"):
        return f"{resource} (chip link)"
    return f"{resource} (host stages, recurrent gates, partial sums)"


def energy(prog: Program) -> dict[str, Any]:
    """Energy per inference in pJ, by part, and TOPS/W for the chip and for the whole system."""
    e = prog.hardware.energy
    macs = io_words = 0
    vec = slice_vectors(prog)
    for s in prog.slices or []:
        vectors = vec[s.id]
        macs += vectors * s.n_rows * s.n_cols
        io_words += vectors * (s.n_rows + s.n_cols)
    link_bytes = host_elements = 0
    for t in tasks(prog):
        if t.kind == "transfer":
            link_bytes += t.nbytes * max(1, len(t.resources))
    host_elements = sum(prog.tensor_elements.get(o, 0) for st in prog.stages or [] if st.kind != "analog"
                        for o in st.outputs)
    host_elements += sum(m.params.get("traffic", {}).get("out_elements", 0) for m in (prog.mvms or {}).values())
    parts = {"analog_mac_pj": macs * e.mac_pj, "tile_io_pj": io_words * e.io_pj_per_byte,
             "links_pj": link_bytes * e.link_pj_per_byte, "host_pj": host_elements * e.host_pj_per_element}
    chip = parts["analog_mac_pj"] + parts["tile_io_pj"]
    total = chip + parts["links_pj"] + parts["host_pj"]
    ops = 2 * macs
    return {**{k: round(v, 3) for k, v in parts.items()}, "macs": macs, "chip_pj": round(chip, 3),
            "total_pj": round(total, 3), "host_share": round(parts["host_pj"] / total, 4) if total else 0.0,
            "chip_tops_per_w": round(ops / chip, 3) if chip else 0.0,
            "system_tops_per_w": round(ops / total, 3) if total else 0.0,
            "paper_tops_per_w": {"sustained": e.paper_tops_per_w_sustained, "peak_tile": e.paper_tops_per_w_peak_tile}}
