"""average: program the most noise-sensitive layers K times and take the digital mean of the copies' outputs.

Spare tiles buy throughput (replicate: copies that split a layer's products)
or accuracy (this pass). An averaged copy of a layer computes every product
of the layer, on its own devices; the layer's output is the digital mean of
its K copies' converted outputs. Programming and read noise of the copies are
independent, so the layer's device error falls ~1/sqrt(K) (its variance
1/K); the pipeline's time is unchanged (each copy runs all the products in
parallel, on tiles of its own), its MACs and energy grow K x for the layer.
Copy 0 stays where the mapping put it; copies 1..K-1 are ordinary slices
(``copy`` > 0, ``own_tile``: each slice of a copy on a tile of its own, so
no copy time-shares a tile with the layer or another one), and the layer's
matrices are marked ``copy_mode = "average"`` (program.json keeps the mark;
older programs load as "split").

``average`` is "auto" or "LAYER=K,...". It is a separate option from
``replicate``, not a mode of it, because the two answer different questions
on the same spare tiles and compose: replicate (run first) dedicates tiles to
the pipeline's slowest stages, average then spends what is left of the
budget on the layers whose noise matters most; a layer's copies either split
or average (naming a replicated layer is an error). The budget is the tighter
of the chips/tiles options and the spec's ``max_chips``, else the tiles of
the chips the model already occupies (after replicate).

Auto scores layers by what their device noise costs at the model's outputs
(``output_error``, which anac.api measures: backends/estimates.py
output_sensitivity, the relative error of the outputs of an ideal run with
only that layer's weights perturbed to its own measured sensitivity), else
(no measurement: a plan without weights, a model too large to measure) by
the sensitivity assign_devices uses (a layer's own relative output error
under device noise, in its encoding). Independent layer errors add in
variance: the model's estimated error is sqrt(sum of squared scores), and K
copies divide a layer's squared score by K. Greedy by error removed per tile:
each step gives one more copy (its slices in tiles) to the layer with the
largest s^2 (1/k - 1/(k+1)) / slices that still fits the budget; the gains of
a layer shrink with k (a concave, separable objective), so the greedy order
is the marginal-value order and near-optimal when copies cost few tiles.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from anac.core.errors import AnacError, CapacityError
from anac.core.program import Program, Slice, copy_counts
from anac.passes.assign_devices import Sensitivity, tile_budget
from anac.passes.replicate import parse_copies


@dataclass(frozen=True)
class Average:
    """Add averaged copies of crossbar layers on spare tiles (the output: the mean of the copies')."""

    name: ClassVar[str] = "average"
    requires: ClassVar[tuple[str, ...]] = ("slices",)
    produces: ClassVar[tuple[str, ...]] = ("averaged",)
    average: str | None = None
    chips: int | None = None
    tiles: int | None = None
    sensitivity: Sensitivity | Callable[[Program], Sensitivity] | None = None
    # auto: (program, {candidate layer: its sensitivity}) -> {layer: its error at the model's outputs}, or None
    output_error: Callable[[Program, Mapping[str, float]], Mapping[str, float] | None] | None = None

    def run(self, prog: Program) -> None:
        spec = (self.average or "").strip()
        if not spec:
            return
        slices = prog.slices or []
        per_layer = _layer_slices(prog)
        budget, budget_text = self._budget(prog)
        base = current_tiles(prog)
        split = copy_counts(prog)
        replicated = {n for n in per_layer if any(split.get(m, 1) > 1 for m in prog.mvms[n].matrices)}  # type: ignore[index]
        sens = self._sensitivities(prog, spec == "auto")
        score, scored_by = sens, "layer"
        if spec == "auto":
            candidates = [n for n in per_layer if n not in replicated and per_layer[n] <= budget - base]
            if candidates and self.output_error is not None and prog.plan is None:
                measured = self.output_error(prog, {n: sens[n] for n in candidates})  # type: ignore[index]
                if measured is not None:
                    score, scored_by = {n: float(measured[n]) for n in candidates}, "output"
            plan = choose(per_layer, score, candidates, budget - base)  # type: ignore[arg-type]
        else:
            plan = parse_copies(spec, {n: {} for n in per_layer}, option="--average")
            both = sorted(n for n, k in plan.items() if k > 1 and n in replicated)
            if both:
                raise AnacError(f"--average {spec}: {', '.join(both)} already has copies that split its products "
                                f"(--replicate); a layer's copies either split its products or are averaged")
        extra = {n: (k - 1) * per_layer[n] for n, k in plan.items() if k > 1}
        need = base + sum(extra.values())
        if need > budget:
            raise CapacityError(
                f"--average {spec} needs {need} tiles ({sum(extra.values())} more than the model's {base}: "
                + ", ".join(f"{n} {plan[n] - 1} extra cop{'y' if plan[n] == 2 else 'ies'} x {per_layer[n]} "
                            f"tile(s)" for n in extra)
                + f"); {budget_text} gives {budget}")
        added: list[Slice] = []
        for n in extra:
            for mid in prog.mvms[n].matrices:  # type: ignore[index]
                prog.matrices[mid].copy_mode = "average"  # type: ignore[index]
        for s in slices:
            n = prog.matrices[s.matrix].node  # type: ignore[index]
            if s.copy == 0 and n in extra:
                added += [replace(s, id=len(slices) + len(added) + c - 1, copy=c, own_tile=True)
                          for c in range(1, plan[n])]
        prog.slices = slices + added
        copies = {n: k for n, k in plan.items() if k > 1}
        info: dict[str, Any] = {"mode": "auto" if spec == "auto" else "fixed", "copies": copies, "tiles": need,
                                "tiles_without_copies": base, "budget_tiles": budget, "budget": budget_text}
        if sens is not None:
            info["estimated_error"] = {"without": round(estimated_error(sens, {}), 6),
                                       "with": round(estimated_error(sens, copies), 6)}
        if spec == "auto":
            info["score"] = scored_by
        if scored_by == "output":  # of the measured layers, at the model's outputs
            info["estimated_output_error"] = {"without": round(estimated_error(score, {}), 6),  # type: ignore[arg-type]
                                              "with": round(estimated_error(score, copies), 6)}  # type: ignore[arg-type]
        prog.averaging = info

    def _budget(self, prog: Program) -> tuple[int, str]:
        hw = prog.hardware
        given = [(b, t) for b, t in ((tile_budget(hw, self.chips, self.tiles), _option_text(self.chips, self.tiles)),
                                     (None if hw.max_chips is None else hw.max_chips * hw.tiles_per_chip,
                                      f"a budget of {hw.max_chips} chips")) if b is not None]
        if given:
            b, text = min(given)
            return b, f"{text} ({b} tiles)"
        chips = max(1, -(-current_tiles(prog) // hw.tiles_per_chip))
        return chips * hw.tiles_per_chip, f"the {chips} chip(s) the model occupies ({chips * hw.tiles_per_chip} tiles)"

    def _sensitivities(self, prog: Program, needed: bool) -> dict[str, float] | None:
        """Each layer's sensitivity in its encoding: assign_devices' table, else the ``sensitivity`` option's."""
        table: Any = (prog.assignment or {}).get("sensitivity")
        if table is None and self.sensitivity is not None:
            table = self.sensitivity(prog) if callable(self.sensitivity) else self.sensitivity
        if table is None:
            if needed:
                raise AnacError("--average auto chooses layers by their measured sensitivity to device noise; "
                                "compile through anac.api or `anac compile` (they measure it), or name the layers: "
                                "--average LAYER=K,...")
            return None
        encodings = (prog.assignment or {}).get("encodings", {})
        out = {}
        for n, mvm in (prog.mvms or {}).items():
            enc = encodings.get(n) or prog.matrices[mvm.matrices[0]].encoding  # type: ignore[index]
            if n not in table or enc not in table[n]:
                if needed:
                    raise AnacError(f"--average auto: no measured sensitivity for layer {n} in encoding {enc}")
                return None
            out[n] = float(table[n][enc])
        return out


def choose(slices: Mapping[str, int], sens: Mapping[str, float], candidates: list[str], spare: int) -> dict[str, int]:
    """Copies per layer (1: none) by greedy marginal error removed per tile, within ``spare`` tiles; a copy of
    layer n costs ``slices[n]`` tiles and turns its squared sensitivity s^2 / k into s^2 / (k + 1)."""
    k = {n: 1 for n in slices}
    while True:
        best, gain = None, 0.0
        for n in candidates:
            cost = slices[n]
            if 0 < cost <= spare:
                g = sens[n] ** 2 * (1 / k[n] - 1 / (k[n] + 1)) / cost
                if g > gain:
                    best, gain = n, g
        if best is None:
            return k
        k[best] += 1
        spare -= slices[best]


def estimated_error(sens: Mapping[str, float], copies: Mapping[str, int]) -> float:
    """sqrt(sum over layers of s^2 / K): independent layer errors add in variance; K averaged copies divide one."""
    return float(sum(s ** 2 / copies.get(n, 1) for n, s in sens.items()) ** 0.5)


def current_tiles(prog: Program) -> int:
    """Tiles of the slices as the packer places them: one per ``own_tile`` slice, and ceil(devices / devices
    per tile) per encoding for the others."""
    hw = prog.hardware
    own = 0
    devices: dict[str, int] = defaultdict(int)
    for s in prog.slices or []:
        if s.own_tile:
            own += 1
        else:
            devices[s.encoding] += s.n_rows * s.n_cols * hw.encoding(s.encoding).devices_per_weight
    return own + sum(-(-d // hw.devices_per_tile) for d in devices.values())


def _layer_slices(prog: Program) -> dict[str, int]:
    """Slices of one copy of each crossbar layer (the tiles one averaged copy takes)."""
    count: dict[str, int] = defaultdict(int)
    for s in prog.slices or []:
        if s.copy == 0:
            count[prog.matrices[s.matrix].node] += 1  # type: ignore[index]
    return {n: count[n] for n in prog.mvms or {}}


def _option_text(chips: int | None, tiles: int | None) -> str:
    return " and ".join(t for v, t in ((chips, f"--chips {chips}"), (tiles, f"--tiles {tiles}")) if v is not None)
