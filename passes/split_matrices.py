"""split_matrices: cut each weight matrix into slices that fit one crossbar.

A K x N matrix under an encoding with an R x C weight grid per tile becomes
ceil(K/R) x ceil(N/C) slices ("fill": full tiles first, the remainder last).
Slices that share output columns produce partial sums that are added
digitally (on the host in the default preset). A matrix that assign_devices
mixed (``slice_encodings``) is cut per block of the tile's columns, each
block with its own encoding's row grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from anac.core.errors import AnacError
from anac.core.program import Program, Slice

STRATEGIES = ("fill", "even")


@dataclass(frozen=True)
class SplitMatrices:
    """Cut each MVM weight matrix into slices that fit one crossbar."""

    name: ClassVar[str] = "split_matrices"
    requires: ClassVar[tuple[str, ...]] = ("partition", "pruning", "encodings")
    produces: ClassVar[tuple[str, ...]] = ("slices",)
    strategy: str = "fill"

    def run(self, prog: Program) -> None:
        if self.strategy not in STRATEGIES:
            raise AnacError(f"unknown split strategy '{self.strategy}'; choose one of {', '.join(STRATEGIES)}")
        slices: list[Slice] = []
        mixed = (prog.assignment or {}).get("slice_encodings", {})
        for m in (prog.matrices or {}).values():
            encoding = m.encoding or prog.hardware.default_encoding
            grid_rows, grid_cols = prog.hardware.weight_grid(encoding)
            k, n = m.shape
            if m.id in mixed:  # per column block (of the tile's columns) its own encoding and row grid
                for (c0, c1), enc in zip(_ranges(n, grid_cols, "fill"), mixed[m.id], strict=True):
                    for r0, r1 in _ranges(k, prog.hardware.weight_grid(enc)[0], self.strategy):
                        slices.append(Slice(len(slices), m.id, (r0, r1), (c0, c1), enc))
                continue
            for r0, r1 in _ranges(k, grid_rows, self.strategy):
                for c0, c1 in _ranges(n, grid_cols, self.strategy):
                    slices.append(Slice(len(slices), m.id, (r0, r1), (c0, c1), encoding))
        prog.slices = slices


def _ranges(size: int, limit: int, strategy: str) -> list[tuple[int, int]]:
    """Cut [0, size) into ceil(size/limit) ranges of at most ``limit``."""
    parts = -(-size // limit)
    if strategy == "fill":
        return [(i * limit, min(size, (i + 1) * limit)) for i in range(parts)]
    bounds = [size * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))
