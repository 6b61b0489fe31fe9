"""place: put every slice on a tile of a chip, packing small slices together.

Per encoding (a tile holds one encoding only: the encoding fixes how the
tile's rows drive its unit cells, 2-PCM two weights per cell on separate
rows, 4-PCM one weight per cell), full-grid slices take a tile each; the
rest are packed tallest first into the free rectangles of the newest tile
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
and never worse than the greedy assignment in packing order; within a chip a
snake walk of the tile mesh keeps consecutive layers on neighbouring tiles.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from anac.core.dataflow import layer_tiles, link_bytes, output_on_chip
from anac.core.errors import AnacError, PlacementCapacityError
from anac.core.program import Program, Slice


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
    time_limit_s: float = 5.0  # CP-SAT deterministic time limit (about as many seconds on this machine)
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
        placed.sort(key=lambda s: (order[s.matrix], s.rows, s.cols))
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
            chip_of, status, solve_s = assign_chips(prog, tiles, chips, greedy, self.time_limit_s, self.seed)
            cp_bytes = _apply(prog, tiles, chip_of)
            info["solve_time_s"] = round(solve_s, 3)
            if cp_bytes > greedy_bytes:  # never worse than the greedy baseline
                _apply(prog, tiles, greedy)
                status, cp_bytes = "fallback (greedy was better)", greedy_bytes
            info.update({"method": "CP-SAT tiles to chips, snake order on the mesh", "status": status,
                         "link_bytes": cp_bytes})
        else:
            info.update({"method": "greedy (packing order)", "status": "optimal" if chips <= 1 else "heuristic",
                         "link_bytes": greedy_bytes})
        per_tile: dict[tuple[int, int], int] = defaultdict(int)
        for s in placed:
            per_tile[(s.chip, s.tile)] = max(per_tile[(s.chip, s.tile)], s.slot + 1)  # type: ignore[index]
        prog.placement_info = {**info, "tiles": len(tiles), "lower_bound_tiles": lower_bound_tiles(prog),
                               "time_multiplexed_tiles": sum(v > 1 for v in per_tile.values()),
                               "mesh_distance": mesh_distance(prog)}


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


def assign_chips(prog: Program, tiles: list[_Tile], chips: int, hint: list[int], time_limit_s: float,
                 seed: int) -> tuple[list[int], str, float]:
    """CP-SAT: each packed tile to a chip, at most tiles_per_chip per chip, minimising the bytes on links.

    Linear model of the traffic: a layer fed from the host costs its input bytes
    on every chip it occupies; a layer fed by an analog layer costs the
    producer's output bytes on every chip where it sits without its producer.
    """
    from ortools.sat.python import cp_model

    hw = prog.hardware
    layers = list(prog.mvms or {})
    holds: dict[str, set[int]] = defaultdict(set)
    for ti, t in enumerate(tiles):
        for s in t.slices:
            holds[prog.matrices[s.matrix].node].add(ti)  # type: ignore[index]
    m = cp_model.CpModel()
    y = {(t, c): m.new_bool_var(f"y{t}_{c}") for t in range(len(tiles)) for c in range(chips)}
    for t in range(len(tiles)):
        m.add_exactly_one(y[t, c] for c in range(chips))
        m.add_hint(y[t, hint[t]], True)
    for c in range(chips):
        m.add(sum(y[t, c] for t in range(len(tiles))) <= hw.tiles_per_chip)
    z = {(n, c): m.new_bool_var(f"z{i}_{c}") for i, n in enumerate(layers) for c in range(chips)}
    for n in layers:
        for c in range(chips):
            for t in holds[n]:
                m.add_implication(y[t, c], z[n, c])
            m.add_bool_or([y[t, c] for t in holds[n]] + [z[n, c].Not()])
    cost = []
    for n, p, nbytes in traffic_terms(prog):
        if p is not None:
            for c in range(chips):
                cross = m.new_bool_var(f"x{n}_{c}")
                m.add(cross >= z[n, c] - z[p, c])
                cost.append(nbytes * cross)
        else:
            cost.extend(nbytes * z[n, c] for c in range(chips))
    # Symmetry: chips are interchangeable, so the first tile goes on chip 0.
    m.add(y[0, 0] == 1)
    m.minimize(sum(cost))
    solver = cp_model.CpSolver()
    solver.parameters.max_deterministic_time = time_limit_s
    solver.parameters.random_seed = seed
    solver.parameters.num_workers = 1  # one worker and a deterministic limit: the same answer on every run
    t0 = time.perf_counter()
    status = solver.solve(m)
    elapsed = time.perf_counter() - t0
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return hint, "fallback (no CP-SAT solution in the time limit)", elapsed
    chip_of = [next(c for c in range(chips) if solver.value(y[t, c])) for t in range(len(tiles))]
    if status == cp_model.OPTIMAL:
        return chip_of, "optimal", elapsed
    obj, bound = solver.objective_value, solver.best_objective_bound
    return chip_of, f"feasible (gap {0.0 if obj == 0 else (obj - bound) / obj:.4f})", elapsed


def traffic_terms(prog: Program) -> list[tuple[str, str | None, int]]:
    """(layer, on-chip producer or None for the host, input bytes) for every crossbar layer."""
    mvms = prog.mvms or {}
    producer = {mv.output: mv.node for mv in mvms.values()}
    out = []
    for mv in mvms.values():
        p = producer.get(mv.input)
        on_chip = p is not None and output_on_chip(prog, mvms[p])
        out.append((mv.node, p if on_chip else None, mv.params.get("traffic", {}).get("in_elements", 0)))
    return out


def proxy_cost(prog: Program, tiles: list[Any], chip_of: list[int]) -> int:
    """The linear traffic model assign_chips minimises, for one assignment of tiles to chips."""
    on: dict[str, set[int]] = defaultdict(set)
    for t, c in zip(tiles, chip_of, strict=True):
        for s in t.slices:
            on[prog.matrices[s.matrix].node].add(c)  # type: ignore[index]
    return sum(nbytes * (len(on[n] - on[p]) if p is not None else len(on[n])) for n, p, nbytes in traffic_terms(prog))


def mesh_distance(prog: Program) -> float:
    """Bytes x mesh hops between an on-chip producer's tiles and its consumer's tiles, summed."""
    cols = prog.hardware.tile_grid[1]
    where = layer_tiles(prog)
    mvms = prog.mvms or {}
    producer = {mv.output: mv.node for mv in mvms.values()}
    total = 0.0
    for mv in mvms.values():
        p = producer.get(mv.input)
        if p is None or not output_on_chip(prog, mvms[p]):
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
        if s.n_rows == rows and s.n_cols == cols:
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
                       piece.encoding, row_offset=r, col_offset=c)
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
                              (piece.cols[0], piece.cols[0] + pw), piece.encoding))
        if piece.n_cols > pw:  # columns the tile could not take
            rest.append(Slice(-1, piece.matrix, piece.rows, (piece.cols[0] + pw, piece.cols[1]), piece.encoding))
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
