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
Chips are added as needed; a chip budget in the hardware spec turns overflow
into a CapacityError that states both numbers. The CP-SAT placer replaces
the chip/tile assignment later; the packing stays.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import ClassVar

from compiler.errors import PlacementCapacityError
from compiler.program import Program, Slice


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

    def run(self, prog: Program) -> None:
        hw = prog.hardware
        tiles: list[_Tile] = []
        by_encoding: dict[str, list[Slice]] = defaultdict(list)
        for s in prog.slices or []:
            by_encoding[s.encoding].append(s)
        for encoding, group in by_encoding.items():
            tiles.extend(_pack(group, *hw.weight_grid(encoding), encoding, self.min_cut))
        placed: list[Slice] = []
        for n, tile in enumerate(tiles):
            for s in tile.slices:
                s.chip, s.tile = n // hw.tiles_per_chip, n % hw.tiles_per_chip
            _assign_slots(tile.slices)
            placed.extend(tile.slices)
        order = {mid: i for i, mid in enumerate(prog.matrices or {})}
        placed.sort(key=lambda s: (order[s.matrix], s.rows, s.cols))
        for i, s in enumerate(placed):
            s.id = i
        prog.slices = placed
        chips = -(-len(tiles) // hw.tiles_per_chip)
        if hw.max_chips is not None and chips > hw.max_chips:
            raise PlacementCapacityError(
                f"the model needs {len(tiles)} tiles ({chips} chips of {hw.tiles_per_chip}); "
                f"the hardware budget of {hw.max_chips} chips gives {hw.max_chips * hw.tiles_per_chip} tiles")
        prog.chips_used = chips
        per_tile = defaultdict(int)
        for s in placed:
            per_tile[(s.chip, s.tile)] = max(per_tile[(s.chip, s.tile)], s.slot + 1)  # type: ignore[operator]
        prog.placement_info = {"method": "first-fit packing", "status": "heuristic", "tiles": len(tiles),
                               "lower_bound_tiles": lower_bound_tiles(prog),
                               "time_multiplexed_tiles": sum(v > 1 for v in per_tile.values())}


def lower_bound_tiles(prog: Program) -> int:
    """ceil(devices needed / devices per tile): no placement can use fewer tiles."""
    return -(-prog.pcm_devices() // prog.hardware.devices_per_tile)


def _pack(slices: list[Slice], rows: int, cols: int, encoding: str, min_cut: int) -> list[_Tile]:
    tiles: list[_Tile] = []
    queue: list[Slice] = []
    for s in slices:
        if s.n_rows == rows and s.n_cols == cols:
            s.row_offset, s.col_offset = 0, 0
            tiles.append(_Tile(encoding, [], [s]))
        else:
            queue.append(s)
    queue.sort(key=lambda s: (-s.n_rows, -s.n_cols, s.matrix, s.rows, s.cols))
    current: _Tile | None = None
    while queue:
        piece = queue.pop(0)
        if current is None:
            current = _Tile(encoding, [(0, 0, rows, cols)])
            tiles.append(current)
        spot = _fit(current, piece, min_cut)
        if spot is None:
            current = None
            queue.insert(0, piece)
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
        queue[:0] = rest
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
    """Greedy time slots: slices sharing tile rows or columns run at different times."""
    for i, s in enumerate(slices):
        taken = {t.slot for t in slices[:i] if _shares_lines(s, t)}
        s.slot = next(k for k in range(len(slices)) if k not in taken)


def _shares_lines(a: Slice, b: Slice) -> bool:
    rows = a.row_offset < b.row_offset + b.n_rows and b.row_offset < a.row_offset + a.n_rows  # type: ignore[operator]
    cols = a.col_offset < b.col_offset + b.n_cols and b.col_offset < a.col_offset + a.n_cols  # type: ignore[operator]
    return rows or cols
