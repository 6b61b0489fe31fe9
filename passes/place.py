"""place: put every slice on a tile of a chip, packing small slices together.

Per encoding (a tile holds one encoding only: the encoding fixes how the
tile's rows drive its unit cells, 2-PCM two weights per cell on separate
rows, 4-PCM one weight per cell), full-grid slices (and those replicate
marks ``own_tile``, so that no other layer shares their time) take a tile
each; the rest are packed tallest first into the free rectangles of the newest tile
(guillotine cuts), and a slice larger than the free space is cut to fit,
its pieces' partial sums added digitally like those of any other slices.
Every tile but the last of each encoding is thus filled, and the tile count
meets the lower bound ceil(devices / devices per tile) per encoding up to the
rectangles too thin to use (``min_cut``).

Slices on one tile that share input rows or output columns cannot run at the
same time: each gets a time slot (0, 1, ...), recorded for the scheduler.
Packed tiles then go to chips, as few as the tile count allows (a chip budget
in the spec turns overflow into a CapacityError stating both numbers): CP-SAT
minimises the bytes on links per inference (assign_chips), warm-started from
the better of packing order and dataflow order and never worse than the
greedy assignment in packing order; within a chip a snake walk of the tile
mesh keeps consecutive layers on neighbouring tiles. Scale: when the warm
start meets a lower bound on the traffic (proxy_bound) it is optimal and
CP-SAT does not run. CP-SAT places classes of tiles (those holding the
same layers are interchangeable): its deterministic time limit grows with
classes x chips (capped by ``time_limit_s``) and it stops at a proven
optimum; above ``max_vars`` class-chip pairs (hundreds of chips, thousands
of layers) the problem is decomposed into windows of consecutive chips
(assign_blocks).
The objective, the bound and the gap are recorded in the placement info.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from anac.core.dataflow import layer_tiles, link_bytes, outputs_on_chip
from anac.core.errors import AnacError, PlacementCapacityError
from anac.core.program import Program, Slice

TERMS = list[tuple[str, str | None, int]]  # (layer, on-chip producer or None, input bytes): see traffic_terms


@dataclass
class _Tile:
    encoding: str
    free: list[tuple[int, int, int, int]]  # (row, col, rows, cols) free rectangles
    slices: list[Slice] = field(default_factory=list)


@dataclass(frozen=True)
class Place:
    """Pack slices onto tiles (cutting slices to fill free space) and tiles onto chips."""

    name: ClassVar[str] = "place"
    requires: ClassVar[tuple[str, ...]] = ("slices",)
    produces: ClassVar[tuple[str, ...]] = ("placement",)
    min_cut: int = 16  # never cut a piece thinner than this many rows or columns to fill a gap
    solver: str = "cpsat"  # "cpsat" or "greedy" (tiles to chips in packing order)
    time_limit_s: float = 5.0  # cap on CP-SAT's deterministic time (about as many seconds on this machine)
    seconds_per_var: float = 0.0005  # CP-SAT's deterministic budget per class-chip pair, up to the cap
    max_vars: int = 1000  # classes of tiles x chips above which chips are assigned in windows of ``block_chips``
    block_chips: int = 2
    seed: int = 0

    def run(self, prog: Program) -> None:
        hw = prog.hardware
        if self.solver not in ("cpsat", "greedy"):
            raise AnacError(f"unknown placement solver '{self.solver}'; choose cpsat or greedy")
        tiles: list[_Tile] = []
        by_encoding: dict[str, list[Slice]] = defaultdict(list)
        for s in prog.slices or []:
            by_encoding[s.encoding].append(s)
        for encoding, group in by_encoding.items():
            tiles.extend(_pack(group, *hw.weight_grid(encoding), encoding, self.min_cut))
        placed = [s for tile in tiles for s in tile.slices]
        order = {mid: i for i, mid in enumerate(prog.matrices or {})}
        placed.sort(key=lambda s: (order[s.matrix], s.copy, s.rows, s.cols))
        for i, s in enumerate(placed):
            s.id = i
        for tile in tiles:
            _assign_slots(tile.slices)
        prog.slices = placed
        chips = -(-len(tiles) // hw.tiles_per_chip)
        if hw.max_chips is not None and chips > hw.max_chips:
            raise PlacementCapacityError(
                f"the model needs {len(tiles)} tiles ({chips} chips of {hw.tiles_per_chip}); "
                f"the hardware budget of {hw.max_chips} chips gives {hw.max_chips * hw.tiles_per_chip} tiles")
        prog.chips_used = chips
        greedy = [i // hw.tiles_per_chip for i in range(len(tiles))]
        greedy_bytes = _apply(prog, tiles, greedy)
        info: dict[str, Any] = {"greedy": {"chips": chips, "link_bytes": greedy_bytes}}
        if self.solver == "cpsat" and chips > 1:
            # Warm start: the better (in the model's traffic) of packing order and dataflow order.
            terms = traffic_terms(prog)
            start = min((greedy, dataflow_order(prog, tiles)), key=lambda c: proxy_cost(prog, tiles, c, terms))
            t0 = time.perf_counter()
            limit = 0.0
            if proxy_cost(prog, tiles, start, terms) <= proxy_bound(prog, tiles, chips, terms):
                chip_of, status, bound = start, "optimal (the warm start meets the lower bound)", 0
                method = "tiles to chips in dataflow order, snake order on the mesh"
            elif (classes := len(tile_classes(prog, tiles))) * chips <= self.max_vars:
                limit = min(self.time_limit_s, max(0.05, self.seconds_per_var * classes * chips))
                chip_of, status, bound = assign_chips(prog, tiles, chips, start, limit, self.seed, terms)
                method = "CP-SAT tiles to chips, snake order on the mesh"
            else:
                limit = self.time_limit_s
                chip_of, status, bound = assign_blocks(prog, tiles, start, self.block_chips, limit, self.seed, terms)
                method = (f"CP-SAT on windows of {self.block_chips} consecutive chips in dataflow order "
                          f"({classes} classes of tiles x {chips} chips is over {self.max_vars}), snake order on "
                          f"the mesh")
            solve_s = time.perf_counter() - t0
            cp_bytes = _apply(prog, tiles, chip_of)
            if cp_bytes > greedy_bytes:  # never worse than the greedy baseline
                chip_of, cp_bytes = greedy, _apply(prog, tiles, greedy)
                status = "fallback (greedy was better)"
            objective = proxy_cost(prog, tiles, chip_of, terms)
            bound = min(objective, max(bound, proxy_bound(prog, tiles, chips, terms)))
            info.update({"method": method, "status": status, "link_bytes": cp_bytes, "solve_time_s": round(solve_s, 3),
                         "time_limit_s": round(limit, 3), "objective_bytes": objective, "bound_bytes": bound,
                         "gap": round((objective - bound) / objective, 4) if objective else 0.0})
        else:
            info.update({"method": "greedy (packing order)", "status": "optimal" if chips <= 1 else "heuristic",
                         "link_bytes": greedy_bytes})
        per_tile: dict[tuple[int, int], int] = defaultdict(int)
        for s in placed:
            per_tile[(s.chip, s.tile)] = max(per_tile[(s.chip, s.tile)], s.slot + 1)  # type: ignore[index]
        prog.placement_info = {**info, "tiles": len(tiles), "lower_bound_tiles": lower_bound_tiles(prog),
                               "time_multiplexed_tiles": sum(v > 1 for v in per_tile.values()),
                               "mesh_distance": mesh_distance(prog)}


def dataflow_order(prog: Program, tiles: list[_Tile]) -> list[int]:
    """Tiles to chips in the order of the layers they hold, each chip filled before the next."""
    order = {mid: i for i, mid in enumerate(prog.matrices or {})}
    rank = sorted(range(len(tiles)), key=lambda i: (min(order[s.matrix] for s in tiles[i].slices),
                                                    max(order[s.matrix] for s in tiles[i].slices), i))
    chip_of = [0] * len(tiles)
    for pos, i in enumerate(rank):
        chip_of[i] = pos // prog.hardware.tiles_per_chip
    return chip_of


def _apply(prog: Program, tiles: list[_Tile], chip_of: list[int]) -> int:
    """Put tiles on their chips, in snake order on each chip's mesh; return the link bytes."""
    hw = prog.hardware
    rows, cols = hw.tile_grid
    # Tile i sits at (i // cols, i % cols) of the chip's mesh; a snake walk keeps consecutive tiles adjacent.
    snake = [i for r in range(rows) for c in range(cols)
             if (i := r * cols + (c if r % 2 == 0 else cols - 1 - c)) < hw.tiles_per_chip]
    order = {mid: i for i, mid in enumerate(prog.matrices or {})}
    # Consecutive layers on neighbouring tiles: a tile goes where the last layer it holds
    # (program order) puts it, so a packed tile sits next to that layer's consumer.
    rank = {id(t): (max(order[s.matrix] for s in t.slices), min(s.id for s in t.slices)) for t in tiles}
    per_chip: dict[int, list[_Tile]] = defaultdict(list)
    for tile, chip in zip(tiles, chip_of, strict=True):
        per_chip[chip].append(tile)
    for chip, group in per_chip.items():
        for pos, tile in enumerate(sorted(group, key=lambda t: rank[id(t)])):
            for s in tile.slices:
                s.chip, s.tile = chip, snake[pos]
    return link_bytes(prog)["total"]


