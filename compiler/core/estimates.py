"""Energy per inference of a placed program, from the spec's energy figures and the link schedule.

MACs: every slice runs one MVM per input vector (rows x columns MACs each).
Tile I/O: every input and output word of every slice passes a landing pad.
Links: the bytes of every transfer in the dataflow. Host: one operation per
output element of host stages, digital partial sums and recurrent gates.
The chip's TOPS/W counts analog MACs (2 ops each) over the chip's energy
(MACs and tile I/O); the system figure adds links and host.
"""

from __future__ import annotations

from typing import Any

from anac.core.dataflow import tasks
from anac.core.program import Program


def energy(prog: Program) -> dict[str, Any]:
    """Energy per inference in pJ, by part, and TOPS/W for the chip and for the whole system."""
    e = prog.hardware.energy
    macs = io_words = 0
    for s in prog.slices or []:
        mvm = (prog.mvms or {})[prog.matrices[s.matrix].node]  # type: ignore[index]
        vectors = max(1, mvm.params.get("traffic", {}).get("vectors", 1))
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
