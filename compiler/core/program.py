"""The Program: the graph plus what each pass computed, one typed field per stage.

A field is ``None`` until the pass that produces it has run. ``verify()``
checks cheap invariants after every pass (the driver calls it).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from anac.core.conductance import column_gains, column_scales, device_targets
from anac.core.hardware import HardwareSpec
from anac.core.ir import Graph, TensorInfo
from anac.core.placeholder import is_placeholder

FORMAT_NAME = "anac-program"
# 2: weights once, per matrix; conductance targets recomputed on load.
# 3: a per-column matrix's slice output ranges are in current (column j's range in weights: the range / gain j).
FORMAT_VERSION = 3


@dataclass
class Matrix:
    """One crossbar weight matrix W (K rows = inputs, N columns = outputs)."""

    id: str
    node: str  # the MVM it belongs to
    group: int  # conv group index (0 for dense layers); for packed groups the index of the pack
    weights: np.ndarray  # float32, K x N, C- or Fortran-contiguous (see weight_matrix)
    encoding: str | None = None
    per_column: bool = False  # conductance scale per column, else one per slice (tile)
    clip_sigma: float | None = None  # clip weights beyond this many standard deviations
    kept_rows: np.ndarray | None = None  # after pruning: the input rows (of input_rows) that remain
    input_rows: int = 0  # K before pruning: the width of the MVM's input rows
    # What its copies (slices with ``copy`` > 0) do: "split" (replicate: they share the products) or
    # "average" (average: each computes every product; the output is the digital mean of the copies').
    copy_mode: str = "split"

    def __post_init__(self) -> None:
        self.input_rows = self.input_rows or int(self.weights.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return self.weights.shape  # type: ignore[return-value]


def weight_matrix(w: np.ndarray) -> np.ndarray:
    """A crossbar matrix's weights, float32 K x N: ``w`` itself when it already is float32 and C- or
    Fortran-contiguous (a transposed ONNX weight stays a view of the model's constant, not a copy) or a
    placeholder (a plan: no values to lay out), else a C-contiguous float32 copy."""
    if is_placeholder(w) or w.dtype == np.float32 and (w.flags.c_contiguous or w.flags.f_contiguous):
        return w
    return np.ascontiguousarray(w, dtype=np.float32)


@dataclass
class MVM:
    """An analog op lowered to y = alpha * (x @ W) + bias, per group.

    ``kind`` says how the activation becomes rows of x: "dense" takes the last
    axis (``transpose`` when the constant is the left MatMul operand or Gemm has
    transA), "conv" unfolds receptive fields (im2col).
    """

    node: str
    op_type: str
    kind: str  # "dense" or "conv"
    input: str
    output: str
    matrices: list[str]
    bias: np.ndarray | None = None  # per output column (or broadcastable Gemm C)
    alpha: float = 1.0
    params: dict[str, Any] = field(default_factory=dict)
    # A fused activation at the tile output: {"op": "Relu"|"HardSigmoid"|"Clip", "node": name, ...params}.
    activation: dict[str, Any] | None = None
    input_range: float | None = None  # calibrated full-scale input (set by calibration)
    norm: str | None = None  # a BatchNormalization node folded into the weights and bias

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "kind": self.kind, "input": self.input,
                "output": self.output, "matrices": self.matrices, "alpha": self.alpha,
                "has_bias": self.bias is not None, "params": self.params, "activation": self.activation,
                "input_range": self.input_range, "norm": self.norm}


@dataclass
class Stage:
    """A step of execution: an analog stage (MVMs) or a host stage (an ONNX subgraph)."""

    name: str
    kind: str  # "analog", "host" or "recurrent" (one LSTM/GRU/RNN cell, run per time step)
    inputs: list[str]
    outputs: list[str]
    nodes: list[str]  # source node names
    model: onnx.ModelProto | None = field(default=None, repr=False)  # host stages only

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind, "inputs": self.inputs,
                             "outputs": self.outputs, "nodes": self.nodes}
        if self.kind == "host":
            d["model"] = f"host/{self.name}.onnx"
        return d


@dataclass
class Slice:
    """A rectangle of one matrix that fits one crossbar, and where it sits."""

    id: int
    matrix: str
    rows: tuple[int, int]  # [start, stop) in the matrix
    cols: tuple[int, int]
    encoding: str
    chip: int | None = None
    tile: int | None = None
    row_offset: int | None = None  # weight rows from the tile's first row
    col_offset: int | None = None
    # Calibrated full-scale output of this slice, in weight units at the slice's smallest conductance scale
    # (Program.column_gains: a per-column matrix's column j converts at output_range / gain j).
    output_range: float | None = None
    slot: int = 0  # time slot on its tile: slices sharing rows or columns of a tile run at different times
    # Which copy of its matrix: copies hold the same weights and share the products (replicate) or each
    # compute all of them, averaged (average): Matrix.copy_mode.
    copy: int = 0
    own_tile: bool = False  # place puts it on a tile of its own (no time-sharing with other layers)

    @property
    def n_rows(self) -> int:
        return self.rows[1] - self.rows[0]

    @property
    def n_cols(self) -> int:
        return self.cols[1] - self.cols[0]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "matrix": self.matrix, "rows": list(self.rows), "cols": list(self.cols),
                "encoding": self.encoding, "chip": self.chip, "tile": self.tile,
                "row_offset": self.row_offset, "col_offset": self.col_offset, "output_range": self.output_range,
                "slot": self.slot, "copy": self.copy, "own_tile": self.own_tile}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Slice:
        return cls(d["id"], d["matrix"], tuple(d["rows"]), tuple(d["cols"]), d["encoding"],  # type: ignore[arg-type]
                   d["chip"], d["tile"], d["row_offset"], d["col_offset"], d["output_range"], d["slot"],
                   int(d.get("copy", 0)), bool(d.get("own_tile", False)))


@dataclass
class Program:
    """The graph being compiled and everything the passes computed about it."""

    graph: Graph
    hardware: HardwareSpec
    inputs: list[TensorInfo]  # graph inputs with the shapes the program was compiled for
    outputs: list[TensorInfo]
    options: dict[str, Any] = field(default_factory=dict)
    model_digest: str | None = None  # anac.core.digest of the ONNX model compiled
    model_file: str | None = None  # the name of the ONNX file compiled (None for an in-memory model)
    produced: set[str] = field(default_factory=lambda: {"graph"})
    # partition
    stages: list[Stage] | None = None
    tensor_elements: dict[str, int] = field(default_factory=dict)  # elements of tensors between stages
    recurrent: dict[str, Any] = field(default_factory=dict)  # node -> anac.core.recurrent.Recurrent
    mvms: dict[str, MVM] | None = None
    matrices: dict[str, Matrix] | None = None
    # prune_inputs: {matrix: {"rows": before, "kept": after}}
    pruning: dict[str, dict[str, int]] | None = None
    # assign_devices: encodings per layer, PCM per weight, budget and solver status
    assignment: dict[str, Any] | None = None
    # split_matrices
    slices: list[Slice] | None = None
    # replicate: copies per layer, the tile budget and the solver status
    replication: dict[str, Any] | None = None
    # average: averaged copies per layer, the tile budget and the estimated error before and after
    averaging: dict[str, Any] | None = None
    # place
    chips_used: int | None = None
    placement_info: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None  # how input/output ranges were set
    schedule: dict[str, Any] | None = None  # schedule_links: timeline, latency, throughput
    timings: dict[str, float] = field(default_factory=dict)
    # Set by `anac plan`: the program was planned from shapes, without weight values; the rules it used.
    plan: dict[str, Any] | None = None
    _targets: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    def targets(self, s: Slice) -> tuple[np.ndarray, np.ndarray]:
        """Target conductances (D x r x c, uS) and per-column scales of a slice.

        Computed on first use from the slice's weights, encoding and scale (a
        loaded program recomputes them the same way; they are not stored) and
        kept as float16: steps of ~0.01 uS at 25 uS, far below the ~0.3 uS
        programming noise.
        """
        if s.id not in self._targets:
            m = self.matrices[s.matrix]  # type: ignore[index]
            # C order whatever the matrix's: clipping's float32 std sums in memory order
            w = np.ascontiguousarray(m.weights[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]])
            t, scale = device_targets(w, self.hardware.encoding(s.encoding), self.hardware.device.g_max_us,
                                      m.per_column, m.clip_sigma)
            self._targets[s.id] = (t.astype(np.float16), scale)
        return self._targets[s.id]

    def column_gains(self, s: Slice) -> np.ndarray | None:
        """A per-column matrix's slice: each column's current per unit of weight output relative to the slice's
        smallest scale (anac.core.conductance.column_gains); None for a per-tile scale (all ones)."""
        m = self.matrices[s.matrix]  # type: ignore[index]
        if not m.per_column:
            return None
        if s.id in self._targets:
            return column_gains(self._targets[s.id][1])
        w = np.ascontiguousarray(m.weights[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]])
        return column_gains(column_scales(w, self.hardware.encoding(s.encoding), self.hardware.device.g_max_us,
                                          True, m.clip_sigma))

    def verify(self) -> None:
        """Check cheap invariants of whatever has been produced; raise AssertionError on a bug."""
        if self.stages is not None:
            _verify_stages(self)
        if self.slices is not None:
            _verify_slices(self)
        if self.chips_used is not None:
            _verify_placement(self)

    @property
    def analog_weights(self) -> int:
        """Weights on crossbars (the zero blocks between packed groups are no weights)."""
        return sum(m.weights.size for m in (self.matrices or {}).values()) - self.zero_block_weights()

    def block_mask(self, matrix: str, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray | None:
        """Which cells of a rectangle of a matrix hold weights, or None when all do.

        A matrix of block-diagonally packed groups (MVM param ``block``: rows and
        columns per group) holds weights only where a row and a column belong to
        the same group; the other cells are never programmed.
        """
        m = self.matrices[matrix]  # type: ignore[index]
        block = (self.mvms or {})[m.node].params.get("block") if m.node in (self.mvms or {}) else None
        if block is None:
            return None
        r = np.arange(rows[0], rows[1]) if m.kept_rows is None else m.kept_rows[rows[0]:rows[1]]
        return (r[:, None] // block[0]) == (np.arange(cols[0], cols[1])[None, :] // block[1])

    def zero_block_weights(self, matrices: list[str] | None = None) -> int:
        """Cells of packed-group matrices (of ``matrices``, default all) outside their groups' blocks."""
        total = 0
        for mid in (self.matrices or {}) if matrices is None else matrices:
            m = self.matrices[mid]  # type: ignore[index]
            mask = self.block_mask(mid, (0, m.shape[0]), (0, m.shape[1]))
            if mask is not None:
                total += int(mask.size - np.count_nonzero(mask))
        return total

    def tiles_used(self) -> list[tuple[int, int]]:
        """Sorted (chip, tile) pairs that hold at least one slice."""
        return sorted({(s.chip, s.tile) for s in self.slices or [] if s.chip is not None})  # type: ignore[misc]

    def pcm_devices(self) -> int:
        """Devices programmed with weights (devices per weight x weights, over all slices)."""
        return sum(s.n_rows * s.n_cols * self.hardware.encoding(s.encoding).devices_per_weight
                   for s in self.slices or [])


