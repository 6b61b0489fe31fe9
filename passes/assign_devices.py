"""assign_devices: choose each layer's encoding (devices per weight) and its conductance mapping.

Options: ``encoding`` is one encoding for every layer ("2-PCM"), or per layer
with an optional default ("4-PCM,fc0=2-PCM"; a mapping in the API); layers
not named keep an encoding set earlier (prune_inputs' "auto") or take the
hardware's default. ``scale`` is "column" (each output column's weights mapped
to the full conductance range, undone digitally with the chip's per-column
affine correction; the default) or "tile" (one conductance scale per slice);
``clip_sigma`` clips weights beyond that many standard deviations.

With a budget (``chips``, ``tiles`` or ``pcm_per_weight`` as an average), the
layers not fixed by ``encoding`` get the encodings that minimise the sum of
squared per-layer sensitivities (``sensitivity``, measured by
backends/estimates.py) subject to the budget: a multiple-choice knapsack
solved exactly by OR-tools CP-SAT. The choice is per slice column: each
block of a tile's columns of a layer (its slices side by side, each
programmed on tiles of its own) takes its own encoding, so a layer can be
part 4-PCM, part 2-PCM and spare tiles are not left idle when a whole layer
would not fit; a block's error counts as its share of the layer's weights
times the layer's squared sensitivity. Tiles are counted as the packer
places them, ceil(devices of an encoding / devices per tile) per encoding.
The blocks of a mixed layer are reported in ``slice_encodings`` (read by
split_matrices), the layer's ``encodings`` entry is its majority encoding.
``sensitivity`` is a table, or a function of the program that measures it
(anac.api passes one): it is called only when a budget leaves layers to
choose, on the program as this pass sees it (pruned). The choice needs only
the spec's capacities, so it is made once, before placement.
``error_tolerance`` says how precise the table is: choices whose summed
squared error is within that fraction of the least are taken as equal, and
among them the one with the fewest devices wins (a second CP-SAT solve), so
noise in a measured table does not decide between layers but what the
mapping costs does (anac.api sets it to the measurement's precision, a user's
table is exact by default).

It runs before split_matrices because an encoding sets a tile's weight grid.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from anac.core.errors import AnacError, CapacityError
from anac.core.hardware import HardwareSpec
from anac.core.program import Program

SCALES = ("tile", "column")
Sensitivity = Mapping[str, Mapping[str, float]]  # {layer: {encoding: relative output error}}
_ERROR_SCALE = 1e9  # CP-SAT works on integers: squared relative errors in units of 1e-9


@dataclass(frozen=True)
class AssignDevices:
    """Choose 2-PCM or 4-PCM (or the chip's encodings) per layer, under a device budget when one is given."""

    name: ClassVar[str] = "assign_devices"
    requires: ClassVar[tuple[str, ...]] = ("partition",)
    produces: ClassVar[tuple[str, ...]] = ("encodings",)
    encoding: str | Mapping[str, str] | None = None
    scale: str = "column"
    clip_sigma: float | None = None
    chips: int | None = None
    tiles: int | None = None
    pcm_per_weight: float | None = None
    sensitivity: Sensitivity | Callable[[Program], Sensitivity] | None = None
    error_tolerance: float = 0.0
    time_limit_s: float = 10.0
    seed: int = 0

    def run(self, prog: Program) -> None:
        hw = prog.hardware
        if self.scale not in SCALES:
            raise AnacError(f"unknown conductance scale '{self.scale}'; choose one of {', '.join(SCALES)}")
        if self.clip_sigma is not None and not self.clip_sigma > 0:
            raise AnacError(f"clip_sigma must be positive, got {self.clip_sigma}")
        default, per_layer = parse_encodings(self.encoding)
        for enc in {default or hw.default_encoding, *per_layer.values()}:
            hw.encoding(enc)  # raises with the known names
        mvms = prog.mvms or {}
        unknown = sorted(set(per_layer) - set(mvms))
        if unknown:
            raise AnacError(f"--encoding names layer(s) {', '.join(unknown)} that are not crossbar layers; "
                            f"the crossbar layers are: {', '.join(mvms) or '(none)'}")
        chosen: dict[str, str] = {}
        for mvm in mvms.values():
            first = prog.matrices[mvm.matrices[0]]  # type: ignore[index]
            chosen[mvm.node] = per_layer.get(mvm.node) or first.encoding or default or hw.default_encoding
        info: dict[str, Any] = {"status": "fixed"}
        per_block: dict[str, list[str]] = {}
        sens = None if callable(self.sensitivity) else self.sensitivity
        if self._budgeted():
            free = [n for n in mvms if n not in per_layer]
            if free and callable(self.sensitivity):
                sens = self.sensitivity(prog)
            chosen, per_block, info = self._solve(prog, chosen, free, sens)
        for mvm in mvms.values():
            for mid in mvm.matrices:
                m = prog.matrices[mid]  # type: ignore[index]
                m.encoding = chosen[mvm.node]
                # Packed groups (block-diagonal) keep a scale per column, i.e. per group, as each group had
                # in a slice of its own: one scale per slice would program the groups with small kernels
                # far below g_max, into the programming-noise floor.
                m.per_column = self.scale == "column" or bool(mvm.params.get("block"))
                m.clip_sigma = self.clip_sigma
        devices = total = 0
        sq_error = 0.0
        for n in mvms:
            encs = per_block.get(n) or [chosen[n]] * len(column_blocks(prog, n))
            layer_w = _weights(prog, n)
            for (_, _, _, w), e in zip(column_blocks(prog, n), encs, strict=True):
                devices += w * hw.encoding(e).devices_per_weight
                total += w
                if sens is not None and n in sens:
                    sq_error += w / layer_w * sens[n][e] ** 2
        info.update({"encodings": chosen, "pcm_per_weight": round(devices / total, 4) if total else 0.0})
        if per_block:
            info["slice_encodings"] = {mid: [e for (m, _, _, _), e in zip(column_blocks(prog, n), encs, strict=True)
                                             if m == mid]
                                       for n, encs in per_block.items() for mid in mvms[n].matrices}
            info["mixed_layers"] = {n: {e: encs.count(e) for e in sorted(set(encs))} for n, encs in per_block.items()}
        if sens is not None:
            info["estimated_error"] = round(sq_error ** 0.5, 6)
            info["sensitivity"] = {n: {e: round(v, 6) for e, v in s.items()} for n, s in sens.items()}
        prog.assignment = info

    def _budgeted(self) -> bool:
        return any(v is not None for v in (self.chips, self.tiles, self.pcm_per_weight))

    def _tile_budget(self, hw: HardwareSpec) -> int | None:
        return tile_budget(hw, self.chips, self.tiles)

    def _solve(self, prog: Program, chosen: dict[str, str], free: list[str],
               sens: Sensitivity | None) -> tuple[dict[str, str], dict[str, list[str]], dict[str, Any]]:
        from ortools.sat.python import cp_model

        hw = prog.hardware
        encs = [e.name for e in hw.encodings]
        missing = [n for n in free if sens is None or n not in sens or any(e not in sens[n] for e in encs)]
        if missing:
            raise AnacError(f"a budgeted encoding choice needs each layer's measured sensitivity; none for "
                            f"{', '.join(missing[:5])} (compile through anac.api, which measures them)")
        weights = {n: _weights(prog, n) for n in chosen}
        per_tile = hw.devices_per_tile
        tile_budget = self._tile_budget(hw)
        # The smallest mapping: every free layer in the encoding with the fewest devices per weight.
        cheapest = min(hw.encodings, key=lambda e: e.devices_per_weight)
        floor = {e: 0 for e in encs}
        for n, e in chosen.items():
            enc = cheapest.name if n in free else e
            floor[enc] += weights[n] * hw.encoding(enc).devices_per_weight
        min_tiles = sum(-(-d // per_tile) for d in floor.values())
        total_w = sum(weights.values())
        budget_text = self._budget_text(hw)
        if tile_budget is not None and min_tiles > tile_budget:
            raise CapacityError(f"the model does not fit {budget_text}: its smallest mapping (every free layer "
                                f"{cheapest.name}) needs {min_tiles} tiles; the budget gives {tile_budget} tiles")
        if self.pcm_per_weight is not None and sum(floor.values()) > self.pcm_per_weight * total_w:
            raise CapacityError(f"the model does not fit {budget_text}: its smallest mapping needs "
                                f"{sum(floor.values()) / total_w:.3f} PCM per weight")
        m = cp_model.CpModel()
        blocks = {n: column_blocks(prog, n) for n in free}
        # Blocks of a layer with as many weights are interchangeable: the variables are how many of each such
        # class take each encoding (no symmetric solutions for CP-SAT to wade through).
        classes = {n: Counter(blk[3] for blk in blocks[n]) for n in free}
        x = {(n, w, e): m.new_int_var(0, count, f"x_{i}_{w}_{e}") for i, n in enumerate(free)
             for w, count in classes[n].items() for e in encs}
        for n in free:
            for w, count in classes[n].items():
                m.add(sum(x[n, w, e] for e in encs) == count)
        dev = {e: sum(w * hw.encoding(e).devices_per_weight * x[n, w, e] for n in free for w in classes[n])
               + sum(weights[n] * hw.encoding(e).devices_per_weight for n, c in chosen.items()
                     if n not in free and c == e) for e in encs}
        if tile_budget is not None:
            t = {e: m.new_int_var(0, tile_budget, f"tiles_{e}") for e in encs}
            for e in encs:
                m.add(t[e] * per_tile >= dev[e])
            m.add(sum(t.values()) <= tile_budget)
        if self.pcm_per_weight is not None:
            m.add(1000 * sum(dev.values()) <= round(1000 * self.pcm_per_weight) * total_w)
        sens = sens or {}
        error = sum(round(_ERROR_SCALE * w / weights[n] * sens[n][e] ** 2) * x[n, w, e]
                    for n in free for w in classes[n] for e in encs)
        m.minimize(error)
        solver = cp_model.CpSolver()
        solver.parameters.max_time_in_seconds = self.time_limit_s
        solver.parameters.random_seed = self.seed
        solver.parameters.num_workers = 1  # one worker: the same answer on every run
        t0 = time.perf_counter()
        status = solver.solve(m)
        if status == cp_model.INFEASIBLE:
            raise CapacityError(f"no choice of encodings fits {budget_text}")
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            raise AnacError(f"CP-SAT found no encoding choice within {self.time_limit_s} s for {budget_text}; "
                            f"raise the time limit")
        obj, bound = solver.objective_value, solver.best_objective_bound
        info = {"status": "optimal" if status == cp_model.OPTIMAL else "feasible",
                "gap": 0.0 if status == cp_model.OPTIMAL or obj == 0 else round((obj - bound) / obj, 6),
                "budget": budget_text, "min_tiles": min_tiles}
        values = {k: solver.value(v) for k, v in x.items()}
        if self.error_tolerance > 0 and free:
            # Within the table's precision every choice is as good: take the one with the fewest devices.
            m.add(error <= int(obj * (1 + self.error_tolerance)))
            m.minimize(sum(dev.values()))
            for k, v in values.items():
                m.add_hint(x[k], v)
            if solver.solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                values = {k: solver.value(v) for k, v in x.items()}
            info["error_tolerance"] = self.error_tolerance
        info["solve_time_s"] = round(time.perf_counter() - t0, 3)
        out = dict(chosen)
        per_block: dict[str, list[str]] = {}
        for n in free:
            # A class's blocks take its encodings in the spec's order of encodings, in column order.
            left = {w: [e for e in encs for _ in range(values[n, w, e])] for w in classes[n]}
            got = [left[blk[3]].pop(0) for blk in blocks[n]]
            share = {e: sum(blk[3] for blk, g in zip(blocks[n], got, strict=True) if g == e) for e in set(got)}
            out[n] = max(sorted(share), key=lambda e: share[e])
            if len(share) > 1:
                per_block[n] = got
        return out, per_block, info

    def _budget_text(self, hw: HardwareSpec) -> str:
        parts = []
        if self.chips is not None:
            parts.append(f"{self.chips} chips ({self.chips * hw.tiles_per_chip} tiles)")
        if self.tiles is not None:
            parts.append(f"{self.tiles} tiles")
        if self.pcm_per_weight is not None:
            parts.append(f"{self.pcm_per_weight} PCM per weight")
        return "a budget of " + " and ".join(parts)


def tile_budget(hw: HardwareSpec, chips: int | None, tiles: int | None) -> int | None:
    """The tighter of a chip budget (in tiles) and a tile budget; None when neither is set."""
    budgets = [b for b in (tiles, None if chips is None else chips * hw.tiles_per_chip) if b is not None]
    return min(budgets) if budgets else None


def column_blocks(prog: Program, node: str) -> list[tuple[str, int, int, int]]:
    """A layer's blocks of one tile's columns, each (matrix, first column, last column + 1, weights): the unit
    of the encoding choice (split_matrices cuts a mixed matrix at these columns)."""
    cols = prog.hardware.tile_cols
    out = []
    for mid in prog.mvms[node].matrices:  # type: ignore[index]
        k, n = prog.matrices[mid].shape  # type: ignore[index]
        out += [(mid, c, min(n, c + cols), k * (min(n, c + cols) - c)) for c in range(0, n, cols)]
    return out


def _weights(prog: Program, node: str) -> int:
    return sum(prog.matrices[m].weights.size for m in prog.mvms[node].matrices)  # type: ignore[index]


def parse_encodings(spec: str | Mapping[str, str] | None) -> tuple[str | None, dict[str, str]]:
    """"4-PCM,fc0=2-PCM" -> ("4-PCM", {"fc0": "2-PCM"}); a mapping may use key "*" for the default."""
    if spec is None:
        return None, {}
    if isinstance(spec, Mapping):
        items = dict(spec)
        return items.pop("*", None), items
    default, per_layer = None, {}
    for part in (p.strip() for p in spec.split(",") if p.strip()):
        layer, sep, enc = part.rpartition("=")
        if not sep:
            if default is not None:
                raise AnacError(f"--encoding gives two defaults ('{default}' and '{part}'); name layers as LAYER=ENC")
            default = part
        elif not layer:
            raise AnacError(f"--encoding item '{part}' has no layer name before '='")
        else:
            per_layer[layer.strip()] = enc.strip()
    return default, per_layer
