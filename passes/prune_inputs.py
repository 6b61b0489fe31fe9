"""prune_inputs: drop crossbar rows that carry nothing, and prune a layer to a row budget on request.

Always: rows of a weight matrix that are all zero (inputs that contribute
nothing to any output) are removed. On request (``prune``: "LAYER=ROWS,..."
or "auto"), a layer keeps its ROWS most important input rows, ranked by the
L2 norm of the weight row, times the input's RMS over calibration data when
the API passes it (``row_scale``: a table, or a function of the program
called once, before any row is removed, when a layer is to be pruned). "auto" prunes the first crossbar layer to
the rows of one tile of the encoding with the most rows per tile (2-PCM on
the IBM chip: 1024) when that saves tiles, and gives that layer that encoding,
as the paper did for its keyword-spotting network (1960 inputs -> 1024).
The compiled program gathers the kept inputs before the MVM. A plan (no
weight values) keeps every row, or the first ROWS of a pruned layer: the
count is what a plan needs; which rows, compile decides from the weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from anac.core.errors import AnacError
from anac.core.placeholder import is_placeholder, placeholder
from anac.core.program import Matrix, Program


@dataclass(frozen=True)
class PruneInputs:
    """Remove all-zero weight rows; on request keep only a layer's most important rows."""

    name: ClassVar[str] = "prune_inputs"
    requires: ClassVar[tuple[str, ...]] = ("partition",)
    produces: ClassVar[tuple[str, ...]] = ("pruning",)
    prune: str | Mapping[str, int] | None = None
    # per layer: RMS of each input row over calibration data
    row_scale: Mapping[str, np.ndarray] | Callable[[Program], Mapping[str, np.ndarray]] | None = None

    def run(self, prog: Program) -> None:
        mvms = prog.mvms or {}
        requests = self._requests(prog)
        unknown = sorted(set(requests) - set(mvms))
        if unknown:
            raise AnacError(f"--prune-inputs names layer(s) {', '.join(unknown)} that are not crossbar layers; "
                            f"the crossbar layers are: {', '.join(mvms) or '(none)'}")
        row_scale = self.row_scale(prog) if requests and callable(self.row_scale) else self.row_scale
        report = {}
        for mvm in mvms.values():
            for mid in mvm.matrices:
                m = prog.matrices[mid]  # type: ignore[index]
                before = m.shape[0]
                # A plan has no weight values: it cannot see zero rows, and keeps them all.
                keep = np.arange(before) if prog.plan is not None else np.flatnonzero(np.any(m.weights != 0, axis=1))
                if mvm.node in requests:
                    rows = requests[mvm.node]
                    if rows <= 0:
                        raise AnacError(f"--prune-inputs {mvm.node}={rows}: keep at least one row")
                    keep = keep[:rows] if prog.plan is not None else \
                        _most_important(m, keep, rows, None if row_scale is None else row_scale.get(mvm.node))
                if len(keep) == 0:
                    keep = np.array([0])  # an all-zero matrix still needs one row to exist
                if len(keep) < before:
                    _keep_rows(m, keep)
                    report[mid] = {"rows": before, "kept": int(len(keep))}
        prog.pruning = report

    def _requests(self, prog: Program) -> dict[str, int]:
        if self.prune is None:
            return {}
        if isinstance(self.prune, Mapping):
            return {k: int(v) for k, v in self.prune.items()}
        if self.prune.strip() == "auto":
            return _auto(prog)
        out = {}
        for part in (p.strip() for p in self.prune.split(",") if p.strip()):
            layer, sep, rows = part.rpartition("=")
            try:
                out[layer] = int(rows)
                if not sep or not layer:
                    raise ValueError
            except ValueError:
                raise AnacError(f"--prune-inputs item '{part}' is not LAYER=ROWS (or the word auto)") from None
        return out


def _most_important(m: Matrix, live: np.ndarray, rows: int, row_scale: np.ndarray | None) -> np.ndarray:
    """The ``rows`` live rows of highest weight norm (times the input's RMS when given)."""
    score = np.linalg.norm(m.weights.astype(np.float64), axis=1)
    if row_scale is not None:
        scale = np.asarray(row_scale, np.float64)
        if scale.shape != (m.shape[0],):
            raise AnacError(f"input scale for {m.node} has {scale.shape} entries; the layer has {m.shape[0]} rows")
        score = score * scale
    # Highest score first; ties by row index so the choice is deterministic.
    order = live[np.lexsort((live, -score[live]))]
    return np.sort(order[:rows])


def _keep_rows(m: Matrix, keep: np.ndarray) -> None:
    base = m.kept_rows if m.kept_rows is not None else np.arange(m.shape[0])
    m.kept_rows = base[keep].astype(np.int64)
    m.weights = placeholder((len(keep), m.shape[1]), m.weights.dtype) if is_placeholder(m.weights) \
        else np.ascontiguousarray(m.weights[keep])


def _auto(prog: Program) -> dict[str, int]:
    """The first crossbar layer, pruned to one tile's rows when that saves tiles."""
    hw = prog.hardware
    first = next(iter((prog.mvms or {}).values()), None)
    if first is None or len(first.matrices) != 1:
        return {}
    m = prog.matrices[first.matrices[0]]  # type: ignore[index]
    k, n = m.shape
    best = max(hw.encodings, key=lambda e: hw.weight_grid(e.name)[0])
    rows, cols = hw.weight_grid(best.name)
    r_default, c_default = hw.weight_grid(m.encoding or hw.default_encoding)
    tiles_now = -(-k // r_default) * -(-n // c_default)
    tiles_pruned = -(-n // cols)
    if k <= rows or tiles_pruned >= tiles_now:
        return {}
    m.encoding = best.name  # assign_devices keeps it unless told otherwise
    return {first.node: rows}