def assign_chips(prog: Program, tiles: list[Any], chips: int, hint: list[int], time_limit_s: float,
                 seed: int, terms: TERMS | None = None) -> tuple[list[int], str, int]:
    """CP-SAT: each packed tile to a chip, at most tiles_per_chip per chip, minimising the bytes on links.

    Linear model of the traffic: a layer fed from the host costs its input bytes
    on every chip it occupies; a layer fed by an analog layer costs the
    producer's output bytes on every chip where it sits without its producer.
    Only the layers on ``tiles`` count, and a producer on none of them counts
    as elsewhere (so a block of tiles on its own chips is solved exactly).
    Tiles holding the same layers are interchangeable in this model, so the
    variables are how many tiles of each such class go on each chip (no
    symmetric solutions for CP-SAT to wade through); the tiles of a class then
    keep their chip in ``hint`` where the counts allow. Returns the assignment
    (``hint`` when CP-SAT finds nothing better), the status and CP-SAT's lower
    bound on the objective.
    """
    from ortools.sat.python import cp_model

    hw = prog.hardware
    # Symmetry: chips are interchangeable, so the first tile's chip is chip 0 (the hint renumbered to match).
    swap = {0: hint[0], hint[0]: 0}
    hint = [swap.get(c, c) for c in hint]
    classes = tile_classes(prog, tiles)
    members = list(classes.values())
    holds: dict[str, list[int]] = defaultdict(list)  # layer -> the classes holding it
    for g, layers in enumerate(classes):
        for n in layers:
            holds[n].append(g)
    m = cp_model.CpModel()
    k = {(g, c): m.new_int_var(0, len(ts), f"k{g}_{c}") for g, ts in enumerate(members) for c in range(chips)}
    m.add(k[0, 0] >= 1)  # the first tile's class is on chip 0
    for g, ts in enumerate(members):
        m.add(sum(k[g, c] for c in range(chips)) == len(ts))
        for c in range(chips):
            m.add_hint(k[g, c], sum(hint[t] == c for t in ts))
    for c in range(chips):
        m.add(sum(k[g, c] for g in range(len(members))) <= hw.tiles_per_chip)
    z = {(n, c): m.new_bool_var(f"z{i}_{c}") for i, n in enumerate(holds) for c in range(chips)}
    for n, gs in holds.items():
        for c in range(chips):
            for g in gs:
                m.add(k[g, c] <= len(members[g]) * z[n, c])
            m.add(sum(k[g, c] for g in gs) >= z[n, c])
            m.add_hint(z[n, c], any(hint[t] == c for g in gs for t in members[g]))
    cost = []
    for n, p, nbytes in terms if terms is not None else traffic_terms(prog):
        if n not in holds or not nbytes:
            continue
        if p in holds:
            for c in range(chips):
                cross = m.new_bool_var(f"x{n}_{c}")
                m.add(cross >= z[n, c] - z[p, c])
                cost.append(nbytes * cross)
        else:
            cost.extend(nbytes * z[n, c] for c in range(chips))
    if len(tiles) > (chips - 1) * hw.tiles_per_chip:  # every chip needed, as proxy_bound assumes: a valid bound
        m.add(sum(cost) >= proxy_bound(prog, tiles, chips, terms))  # that ends the search where it is met
    m.minimize(sum(cost))
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = 1  # one worker and a deterministic limit: the same answer on every run
    status = solver.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint, "fallback (no CP-SAT solution in the time limit)", 0
    chip_of = list(hint)
    for g, ts in enumerate(members):
        left = {c: solver.value(k[g, c]) for c in range(chips)}
        moved = []
        for t in ts:  # a tile stays on its hinted chip while the class still needs tiles there
            if left[hint[t]] > 0:
                left[hint[t]] -= 1
            else:
                moved.append(t)
        free = [c for c in range(chips) for _ in range(left[c])]
        for t, chip in zip(moved, free, strict=True):
            chip_of[t] = chip
    if status == cp_model.OPTIMAL:
        return chip_of, "optimal", int(solver.objective_value)
    return chip_of, "feasible (CP-SAT time limit; see gap)", int(math.ceil(solver.best_objective_bound))


