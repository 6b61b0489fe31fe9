"""replicate: copy the busiest layers' weights onto spare tiles so that the copies share the products.

On an analog chip the layers work as a pipeline and the slowest stage sets
the throughput. A crossbar layer runs ``vectors`` matrix-vector products per
inference (conv output positions x batch, recurrent steps x batch, tokens),
each ``mvm_time_ns`` on its tiles; k copies of its weights split them, each
running ceil(vectors / k). A copy is an ordinary set of slices (``copy`` > 0)
with the same rows, columns and encoding as the original: place packs it,
the maps draw it, the simulator sends each copy its share of the products.

A layer is either packed (as without replicate: its partial slices share
tiles, and so time, with other layers' pieces) or dedicated with k >= 1
copies: each of its slices on a tile of its own (``own_tile``), so a copy runs
its ceil(vectors / k) products undisturbed, at the cost of k x its slices in
tiles. ``replicate`` is "auto" or "LAYER=K,..." (the named layers dedicated
with K copies, the others packed). Auto: OR-tools CP-SAT chooses per layer
(packed, or k copies) to minimise the largest stage time, then the tiles
for that time, under the tile budget: the tighter of the chips/tiles
options and the spec's ``max_chips``, else the tiles of the chips the model
already occupies. Stage times: a dedicated layer ceil(vectors / k) x
mvm_time_ns; a packed layer vectors x mvm_time_ns per partial slice (its
pieces may share a tile's rows or columns, and then time slots); the
packed tiles together the sum over the packed layers (the packer mixes
their pieces, so assume they share a tile); the host floor (host stages,
recurrent gates, digital partial sums), which copies do not shrink.

``objective`` says what spare tiles are for when the encodings were chosen
under a budget (with measured sensitivities): then one CP-SAT model chooses
the encodings of every free layer's column blocks and every layer's copies
under the one tile budget (a 2-PCM block takes half the rows' tiles of a
4-PCM one, in every copy). "accuracy": the least estimated error, then the
fastest pipeline; "throughput": the fastest, then the least error;
"balanced": the least sum of error and stage time, each relative to its
best. The packed-partial counts of the joint model are those of the
encodings assign_devices chose. Without a budget, copies only.
Packed tiles are counted as the packer places them, ceil(devices of an
encoding / devices per tile) per encoding. Link time depends on the
placement: the estimate after placement reports it.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from anac.core.dataflow import tasks
from anac.core.errors import AnacError, CapacityError
from anac.core.program import Program, Slice
from anac.passes.assign_devices import column_blocks, parse_encodings
from anac.passes.split_matrices import SplitMatrices

OBJECTIVES = ("accuracy", "throughput", "balanced")


@dataclass(frozen=True)
class Replicate:
    """Add copies of crossbar layers (all their slices) so that the slowest pipeline stage is as fast as possible."""

    name: ClassVar[str] = "replicate"
    requires: ClassVar[tuple[str, ...]] = ("slices",)
    produces: ClassVar[tuple[str, ...]] = ("copies",)
    replicate: str | None = None
    objective: str = "accuracy"
    chips: int | None = None
    tiles: int | None = None
    time_limit_s: float = 10.0
    seed: int = 0

    def run(self, prog: Program) -> None:
        if self.objective not in OBJECTIVES:
            raise AnacError(f"unknown objective '{self.objective}'; choose one of {', '.join(OBJECTIVES)}")
        spec = (self.replicate or ("auto" if self.objective != "accuracy" else "")).strip()
        if not spec:
            return
        layers = _layers(prog)
        budget, budget_text = self._budget(prog, layers)
        packed = {n: 0 for n in layers}
        base = _tiles(prog, packed, layers)
        free = _free_layers(prog)
        if spec == "auto" and free:
            plan, encodings, info = self._solve_joint(prog, layers, free, budget)
            _set_encodings(prog, encodings)
            prog.assignment["estimated_error"] = info["estimated_error"]  # type: ignore[index]
            layers = _layers(prog)
        elif spec == "auto":
            plan, info = self._solve(prog, layers, budget, base)
        else:
            plan = {**packed, **parse_copies(spec, layers)}
            info = {"status": "fixed"}
        need = _tiles(prog, plan, layers)
        if need > budget:
            raise CapacityError(
                f"--replicate {spec} needs {need} tiles ({need - base} more than the model's {base} without "
                f"copies); {budget_text} gives {budget}")
        by_matrix = {m: plan[n] for n, lay in layers.items() for m in lay["matrices"]}
        slices = prog.slices or []
        added: list[Slice] = []
        for s in slices:
            if by_matrix[s.matrix] >= 1:
                s.own_tile = True
            for c in range(1, by_matrix[s.matrix]):
                added.append(replace(s, id=len(slices) + len(added), copy=c))
        prog.slices = slices + added
        unit = prog.hardware.mvm_time_ns
        prog.replication = {**info, "copies": {n: k for n, k in plan.items() if k > 1},
                            "own_tiles": [n for n, k in plan.items() if k >= 1],
                            "tiles": need, "tiles_without_copies": base, "budget_tiles": budget,
                            "budget": budget_text, "estimated_stage_ns": round(_stage_ns(plan, layers, unit), 3),
                            "host_floor_ns": round(_host_floor_ns(prog), 3), "objective": self.objective}

    def _budget(self, prog: Program, layers: dict[str, dict[str, Any]]) -> tuple[int, str]:
        hw = prog.hardware
        given = [(b, t) for b, t in ((self.tiles, f"--tiles {self.tiles}"),
                                     (None if self.chips is None else self.chips * hw.tiles_per_chip,
                                      f"--chips {self.chips}"),
                                     (None if hw.max_chips is None else hw.max_chips * hw.tiles_per_chip,
                                      f"a budget of {hw.max_chips} chips")) if b is not None]
        if given:
            b, text = min(given)
            return b, f"{text} ({b} tiles)"
        chips = max(1, -(-_tiles(prog, {n: 0 for n in layers}, layers) // hw.tiles_per_chip))
        return chips * hw.tiles_per_chip, f"the {chips} chip(s) the model occupies ({chips * hw.tiles_per_chip} tiles)"

    def _solve(self, prog: Program, layers: dict[str, dict[str, Any]], budget: int,
               base: int) -> tuple[dict[str, int], dict[str, Any]]:
        """CP-SAT: per layer packed (0) or k dedicated copies; minimise the largest stage time, then the tiles."""
        from ortools.sat.python import cp_model

        hw = prog.hardware
        packed = {n: 0 for n in layers}
        if base > budget:
            return packed, {"status": "no spare tiles"}
        unit = hw.mvm_time_ns
        floor = int(math.ceil(_host_floor_ns(prog)))
        horizon = max(floor, int(math.ceil(_stage_ns(packed, layers, unit)))) + 1
        m = cp_model.CpModel()
        worst = m.new_int_var(floor, horizon, "max_stage_ns")
        choice: dict[str, list[tuple[int, Any]]] = {}
        packed_devices: dict[str, list[Any]] = defaultdict(list)
        dedicated_tiles, pool = [], []
        for i, (n, lay) in enumerate(layers.items()):
            v = lay["vectors"]
            k_max = max(1, min(v, budget // lay["slices"]))
            ks = sorted({math.ceil(v / q) for q in range(1, v + 1)} & set(range(1, k_max + 1)))
            bools = [(k, m.new_bool_var(f"l{i}k{k}")) for k in [0, *ks]]
            m.add_exactly_one(b for _, b in bools)
            m.add(worst >= sum(_time(v, k, lay["partial"], unit) * b for k, b in bools))
            choice[n] = bools
            for enc, d in lay["devices"].items():
                packed_devices[enc].append(d * bools[0][1])
            dedicated_tiles.extend(k * lay["slices"] * b for k, b in bools[1:])
            if lay["partial"]:
                pool.append(_time(v, 0, lay["partial"], unit) * bools[0][1])
        m.add(worst >= sum(pool))
        tiles = list(dedicated_tiles)
        for enc, terms in packed_devices.items():
            t = m.new_int_var(0, budget, f"tiles_{enc}")
            m.add(t * hw.devices_per_tile >= sum(terms))
            tiles.append(t)
        m.add(sum(tiles) <= budget)
        m.minimize(worst * (budget + 1) + sum(tiles))
        for bools in choice.values():
            for k, b in bools:
                m.add_hint(b, k == 0)
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = self.time_limit_s
        solver.parameters.random_seed = self.seed
        solver.parameters.num_workers = 1
        t0 = time.perf_counter()
        status = solver.solve(m)
        elapsed = round(time.perf_counter() - t0, 3)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return packed, {"status": "no solution found (no copies)", "solve_time_s": elapsed}
        plan = {n: next(k for k, b in bools if solver.value(b)) for n, bools in choice.items()}
        if status == cp_model.OPTIMAL:
            text = "optimal"
        else:
            obj, bound = solver.objective_value, solver.best_objective_bound
            text = f"feasible (gap {0.0 if obj == 0 else (obj - bound) / obj:.4f})"
        return plan, {"status": text, "solve_time_s": elapsed}


    def _solve_joint(self, prog: Program, layers: dict[str, dict[str, Any]], free: list[str],
                     budget: int) -> tuple[dict[str, int], dict[str, list[str]], dict[str, Any]]:
        """One CP-SAT model for the encodings of the free layers' column blocks and every layer's copies
        under one tile budget; the objective orders the estimated error and the largest stage time."""
        from ortools.sat.python import cp_model

        hw = prog.hardware
        sens = (prog.assignment or {})["sensitivity"]
        encs = [e.name for e in hw.encodings]
        unit = hw.mvm_time_ns
        floor = int(math.ceil(_host_floor_ns(prog)))
        per_tile = hw.devices_per_tile
        m = cp_model.CpModel()
        horizon = max(floor, int(math.ceil(sum(lay["vectors"] * unit for lay in layers.values())))) + 1
        worst = m.new_int_var(floor, horizon, "max_stage_ns")
        error_terms, pool, dedicated = [], [], []
        packed_dev: dict[str, list[Any]] = defaultdict(list)
        x: dict[tuple[str, int, str], Any] = {}
        mode: dict[str, list[tuple[int, Any]]] = {}
        for i, (n, lay) in enumerate(layers.items()):
            v = lay["vectors"]
            if n in free:
                blocks = column_blocks(prog, n)
                total_w = sum(b[3] for b in blocks)
                dev_terms: dict[str, list[Any]] = defaultdict(list)
                slices_terms = []
                s_lo = s_hi = 0
                for b, (mid, _, _, w) in enumerate(blocks):
                    k_rows = prog.matrices[mid].shape[0]  # type: ignore[index]
                    for e in encs:
                        x[n, b, e] = m.new_bool_var(f"x{i}_{b}_{e}")
                        dev_terms[e].append(w * hw.encoding(e).devices_per_weight * x[n, b, e])
                        slices_terms.append(-(-k_rows // hw.weight_grid(e)[0]) * x[n, b, e])
                        error_terms.append(round(1e9 * w / total_w * sens[n][e] ** 2) * x[n, b, e])
                    m.add_exactly_one(x[n, b, e] for e in encs)
                    counts = [-(-k_rows // hw.weight_grid(e)[0]) for e in encs]
                    s_lo, s_hi = s_lo + min(counts), s_hi + max(counts)
                n_slices = m.new_int_var(s_lo, s_hi, f"slices{i}")
                m.add(n_slices == sum(slices_terms))
                dev_max = {e: sum(b[3] for b in blocks) * hw.encoding(e).devices_per_weight for e in encs}
                devices = {e: sum(dev_terms[e]) for e in encs}
            else:
                n_slices = s_lo = s_hi = lay["slices"]
                devices = dev_max = lay["devices"]
            k_max = max(1, min(v, budget // max(1, s_lo)))
            ks = sorted({math.ceil(v / q) for q in range(1, v + 1)} & set(range(1, k_max + 1)))
            bools = [(k, m.new_bool_var(f"m{i}k{k}")) for k in [0, *ks]]
            m.add_exactly_one(b for _, b in bools)
            mode[n] = bools
            p = bools[0][1]
            m.add(worst >= sum(_time(v, k, lay["partial"], unit) * b for k, b in bools))
            if lay["partial"]:
                pool.append(_time(v, 0, lay["partial"], unit) * p)
            for e, d in devices.items():  # devices on packed tiles: the layer's, if packed
                z = m.new_int_var(0, dev_max[e], f"z{i}_{e}")
                m.add(z >= d - dev_max[e] * (1 - p))
                packed_dev[e].append(z)
            for k, b in bools[1:]:  # tiles of dedicated copies: k x the layer's slices, if chosen
                y = m.new_int_var(0, s_hi, f"y{i}_{k}")
                m.add(y >= n_slices - s_hi * (1 - b))
                dedicated.append(k * y)
        m.add(worst >= sum(pool))
        tiles = list(dedicated)
        for e, terms in packed_dev.items():
            t = m.new_int_var(0, budget, f"tiles_{e}")
            m.add(t * per_tile >= sum(terms))
            tiles.append(t)
        used = m.new_int_var(0, budget, "tiles")
        m.add(used == sum(tiles))
        error = m.new_int_var(0, sum(round(1e9 * max(sens[n].values()) ** 2) for n in free) + 1, "error")
        m.add(error == sum(error_terms))
        for bools in mode.values():
            for k, b in bools:
                m.add_hint(b, k == 0)
        statuses = []

        def solve(objective: Any) -> Any:
            m.clear_objective()
            m.minimize(objective)
            solver = cp_model.CpSolver()
            solver.parameters.max_deterministic_time = self.time_limit_s
            solver.parameters.random_seed = self.seed
            solver.parameters.num_workers = 1
            status = solver.solve(m)
            if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                raise CapacityError(f"no choice of encodings and copies fits the budget of {budget} tiles")
            obj, bound = solver.objective_value, solver.best_objective_bound
            statuses.append("optimal" if status == cp_model.OPTIMAL else
                            f"feasible (gap {0.0 if obj == 0 else (obj - bound) / obj:.4f})")
            return solver

        t0 = time.perf_counter()
        if self.objective == "throughput":  # the fastest pipeline, then the most accurate, then the fewest tiles
            best = solve(worst).value(worst)
            m.add(worst <= best)
            solver = solve(error * (budget + 1) + used)
        elif self.objective == "accuracy":  # the most accurate encodings, then the fastest, then the fewest tiles
            best = solve(error).value(error)
            m.add(error <= best)
            solver = solve(worst * (budget + 1) + used)
        else:  # balanced: the sum of error and stage time, each relative to its best
            e_best = max(1, solve(error).value(error))
            t_best = max(1, solve(worst).value(worst))
            solver = solve((error * t_best + worst * e_best) * (budget + 1) + used)
        elapsed = round(time.perf_counter() - t0, 3)
        plan = {n: next(k for k, b in bools if solver.value(b)) for n, bools in mode.items()}
        encodings = {n: [next(e for e in encs if solver.value(x[n, b, e])) for b in range(len(column_blocks(prog, n)))]
                     for n in free}
        return plan, encodings, {"status": statuses[-1], "solves": statuses, "solve_time_s": elapsed,
                                 "estimated_error": round((solver.value(error) / 1e9) ** 0.5, 6)}


def parse_copies(spec: str, layers: Mapping[str, Any], option: str = "--replicate") -> dict[str, int]:
    """"conv1=4,fc=2" -> {layer: copies} for the named layers; unknown layers and counts below 1 are errors
    (naming ``option``)."""
    copies = {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        name, sep, count = part.rpartition("=")
        if not sep or not name:
            raise AnacError(f"{option} '{part}' is not LAYER=COPIES (or 'auto'); for example conv1=4")
        if name not in layers:
            raise AnacError(f"{option} names '{name}', which is not a crossbar layer; the crossbar layers are: "
                            f"{', '.join(layers) or '(none)'}")
        try:
            k = int(count)
        except ValueError:
            raise AnacError(f"{option} {part}: '{count}' is not a whole number of copies") from None
        if k < 1:
            raise AnacError(f"{option} {part}: a layer needs at least 1 copy (itself), got {k}")
        copies[name] = k
    return copies


def _free_layers(prog: Program) -> list[str]:
    """Layers whose encodings a budgeted choice made (with measured sensitivities), so the joint choice may
    change them; not those fixed by the encoding option."""
    a = prog.assignment or {}
    if "sensitivity" not in a or a.get("status") == "fixed":
        return []
    _, per_layer = parse_encodings(prog.options.get("encoding"))
    encs = {e.name for e in prog.hardware.encodings}
    return [n for n in prog.mvms or {} if n not in per_layer and encs <= set(a["sensitivity"].get(n, {}))]


def _set_encodings(prog: Program, encodings: dict[str, list[str]]) -> None:
    """Apply the joint choice: each free layer's column-block encodings, the assignment's report, new slices."""
    hw = prog.hardware
    a = prog.assignment
    assert a is not None
    mixed = {k: v for k, v in a.get("slice_encodings", {}).items()
             if prog.matrices[k].node not in encodings}  # type: ignore[index]
    for n, encs in encodings.items():
        blocks = column_blocks(prog, n)
        share = {e: sum(b[3] for b, g in zip(blocks, encs, strict=True) if g == e) for e in set(encs)}
        a["encodings"][n] = max(sorted(share), key=lambda e: share[e])
        for mid in prog.mvms[n].matrices:  # type: ignore[index]
            prog.matrices[mid].encoding = a["encodings"][n]  # type: ignore[index]
            if len(share) > 1:
                mixed[mid] = [g for b, g in zip(blocks, encs, strict=True) if b[0] == mid]
    a["slice_encodings"] = mixed
    a["mixed_layers"] = {n: {e: encs.count(e) for e in sorted(set(encs))} for n, encs in encodings.items()
                         if len(set(encs)) > 1}
    SplitMatrices(prog.options.get("strategy") or "fill").run(prog)
    devices = sum(s.n_rows * s.n_cols * hw.encoding(s.encoding).devices_per_weight for s in prog.slices or [])
    total = sum(s.n_rows * s.n_cols for s in prog.slices or [])
    a["pcm_per_weight"] = round(devices / total, 4) if total else 0.0
    a["chosen_with_copies"] = True


def _layers(prog: Program) -> dict[str, dict[str, Any]]:
    """Per crossbar layer: matrices, vectors per inference, devices per encoding and slices of one copy, and
    how many of those are smaller than a tile's grid (packed, they share tiles and time)."""
    hw = prog.hardware
    devices: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    count: dict[str, int] = defaultdict(int)
    partial: dict[str, int] = defaultdict(int)
    for s in prog.slices or []:
        if s.copy == 0:
            devices[s.matrix][s.encoding] += s.n_rows * s.n_cols * hw.encoding(s.encoding).devices_per_weight
            count[s.matrix] += 1
            partial[s.matrix] += (s.n_rows, s.n_cols) != hw.weight_grid(s.encoding)
    out = {}
    for node, mvm in (prog.mvms or {}).items():
        by_enc: dict[str, int] = defaultdict(int)
        for mid in mvm.matrices:
            for enc, d in devices[mid].items():
                by_enc[enc] += d
        out[node] = {"matrices": list(mvm.matrices),
                     "vectors": max(1, mvm.params.get("traffic", {}).get("vectors", 1)),
                     "devices": dict(by_enc),
                     "slices": sum(count[mid] for mid in mvm.matrices),
                     "partial": sum(partial[mid] for mid in mvm.matrices)}
    return out


