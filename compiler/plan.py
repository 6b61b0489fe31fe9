"""Plan a model without its weights: what compile would produce, from the graph and the shapes alone.

    from anac.plan import plan_model, plan_report
    prog = plan_model("llama.onnx", hardware="ibm-pcm-14nm", input_shapes={"input_ids": [1, 1]})
    plan_report(prog)["chips"]

The frontend reads no weight values (anac.core.frontend, ``weights=False``):
weights are shape-only placeholders, so every pass runs unchanged on shapes
and gives the tiles, chips, placement, link schedule and estimates compile
would. What compile decides from weight values, a plan decides by a rule it
records in ``prog.plan`` and in the report:

- encodings: without a budget, the ones compile uses (``--encoding``, else the
  hardware's default). Under a budget (chips, tiles, PCM per weight) compile
  measures each layer's sensitivity to each encoding on its weights; a plan
  takes a layer's squared sensitivity to an encoding as its share of the
  crossbar weights divided by the encoding's devices per weight (programming
  noise averaged over that many devices), so the budget is met by giving the
  cheaper encoding to the fewest weights;
- rows: no all-zero input rows can be seen, so none are removed (compile may
  remove some: a layer only shrinks); a layer pruned to ROWS keeps ROWS rows.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx
from anac.core.artifact import check_writable, report_json, save_program
from anac.core.dataflow import link_bytes
from anac.core.errors import AnacError, PlacementCapacityError
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.program import Program
from anac.driver import MEASURED_OPTIONS, PIPELINE, check_pipeline, configure, import_program, run_passes
from anac.passes.assign_devices import parse_encodings, tile_budget

log = logging.getLogger(__name__)

BUDGETS = ("chips", "tiles", "pcm_per_weight")
_CAPACITY_RETRIES = 3
_ZERO_ROWS_RULE = ("weights are not read, so no all-zero input rows are seen or removed (compile removes any it "
                   "finds: a layer can only shrink)")


def default_plan_output(model: str | Path) -> Path:
    """``model.onnx`` -> ``model.plan.anac`` beside it (never the ``model.anac`` a compile writes)."""
    p = Path(model)
    return p.with_name(p.stem + ".plan.anac")


def plan_model(model: str | Path | onnx.ModelProto, *, hardware: HardwareSpec | str | Path | None = None,
               input_shapes: Mapping[str, Sequence[int]] | None = None, batch: int | None = None,
               options: Mapping[str, Any] | None = None, dump_dir: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> Program:
    """The Program compile would make of ``model``, placed and scheduled, planned without reading its weights."""
    options = {k: v for k, v in (options or {}).items() if v is not None}
    measured = sorted(k for k in options if k in MEASURED_OPTIONS)
    if measured:
        raise AnacError(f"a plan reads no weights and no data, so it takes no measured option ({', '.join(measured)})")
    spec = hardware if isinstance(hardware, HardwareSpec) else load_hardware(hardware)
    check_pipeline(configure(options, PIPELINE))
    prog = import_program(model, hardware=spec, input_shapes=input_shapes, batch=batch, options=options,
                          weights=False, progress=progress)
    cut = next(i for i, p in enumerate(PIPELINE) if p.name == "assign_devices")
    run_passes(prog, configure(options, PIPELINE[:cut]), dump_dir=dump_dir, progress=progress)
    budgeted = any(k in options for k in BUDGETS)
    for attempt in range(_CAPACITY_RETRIES):
        sized = budgeted or str(options.get("average") or "").strip() == "auto"  # average auto scores by it too
        tail = {**options, "sensitivity": size_sensitivity(prog)} if sized else options
        try:
            run_passes(prog, configure(tail, PIPELINE[cut:]), dump_dir=dump_dir, progress=progress)
            break
        except PlacementCapacityError:
            # As compile does: the packer can miss the knapsack's per-encoding bound by a tile; tighten and rechoose.
            tiles = tile_budget(spec, options.get("chips"), options.get("tiles"))
            if not budgeted or tiles is None or tiles <= 1 or attempt == _CAPACITY_RETRIES - 1:
                raise
            options["tiles"] = tiles - 1
    prog.plan = {"weights": "not read: every weight is a shape-only placeholder", "encodings": _encoding_rule(prog),
                 "rows": _ZERO_ROWS_RULE if not options.get("prune") else
                 f"{_ZERO_ROWS_RULE}; a layer pruned to ROWS keeps its first ROWS rows (compile keeps the ROWS "
                 f"most important, by the weights: the same count)"}
    return prog


def plan_to(model: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Program, Path]:
    """Plan ``model`` and write the plan (no weights.npz) to ``out`` (default ``model.plan.anac``)."""
    out_path = Path(out) if out is not None else default_plan_output(model)
    check_writable(out_path)
    prog = plan_model(model, **kwargs)
    return prog, save_program(prog, out_path)


def size_sensitivity(prog: Program) -> dict[str, dict[str, float]]:
    """Per layer and encoding, the sensitivity a plan assumes: sqrt(share of the weights / devices per weight)."""
    hw = prog.hardware
    weights = {n: sum(prog.matrices[m].weights.size for m in mvm.matrices)  # type: ignore[index]
               for n, mvm in (prog.mvms or {}).items()}
    total = sum(weights.values()) or 1
    return {n: {e.name: (w / total / e.devices_per_weight) ** 0.5 for e in hw.encodings} for n, w in weights.items()}


def _encoding_rule(prog: Program) -> str:
    hw, opts = prog.hardware, prog.options
    default, per_layer = parse_encodings(opts.get("encoding"))
    named = f"the layers --encoding names as it names them ({', '.join(f'{k}={v}' for k, v in per_layer.items())}); " \
        if per_layer else ""
    budget = [f"{k.replace('_', ' ')} {opts[k]}" for k in BUDGETS if opts.get(k) is not None]
    if budget:
        return (f"{named}under a budget ({', '.join(budget)}); sensitivity cannot be measured without weights, so "
                f"a layer's squared sensitivity to an encoding is taken as its share of the crossbar weights over "
                f"the encoding's devices per weight: the budget is met by giving the cheaper encoding to the "
                f"fewest weights")
    if default:
        return f"{named}{default} for every {'other ' if named else ''}layer, as --encoding gives"
    return f"{named}the hardware's default {hw.default_encoding} for every {'other ' if named else ''}layer, " \
        f"as compile does without --encoding or a budget"


def plan_report(prog: Program, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What compile would report (report.json, or ``report`` when already made), plus the bytes on links and the
    layers, weights and tiles per encoding."""
    rep = dict(report) if report is not None else report_json(prog)
    layers: dict[str, Counter[str]] = defaultdict(Counter)
    cells: dict[str, Counter[str]] = defaultdict(Counter)  # layer -> encoding -> its slices' cells (one copy)
    for s in prog.slices or []:
        if s.copy == 0:
            cells[prog.matrices[s.matrix].node][s.encoding] += s.n_rows * s.n_cols  # type: ignore[index]
    for layer in rep["layers"]:
        layers[layer["encoding"]]["layers"] += 1  # a layer mixed per slice counts under its majority encoding
        mine = cells.get(layer["node"]) or Counter({layer["encoding"]: 1})
        for enc, c in mine.items():  # its weights under the encodings of its slices
            layers[enc]["weights"] += round(layer["weights"] * c / sum(mine.values()))
    tiles = Counter(s.encoding for s in {(s.chip, s.tile): s for s in prog.slices or []}.values())
    encodings = {e: {**layers[e], "tiles": tiles[e]} for e in sorted(layers)}
    return {**{k: v for k, v in rep.items() if k != "layers"}, "plan": prog.plan, "encodings": encodings,
            "link_bytes": _link_bytes(prog), "inputs": {t.name: list(t.shape or ()) for t in prog.inputs}}


def _link_bytes(prog: Program) -> dict[str, int]:
    """anac.core.dataflow.link_bytes, summed from the schedule's transfers when there is a schedule."""
    if not prog.schedule or "timeline" not in prog.schedule:
        return link_bytes(prog)
    moved = [t for t in prog.schedule["timeline"] if t["kind"] == "transfer"]
    host = sum(t["bytes"] for t in moved if "host" in (t["src"], t["dst"]))
    total = sum(t["bytes"] for t in moved)
    return {"chip_to_chip": total - host, "host_links": host, "total": total}
