"""place: put every slice on a tile of a chip (first-fit; the CP-SAT placer replaces it).

Slices are taken in program order and packed diagonally: a tile keeps a row
cursor and a column cursor, and a slice fits when both have room, so slices
on one tile share neither input rows nor output columns and can run at the
same time. A tile holds slices of one encoding only. Chips are added as
needed; a chip budget in the hardware spec turns overflow into a
CapacityError that states both numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from compiler.errors import CapacityError
from compiler.program import Program


@dataclass
class _Tile:
    chip: int
    index: int
    encoding: str
    rows: int
    cols: int
    row_cursor: int = 0
    col_cursor: int = 0
    slices: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Place:
    """Place slices on tiles and chips, first fit, as many chips as needed."""

    name: ClassVar[str] = "place"
    requires: ClassVar[tuple[str, ...]] = ("slices",)
    produces: ClassVar[tuple[str, ...]] = ("placement",)

    def run(self, prog: Program) -> None:
        hw = prog.hardware
        tiles: list[_Tile] = []
        open_tiles: list[_Tile] = []  # tiles with room left in both directions
        for s in prog.slices or []:
            tile = next((t for t in open_tiles if t.encoding == s.encoding
                         and t.row_cursor + s.n_rows <= t.rows and t.col_cursor + s.n_cols <= t.cols), None)
            if tile is None:
                rows, cols = hw.weight_grid(s.encoding)
                n = len(tiles)
                tile = _Tile(n // hw.tiles_per_chip, n % hw.tiles_per_chip, s.encoding, rows, cols)
                tiles.append(tile)
                open_tiles.append(tile)
            s.chip, s.tile, s.row_offset, s.col_offset = tile.chip, tile.index, tile.row_cursor, tile.col_cursor
            tile.row_cursor += s.n_rows
            tile.col_cursor += s.n_cols
            tile.slices.append(s.id)
            if tile.row_cursor >= tile.rows or tile.col_cursor >= tile.cols:
                open_tiles.remove(tile)
        chips = -(-len(tiles) // hw.tiles_per_chip)
        if hw.max_chips is not None and chips > hw.max_chips:
            raise CapacityError(
                f"the model needs {len(tiles)} tiles ({chips} chips of {hw.tiles_per_chip}) with first-fit placement; "
                f"the hardware budget of {hw.max_chips} chips gives {hw.max_chips * hw.tiles_per_chip} tiles")
        prog.chips_used = chips
        prog.placement_info = {"method": "first-fit", "status": "heuristic", "tiles": len(tiles)}