def _tiles(prog: Program, plan: dict[str, int], layers: dict[str, dict[str, Any]]) -> int:
    """Tiles with this plan: packed layers ceil(devices / devices per tile) per encoding, dedicated ones
    copies x slices."""
    by_enc: dict[str, int] = defaultdict(int)
    own = 0
    for n, lay in layers.items():
        if plan[n] == 0:
            for enc, d in lay["devices"].items():
                by_enc[enc] += d
        else:
            own += plan[n] * lay["slices"]
    return own + sum(-(-d // prog.hardware.devices_per_tile) for d in by_enc.values())


def _time(vectors: int, k: int, partial: int, unit: float) -> int:
    """A layer's stage time (ns): dedicated with k copies ceil(vectors / k) steps; packed (k = 0) vectors steps
    per partial slice (on shared tiles a layer's pieces that share rows or columns run one after another)."""
    steps = math.ceil(vectors / k) if k else vectors * max(1, partial)
    return int(math.ceil(steps * unit))


def _stage_ns(plan: dict[str, int], layers: dict[str, dict[str, Any]], unit: float) -> float:
    """The model's largest stage time (without the host floor): see the module docstring."""
    own = [_time(lay["vectors"], plan[n], lay["partial"], unit) for n, lay in layers.items()]
    pool = sum(_time(lay["vectors"], 0, lay["partial"], unit) for n, lay in layers.items()
               if plan[n] == 0 and lay["partial"])
    return max([pool, *own], default=0)


def _host_floor_ns(prog: Program) -> float:
    """Host time per inference (host stages, recurrent gates, digital partial sums): copies do not shrink it.

    The dataflow needs a placement; the host's tasks do not depend on it, so the
    slices stand on one chip for the count and are put back unplaced.
    """
    slices = prog.slices or []
    saved = [(s.chip, s.tile) for s in slices]
    chips = prog.chips_used
    for s in slices:
        s.chip, s.tile = 0, s.id
    prog.chips_used = 1
    try:
        return sum(t.duration_ns for t in tasks(prog) if "host" in t.resources)
    finally:
        for s, (c, t) in zip(slices, saved, strict=True):
            s.chip, s.tile = c, t
        prog.chips_used = chips