def _verify_stages(prog: Program) -> None:
    available = {t.name for t in prog.inputs}
    for st in prog.stages or []:
        missing = [t for t in st.inputs if t not in available]
        if missing:
            raise AssertionError(f"stage {st.name} reads {missing} before they are produced")
        available.update(st.outputs)
    lost = [t.name for t in prog.outputs if t.name not in available]
    if lost:
        raise AssertionError(f"graph outputs {lost} are produced by no stage")


def _verify_slices(prog: Program) -> None:
    covered: dict[tuple[str, int], int] = defaultdict(int)
    for s in prog.slices or []:
        k, n = prog.matrices[s.matrix].shape  # type: ignore[index]
        if not (0 <= s.rows[0] < s.rows[1] <= k and 0 <= s.cols[0] < s.cols[1] <= n):
            raise AssertionError(f"slice {s.id} {s.rows}x{s.cols} outside matrix {s.matrix} of {k}x{n}")
        rows, cols = prog.hardware.weight_grid(s.encoding)
        if s.n_rows > rows or s.n_cols > cols:
            raise AssertionError(f"slice {s.id} of {s.n_rows}x{s.n_cols} exceeds a {rows}x{cols} crossbar")
        covered[(s.matrix, s.copy)] += s.n_rows * s.n_cols
    copies = copy_counts(prog)
    for mid, m in (prog.matrices or {}).items():
        for c in range(copies.get(mid, 1)):
            if covered[(mid, c)] != m.weights.size:
                raise AssertionError(f"slices of {mid} (copy {c}) cover {covered[(mid, c)]} of {m.weights.size} "
                                     f"weights")