def tile_classes(prog: Program, tiles: list[Any]) -> dict[frozenset[str], list[int]]:
    """Tiles by the set of layers they hold (interchangeable in the traffic model), in order of first tile."""
    classes: dict[frozenset[str], list[int]] = {}
    for ti, t in enumerate(tiles):
        classes.setdefault(frozenset(prog.matrices[s.matrix].node for s in t.slices), []).append(ti)  # type: ignore[index]
    return classes


def assign_blocks(prog: Program, tiles: list[_Tile], start: list[int], block: int, time_limit_s: float,
                  seed: int, terms: TERMS, max_windows: int = 32) -> tuple[list[int], str, int]:
    """Decomposition for hundreds of chips: windows of ``block`` consecutive chips of ``start``, each window's
    tiles reassigned among its own chips by CP-SAT; two sweeps, the second with windows shifted by half a
    window so that every boundary between chips is inside some window.

    The traffic model is a sum over chips, so with the tiles of a window fixed the windows are independent
    and each is solved against its exact share of the objective (a window keeps its result only if it is
    no worse); what the decomposition gives up is moving tiles between windows. ``start`` in dataflow order
    keeps consecutive layers in one window, which for a chain is where they belong. Per sweep, at most
    ``max_windows`` / 2 windows go to CP-SAT: those farthest above their own lower bound (a window that
    meets it is optimal as it is); the time limit is shared evenly between them. Returns the assignment,
    the status and 0 (the caller bounds the whole with proxy_bound).
    """
    chips = max(start) + 1
    tpc = prog.hardware.tiles_per_chip
    chip_of = list(start)
    on: dict[int, list[int]] = defaultdict(list)
    for i, c in enumerate(chip_of):
        on[c].append(i)
    solved = proven = total = 0
    for shift in (0, block // 2):
        windows = [(lo, min(lo + block, chips)) for lo in range(shift, chips, block) if min(lo + block, chips) - lo > 1]
        excess = []
        for lo, hi in windows:
            members = [i for c in range(lo, hi) for i in on[c]]
            sub = [tiles[i] for i in members]
            cost = proxy_cost(prog, sub, [chip_of[i] - lo for i in members], terms)
            full = hi - lo == -(-len(sub) // tpc)  # proxy_bound assumes every chip of the window is needed
            excess.append((cost - proxy_bound(prog, sub, hi - lo, terms) if full else cost, lo, hi))
        total += len(windows)
        chosen = sorted(sorted(w for w in excess if w[0] > 0)[::-1][:max_windows // 2], key=lambda w: w[1])
        proven += len(windows) - sum(w[0] > 0 for w in excess)  # windows that meet their bound
        for _, lo, hi in chosen:
            members = [i for c in range(lo, hi) for i in on[c]]
            sub = [tiles[i] for i in members]
            hint = [chip_of[i] - lo for i in members]
            got, status, _ = assign_chips(prog, sub, hi - lo, hint, max(0.01, time_limit_s / max_windows), seed,
                                          terms)
            solved += 1
            proven += status == "optimal"
            if proxy_cost(prog, sub, got, terms) <= proxy_cost(prog, sub, hint, terms):
                for c in range(lo, hi):
                    on[c] = []
                for i, c in zip(members, got, strict=True):
                    chip_of[i] = lo + c
                    on[lo + c].append(i)
    return chip_of, (f"decomposed: {total} windows of {block} chips, {solved} solved by CP-SAT, "
                     f"{proven} optimal"), 0


def traffic_terms(prog: Program) -> TERMS:
    """(layer, on-chip producer or None for the host, input bytes) for every crossbar layer."""
    mvms = prog.mvms or {}
    producer = {mv.output: mv.node for mv in mvms.values()}
    on_chip = outputs_on_chip(prog)
    out = []
    for mv in mvms.values():
        p = producer.get(mv.input)
        out.append((mv.node, p if p is not None and on_chip[p] else None,
                    mv.params.get("traffic", {}).get("in_elements", 0)))
    return out


def proxy_cost(prog: Program, tiles: list[Any], chip_of: list[int], terms: TERMS | None = None) -> int:
    """The linear traffic model assign_chips minimises, for one assignment of tiles to chips."""
    terms = terms if terms is not None else traffic_terms(prog)
    on: dict[str, set[int]] = defaultdict(set)
    for t, c in zip(tiles, chip_of, strict=True):
        for s in t.slices:
            on[prog.matrices[s.matrix].node].add(c)  # type: ignore[index]
    return sum(nbytes * (len(on[n] - on[p]) if p is not None else len(on[n])) for n, p, nbytes in terms
               if n in on)


def proxy_bound(prog: Program, tiles: list[Any], chips: int, terms: TERMS | None = None) -> int:
    """A lower bound on ``proxy_cost`` over every assignment of ``tiles`` to ``chips`` full-as-needed chips.

    A layer fed from the host costs its input bytes on each of the at least
    ceil(its tiles / tiles per chip) chips it spans. Every chip is used
    (chips = ceil(tiles / tiles per chip)), and on each chip the first layer
    in dataflow order that it holds costs its input bytes there (its producer,
    earlier, is not on that chip); chips beyond those the host-fed layers must
    span cost at least the smallest input of any layer.
    """
    count: dict[str, int] = defaultdict(int)
    for t in tiles:
        for n in {prog.matrices[s.matrix].node for s in t.slices}:  # type: ignore[index]
            count[n] += 1
    terms = [(n, p, nbytes) for n, p, nbytes in (terms if terms is not None else traffic_terms(prog)) if count[n]]
    if not terms:
        return 0
    spans = {n: -(-count[n] // prog.hardware.tiles_per_chip) for n, p, _ in terms if p is None}
    fed = sum(nbytes * spans[n] for n, p, nbytes in terms if p is None)
    return fed + max(0, chips - sum(spans.values())) * min(nbytes for _, _, nbytes in terms)


def mesh_distance(prog: Program) -> float:
    """Bytes x mesh hops between an on-chip producer's tiles and its consumer's tiles, summed."""
    cols = prog.hardware.tile_grid[1]
    where = layer_tiles(prog)
    mvms = prog.mvms or {}
    producer = {mv.output: mv.node for mv in mvms.values()}
    on_chip = outputs_on_chip(prog)
    total = 0.0
    for mv in mvms.values():
        p = producer.get(mv.input)
        if p is None or not on_chip[p]:
            continue
        nbytes = mv.params.get("traffic", {}).get("in_elements", 0)
        for (c1, t1) in where[p]:
            for (c2, t2) in where[mv.node]:
                if c1 == c2:
                    total += nbytes * (abs(t1 // cols - t2 // cols) + abs(t1 % cols - t2 % cols))
    return total


def lower_bound_tiles(prog: Program) -> int:
    """ceil(devices needed / devices per tile): no placement can use fewer tiles."""
    return -(-prog.pcm_devices() // prog.hardware.devices_per_tile)


def _pack(slices: list[Slice], rows: int, cols: int, encoding: str, min_cut: int) -> list[_Tile]:
    tiles: list[_Tile] = []
    waiting: list[Slice] = []
    for s in slices:
        if (s.n_rows == rows and s.n_cols == cols) or s.own_tile:
            s.row_offset, s.col_offset = 0, 0
            tiles.append(_Tile(encoding, [], [s]))
        else:
            waiting.append(s)
    queue = deque(sorted(waiting, key=lambda s: (-s.n_rows, -s.n_cols, s.matrix, s.rows, s.cols)))
    current: _Tile | None = None
    while queue:
        piece = queue.popleft()
        if current is None:
            current = _Tile(encoding, [(0, 0, rows, cols)])
            tiles.append(current)
        spot = _fit(current, piece, min_cut)
        if spot is None:
            current = None
            queue.appendleft(piece)
            continue
        i, (r, c, h, w) = spot
        ph, pw = min(piece.n_rows, h), min(piece.n_cols, w)
        placed = Slice(-1, piece.matrix, (piece.rows[0], piece.rows[0] + ph), (piece.cols[0], piece.cols[0] + pw),
                       piece.encoding, row_offset=r, col_offset=c, copy=piece.copy)
        current.slices.append(placed)
        # Guillotine: the free rectangle loses the placed corner; keep the part right of it
        # full height (tall pieces come first) and the part below it as wide as the piece.
        del current.free[i]
        if w > pw:
            current.free.append((r, c + pw, h, w - pw))
        if h > ph:
            current.free.append((r + ph, c, h - ph, pw))
        rest = []
        if piece.n_rows > ph:  # rows the tile could not take
            rest.append(Slice(-1, piece.matrix, (piece.rows[0] + ph, piece.rows[1]),
                              (piece.cols[0], piece.cols[0] + pw), piece.encoding, copy=piece.copy))
        if piece.n_cols > pw:  # columns the tile could not take
            rest.append(Slice(-1, piece.matrix, piece.rows, (piece.cols[0] + pw, piece.cols[1]), piece.encoding,
                              copy=piece.copy))
        queue.extendleft(reversed(rest))
    return tiles


def _fit(tile: _Tile, piece: Slice, min_cut: int) -> tuple[int, tuple[int, int, int, int]] | None:
    """The free rectangle to put ``piece`` (or a cut of it) in: a whole fit first, else the largest usable."""
    whole = [(i, f) for i, f in enumerate(tile.free) if f[2] >= piece.n_rows and f[3] >= piece.n_cols]
    if whole:
        return min(whole, key=lambda x: (x[1][2] * x[1][3], x[1][0], x[1][1]))
    usable = [(i, f) for i, f in enumerate(tile.free)
              if f[2] >= min(piece.n_rows, min_cut) and f[3] >= min(piece.n_cols, min_cut)]
    if usable:
        return max(usable, key=lambda x: (min(x[1][2], piece.n_rows) * min(x[1][3], piece.n_cols), -x[1][0], -x[1][1]))
    return None


def _assign_slots(slices: list[Slice]) -> None:
    """Greedy time slots: slices sharing tile rows or columns run at different times (vectorised per slice)."""
    if len(slices) == 1:
        slices[0].slot = 0
        return
    r0 = np.array([s.row_offset for s in slices], dtype=np.int64)
    c0 = np.array([s.col_offset for s in slices], dtype=np.int64)
    r1 = r0 + np.array([s.n_rows for s in slices], dtype=np.int64)
    c1 = c0 + np.array([s.n_cols for s in slices], dtype=np.int64)
    slot = np.zeros(len(slices), dtype=np.int64)
    for i, s in enumerate(slices):
        shares = ((r0[:i] < r1[i]) & (r0[i] < r1[:i])) | ((c0[:i] < c1[i]) & (c0[i] < c1[:i]))
        taken = np.zeros(i + 1, dtype=bool)
        taken[slot[:i][shares]] = True
        slot[i] = int(np.argmin(taken))  # the first free slot (slot i is always free)
        s.slot = int(slot[i])