COPY_MODES = ("split", "average")


def copy_counts(prog: Program) -> dict[str, int]:
    """Copies of each matrix that has slices (1 unless replicate or average made more)."""
    out: dict[str, int] = {}
    for s in prog.slices or []:
        out[s.matrix] = max(out.get(s.matrix, 1), s.copy + 1)
    return out


def _verify_placement(prog: Program) -> None:
    by_tile: dict[tuple[int, int], list[Slice]] = defaultdict(list)
    for s in prog.slices or []:
        if s.chip is None or s.tile is None or s.row_offset is None or s.col_offset is None:
            raise AssertionError(f"slice {s.id} is not placed")
        if not 0 <= s.tile < prog.hardware.tiles_per_chip:
            raise AssertionError(f"slice {s.id} on tile {s.tile} of a {prog.hardware.tiles_per_chip}-tile chip")
        rows, cols = prog.hardware.weight_grid(s.encoding)
        if s.row_offset + s.n_rows > rows or s.col_offset + s.n_cols > cols:
            raise AssertionError(f"slice {s.id} overflows tile ({s.chip}, {s.tile})")
        by_tile[(s.chip, s.tile)].append(s)
    for key, group in by_tile.items():
        if len({s.encoding for s in group}) > 1:
            raise AssertionError(f"tile {key} mixes encodings")
        if len(group) > 1:  # no two rectangles overlap: each slice against the later ones, vectorised
            r0, c0 = (np.array([getattr(s, f) for s in group]) for f in ("row_offset", "col_offset"))
            r1, c1 = r0 + np.array([s.n_rows for s in group]), c0 + np.array([s.n_cols for s in group])
            for i in range(len(group) - 1):
                hit = (r0[i + 1:] < r1[i]) & (r0[i] < r1[i + 1:]) & (c0[i + 1:] < c1[i]) & (c0[i] < c1[i + 1:])
                if hit.any():
                    other = group[i + 1 + int(np.argmax(hit))]
                    raise AssertionError(f"slices {group[i].id} and {other.id} overlap on tile {key}")
