"""The reference simulator: runs a compiled Program on numpy and onnxruntime.

Host stages run in onnxruntime (sessions made on first use, one intra-op
thread, a bounded number alive: backends/host.py); analog stages run every
MVM batched over all its input rows, with partial sums of slices that share
output columns added digitally.

- ``ideal``: the float weights, no quantization, no noise; matches
  onnxruntime on the original model to float32 rounding. Each matrix is
  assembled once from its slices; a dense MVM is one float32 MatMul on it
  and a conv one Conv (with its bias and ReLU), both run by onnxruntime's
  kernels. With an observer (calibration) slices are summed one by one in
  float64, so each slice's output can be seen.
- ``hardware``: ``program(seed)`` programs the slices' target conductances
  into simulated devices (backends/analog.py), ``at(t)`` reads them t seconds
  later; inputs are quantized to the spec's input bits at each MVM's
  calibrated range, each slice's output to the output bits at its calibrated
  range with saturation, then partial sums, bias and non-fused-at-tile
  activations are applied digitally. A fused activation runs at the tile
  output (before output conversion) when the layer has one row block, no
  bias and alpha 1; otherwise it is applied after the digital sum. A dense
  MVM is one numpy matmul per row block (the slices of a block side by
  side); a conv one onnxruntime Conv per row block, of the quantized input
  with the block's read weights as its kernel (the products its im2col rows
  would give; other MVMs use im2col). Read weights are held once, in buffers
  that ``at(t)`` refills.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from anac.backends.analog import ProgrammedChip, quantize_polarity, quantize_signed, quantize_unsigned
from anac.backends.host import ARENA_SESSIONS, HostStages, Sessions, run_session
from anac.core.dataflow import single_row_block
from anac.core.errors import AnacError, InputError
from anac.core.ir import TensorInfo
from anac.core.program import MVM, Matrix, Program, copy_counts
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

MODES = ("ideal", "hardware")
# observer(kind, key, values): kind "input" (key: MVM node, values: its input rows) or
# "slice" (key: slice id, values: that slice's analog output); calibration uses it.
Observer = Callable[[str, Any, np.ndarray], None]
_NONNEGATIVE = ("Relu", "HardSigmoid")


@dataclass
class _SlicePlan:
    id: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    weights: np.ndarray  # ideal: float64 copy of the slice; hardware: effective float32 weights at time t
    output_range: float | None


@dataclass
class _ConvBlock:
    """Hardware mode: a conv row block as a Conv kernel over the input channels [c0, c1) its rows span."""

    kernel: np.ndarray  # (out channels, c1 - c0, *kernel) read weights, zero at rows of other blocks
    c0: int
    c1: int
    kept: np.ndarray | None  # the matrix's kept rows (prune_inputs), indices into (channel, kernel...) rows
    full_scale: np.ndarray  # (1, out channels, 1, ...): each output channel's range


@dataclass
class _RowBlocks:
    """Hardware mode: one matrix's slices grouped by row block, so an MVM is one matmul per row block.

    Row block i covers the matrix rows [starts[i], stops[i]) and columns [cols[i][0], cols[i][1]) (only
    those its slices use, not the tile's): ``weights[i]`` is (stops[i] - starts[i], columns), the read
    weights of the slices of that block side by side (zero where no slice holds a column);
    ``full_scale[i]`` is (columns,), each column's output range, that of the slice holding it.
    """

    starts: list[int]
    stops: list[int]
    cols: list[tuple[int, int]]
    weights: list[np.ndarray]
    full_scale: list[np.ndarray]


def tile_activation(prog: Program, mvm: MVM) -> bool:
    """Whether a fused activation can run at the tile output (no digital work before it)."""
    if mvm.activation is None or mvm.bias is not None or mvm.alpha != 1.0:
        return False
    return single_row_block(prog, mvm)


class Simulator:
    """A program prepared for repeated runs: sessions made and slices laid out once."""

    def __init__(self, prog: Program, mode: str = "ideal", observer: Observer | None = None,
                 host_threads: int = 1) -> None:
        if mode not in MODES:
            raise AnacError(f"unknown simulation mode '{mode}'; available: {', '.join(MODES)}")
        self.prog, self.mode, self.observer = prog, mode, observer
        self.chip: ProgrammedChip | None = None
        self.t: float | None = None
        stages = prog.stages or []
        n_sessions = sum(st.kind == "host" for st in stages) + len(prog.mvms or {}) \
            + sum(len(cell.models) for rec in prog.recurrent.values() for cell in rec.cells)
        self._sessions = Sessions(host_threads, arena=n_sessions <= ARENA_SESSIONS)
        self._host = HostStages(self._sessions)
        self._plans: dict[str, list[list[_SlicePlan]]] = {}
        self._stacks: dict[str, list[_RowBlocks]] = {}
        self._tile_act = {m.node: tile_activation(prog, m) for m in (prog.mvms or {}).values()}
        # Ideal mode with an observer sums slice by slice in float64 (each slice's output is seen);
        # otherwise slices are views of their matrix (no copy).
        per_slice = mode == "ideal" and observer is not None
        by_matrix: dict[str, list[_SlicePlan]] = {}
        # Copies (replicate) hold the same weights: the plans are copy 0's. Hardware mode runs a replicated
        # layer once per copy with that copy's read weights in copy 0's buffers, each copy giving its share
        # of the products (_run_copies); in ideal mode the split is the identity.
        self._copies = {m: k for m, k in copy_counts(prog).items() if k > 1}
        self._copy_reads: dict[tuple[str, int], np.ndarray] = {}  # (matrix, copy) -> its read weights
        for s in prog.slices or []:
            if s.copy:
                continue
            w = prog.matrices[s.matrix].weights  # type: ignore[index]
            block = w[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]]
            block = np.ascontiguousarray(block, dtype=np.float64) if per_slice else block
            by_matrix.setdefault(s.matrix, []).append(_SlicePlan(s.id, s.rows, s.cols, block, s.output_range))
        for mvm in (prog.mvms or {}).values():
            self._plans[mvm.node] = [by_matrix[m] for m in mvm.matrices]
        # Ideal mode without an observer: each matrix as one float32 array (the matrix itself when its
        # slices cover it), so an MVM is one float32 matmul, run by onnxruntime as it runs the model's.
        # A conv runs as one onnxruntime Conv on those weights (im2col's product without its memory traffic).
        self._dense: dict[int, np.ndarray] = {}
        self._conv_models: dict[str, tuple[onnx.ModelProto, bool]] = {}  # node -> (model, holds all the MVM)
        # Hardware mode: each conv row block's read weights as a Conv kernel, with its input channels
        # [c0, c1) and output ranges; each slice's destinations for Simulator.at.
        self._conv_blocks: dict[str, list[list[_ConvBlock]]] = {}
        self._slots: dict[int, list[tuple[np.ndarray, Any, bool]]] = {}
        self._epilogue: dict[int, tuple[np.ndarray | None, bool]] = {}  # ideal dense MatMul models: bias, ReLU
        self._whole: set[str] = set()  # ideal MVMs whose model holds all of them
        if mode == "ideal" and not per_slice:
            for mvm in (prog.mvms or {}).values():
                dense = [_dense(prog.matrices[m].weights, plans)  # type: ignore[index]
                         for m, plans in zip(mvm.matrices, self._plans[mvm.node], strict=True)]
                conv = _conv_model(mvm, [prog.matrices[m] for m in mvm.matrices], dense)  # type: ignore[index]
                if conv is not None:
                    self._conv_models[mvm.node] = conv
                    continue
                for plans, w in zip(self._plans[mvm.node], dense, strict=True):
                    self._dense[id(plans)] = w
                epilogue = _dense_epilogue(mvm, prog.matrices[mvm.matrices[0]], dense[0])  # type: ignore[index]
                if epilogue is not None:  # bias and ReLU run in the MatMul's model
                    self._epilogue[id(self._plans[mvm.node][0])] = epilogue
                    self._whole.add(mvm.node)
        if mode == "hardware":
            missing = [m.node for m in (prog.mvms or {}).values() if m.input_range is None]
            if missing or any(s.output_range is None for s in prog.slices or []):
                raise AnacError(f"the program has no calibrated input/output ranges (e.g. for "
                                f"{', '.join(missing[:3]) or 'its slices'}); calibrate it first "
                                f"(anac compile --calibration-data FILE, or anac.backends.calibrate.calibrate)")

    def program(self, seed: int) -> ProgrammedChip:
        """Hardware mode: program a fresh chip instance (seeded); it is read right after programming
        unless ``at(t)`` picks another time before the first run."""
        self._need_hardware("program")
        self.chip, self.t = None, None  # the previous instance is dropped before the next is drawn
        self.chip = ProgrammedChip(self.prog, seed)
        return self.chip

    def at(self, t: float, drift_compensation: bool = True) -> None:
        """Hardware mode: read the programmed devices ``t`` seconds after programming.

        Each slice's read is copied into its row block as it comes, so the read weights are held
        once (float32), in buffers made at the first read and reused for every later time and chip.
        """
        self._need_hardware("at")
        if self.chip is None:
            raise AnacError("program a chip instance (Simulator.program(seed)) before reading it")
        if not self._stacks:
            self._layout()
        self.t = None
        for sid, w in self.chip.read_at(t, drift_compensation):
            sl = self.prog.slices[sid]  # type: ignore[index]
            if sl.matrix in self._copies:
                key = (sl.matrix, sl.copy)
                if key not in self._copy_reads:
                    self._copy_reads[key] = np.zeros(self.prog.matrices[sl.matrix].shape, np.float32)  # type: ignore[index]
                self._copy_reads[key][sl.rows[0]:sl.rows[1], sl.cols[0]:sl.cols[1]] = w
            for buf, index, transposed in self._slots.get(sid, ()):
                buf[index] = w.T if transposed else w
        self.t = t

    def _load_copy(self, mvm: MVM, copy: int) -> None:
        """Hardware mode: put copy ``copy``'s read weights of a replicated layer in its buffers (copy 0's slots)."""
        for mid in mvm.matrices:
            reads = self._copy_reads[(mid, copy)]
            for p in self._plans[mvm.node][mvm.matrices.index(mid)]:
                w = reads[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
                for buf, index, transposed in self._slots[p.id]:
                    buf[index] = w.T if transposed else w

    def _run_copies(self, mvm: MVM, x: np.ndarray, step: int) -> np.ndarray:
        """Hardware mode, a replicated layer: its products (rows of x: batch x output positions, or batch rows)
        split in contiguous bands across its copies, each band computed with that copy's devices; with fewer
        products than copies (a recurrent step) the whole step on copy ``step`` mod copies."""
        k = max(self._copies[m] for m in mvm.matrices)
        outs = []
        try:
            for c in range(k):
                self._load_copy(mvm, c)
                outs.append(self._run_mvm_once(mvm, x))
        finally:
            self._load_copy(mvm, 0)
        rows = [_product_rows(mvm, y) for y in outs]
        n = len(rows[0])
        if n < k:
            return outs[step % k]
        bands = np.array_split(np.arange(n), k)
        mixed = np.concatenate([r[b] for r, b in zip(rows, bands, strict=True)])
        return _from_product_rows(mvm, mixed, outs[0])

    def read_weight_bytes(self) -> int:
        """Hardware mode: bytes of the read weights held (row blocks and conv kernels; 0 before the first read)."""
        dense = sum(w.nbytes for blocks in self._stacks.values() for b in blocks for w in b.weights)
        return dense + sum(b.kernel.nbytes for groups in self._conv_blocks.values() for g in groups for b in g)

    def _layout(self) -> None:
        """Hardware mode: the buffers the read weights go to, and where each slice's read lands.

        A dense MVM's matrix: its row blocks (``_RowBlocks``). A conv's: per row block, a Conv kernel
        (out channels, the input channels the block's rows span, *kernel), zero where its rows are not.
        """
        for node, plans in self._plans.items():
            mvm = self.prog.mvms[node]  # type: ignore[index]
            matrices = [self.prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
            conv = _hw_conv_model(mvm, len(matrices))
            self._stacks[node] = [_row_blocks(group, conv is None) for group in plans]
            if conv is not None:
                self._conv_models[node] = (conv, False)
                self._conv_blocks[node] = [_conv_blocks(mvm, m, blocks)
                                           for m, blocks in zip(matrices, self._stacks[node], strict=True)]
            for g, (group, blocks) in enumerate(zip(plans, self._stacks[node], strict=True)):
                for p in group:
                    i = blocks.starts.index(p.rows[0])
                    if conv is None:
                        c0 = blocks.cols[i][0]
                        slot = (blocks.weights[i], (slice(0, p.rows[1] - p.rows[0]),
                                                    slice(p.cols[0] - c0, p.cols[1] - c0)), False)
                    else:
                        b = self._conv_blocks[node][g][i]
                        base = b.c0 * int(np.prod(mvm.params["kernel"]))
                        rows: Any = slice(p.rows[0] - base, p.rows[1] - base) if b.kept is None \
                            else b.kept[p.rows[0]:p.rows[1]] - base
                        slot = (b.kernel.reshape(b.kernel.shape[0], -1), (slice(*p.cols), rows), True)
                    self._slots.setdefault(p.id, []).append(slot)

    def _need_hardware(self, what: str) -> None:
        if self.mode != "hardware":
            raise AnacError(f"Simulator.{what}() is for hardware mode; this simulator is in {self.mode} mode")

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the program for one set of inputs (keyed by graph input name)."""
        if self.mode == "hardware" and self.t is None:
            if self.chip is None:
                raise AnacError("program a chip instance (Simulator.program(seed)) before running in hardware mode")
            self.at(0.0)
        env: dict[str, object] = dict(check_inputs(self.prog.inputs, inputs))
        for stage in self.prog.stages or []:
            if stage.kind == "host":
                self._host.run(stage, env)
            elif stage.kind == "recurrent":
                rec = self.prog.recurrent[stage.nodes[0]]
                env.update(self._run_recurrent(rec, env))
            else:
                for node in stage.nodes:
                    mvm = self.prog.mvms[node]  # type: ignore[index]
                    env[mvm.output] = self._run_mvm(mvm, env[mvm.input])  # type: ignore[arg-type]
        return {t.name: env[t.name] for t in self.prog.outputs}  # type: ignore[misc]

    def _matmul_ideal(self, mvm: MVM, x: np.ndarray, plans: list[_SlicePlan], n: int) -> np.ndarray:
        """x (M x K) @ W: one onnxruntime MatMul on the assembled matrix (the same float32 kernel the
        reference runs), or, with an observer, slice by slice in float64 rounded to float32 once
        (float32 slice sums could round equal columns one ULP apart depending on which slice holds them).
        """
        dense = self._dense.get(id(plans))
        if dense is not None:
            if not x.size or dense.size < _ORT_MATMUL:
                return x @ dense
            sess = self._sessions.get(("matmul", id(plans)),
                                      lambda: _matmul_model(dense, *self._epilogue.get(id(plans), (None, False))),
                                      f"the MVM of {mvm.node}")[0]
            return run_session(sess, {"x": np.ascontiguousarray(x)}, f"the MVM of {mvm.node}")[0]  # type: ignore[no-any-return]
        if self.observer is not None:
            self.observer("input", mvm.node, x)
        x = x.astype(np.float64)
        y = np.zeros((x.shape[0], n), dtype=np.float64)
        for p in plans:
            part = x[:, p.rows[0]:p.rows[1]] @ p.weights
            if self.observer is not None:
                seen = apply_activation(part, mvm.activation) if self._tile_act[mvm.node] else part
                self.observer("slice", p.id, seen)
            y[:, p.cols[0]:p.cols[1]] += part
        return y.astype(np.float32)

    def _matmul_hardware(self, mvm: MVM, x: np.ndarray, blocks: _RowBlocks, n: int,
                         quantized: bool = False) -> np.ndarray:
        """Quantized inputs, each slice's analog product with its read weights, quantized outputs, digital sum.

        The slices of a row block run as one matmul over the rows they use; the output of each
        (row block, column) is converted at its slice's range before the digital sum.
        """
        hw = self.prog.hardware
        r_in = float(mvm.input_range)  # type: ignore[arg-type]
        m, k = x.shape
        if quantized:  # polarity inputs quantized before im2col (elementwise, so the same values)
            xq = x
        elif hw.input_sign == "two-pass":  # both passes in one product: rows [0, m) positive, [m, 2m) negative
            xq = np.concatenate([quantize_unsigned(np.maximum(x, 0), r_in, hw.input_bits),
                                 quantize_unsigned(np.maximum(-x, 0), r_in, hw.input_bits)])
        else:
            xq = quantize_polarity(x, r_in, hw.input_bits)
        if self._tile_act[mvm.node]:
            unsigned = mvm.activation["op"] in _NONNEGATIVE  # type: ignore[index]
        else:
            unsigned = False
        quantize = quantize_unsigned if unsigned else quantize_signed
        y: np.ndarray | None = None
        for start, stop, (c0, c1), w, scale in zip(blocks.starts, blocks.stops, blocks.cols, blocks.weights,
                                                   blocks.full_scale, strict=True):
            part = xq[:, start:stop] @ w if (start, stop) != (0, k) else xq @ w
            if self._tile_act[mvm.node]:
                part = apply_activation(part, mvm.activation)  # type: ignore[arg-type]
            q = quantize(part, scale, hw.output_bits, inplace=True)  # part: a fresh product
            if (c0, c1) == (0, n):
                y = q if y is None else np.add(y, q, out=y)
            else:  # a block of some columns: the others get nothing from it (0 + ... keeps the sums' values)
                y = np.zeros((xq.shape[0], n), np.float32) if y is None else y
                y[:, c0:c1] += q
        assert y is not None  # a matrix has at least one slice
        return y[:m] - y[m:] if hw.input_sign == "two-pass" else y

    def _conv_hardware(self, mvm: MVM, x: np.ndarray) -> np.ndarray:
        """A conv in hardware mode: per row block, one onnxruntime Conv of the quantized input with the block's
        read weights (the products im2col rows would give), then that block's output conversion; digital sum."""
        _check_conv_rank(mvm, x)
        hw = self.prog.hardware
        batch = x.shape[0]
        if hw.input_sign == "two-pass":  # both passes at once: batch [0, B) positive, [B, 2B) negative
            r_in = float(mvm.input_range)  # type: ignore[arg-type]
            x = np.concatenate([quantize_unsigned(np.maximum(x, 0), r_in, hw.input_bits),
                                quantize_unsigned(np.maximum(-x, 0), r_in, hw.input_bits)])
        # polarity inputs were quantized by the caller
        sess = self._sessions.get(("conv", mvm.node), self._conv_models[mvm.node][0], f"the conv of {mvm.node}")[0]
        tile_act = self._tile_act[mvm.node]
        unsigned = tile_act and mvm.activation["op"] in _NONNEGATIVE  # type: ignore[index]
        quantize = quantize_unsigned if unsigned else quantize_signed
        cg = mvm.params["in_channels_per_group"]
        outs = []
        for g, blocks in enumerate(self._conv_blocks[mvm.node]):
            y: np.ndarray | None = None
            for b in blocks:
                xb = x[:, g * cg + b.c0:g * cg + b.c1]
                part = run_session(sess, {"x": np.ascontiguousarray(xb), "w": b.kernel}, f"the conv of {mvm.node}")[0]
                if tile_act:
                    part = apply_activation(part, mvm.activation)  # type: ignore[arg-type]
                q = quantize(part, b.full_scale, hw.output_bits, inplace=True)
                y = q if y is None else np.add(y, q, out=y)
            assert y is not None  # a matrix has at least one row block
            outs.append(y[:batch] - y[batch:] if hw.input_sign == "two-pass" else y)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def _run_recurrent(self, rec: Any, env: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One LSTM/GRU/RNN layer: its cell once per time step and direction, with sequence_lens masking."""
        def value(name: str) -> np.ndarray | None:
            if not name:
                return None
            return np.asarray(rec.constants[name] if name in rec.constants else env[name])

        x = np.asarray(value(rec.x))
        x = x if rec.absorbed else x.astype(np.float32)
        if rec.layout:
            x = np.swapaxes(x, 0, 1)  # (batch, seq, in) -> (seq, batch, in)
        seq, batch, hidden = x.shape[0], x.shape[1], rec.hidden  # (seq, batch) token indices when absorbed
        lens = value(rec.sequence_lens)
        lens = np.full(batch, seq) if lens is None else lens.astype(np.int64)
        h0, c0 = value(rec.initial_h), value(rec.initial_c)
        if rec.layout:
            h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
            c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
        ndir = len(rec.directions)
        y = np.zeros((seq, ndir, batch, hidden), np.float32)
        y_h = np.zeros((ndir, batch, hidden), np.float32)
        y_c = np.zeros((ndir, batch, hidden), np.float32)
        for d, (direction, cell) in enumerate(zip(rec.directions, rec.cells, strict=True)):
            # An absorbed embedding: the tokens index the table premultiplied by this direction's W.
            xd = rec.constants[f"table_d{d}"][x] if rec.absorbed else x
            h = np.zeros((batch, hidden), np.float32) if h0 is None else h0[d].astype(np.float32)
            c = np.zeros((batch, hidden), np.float32) if c0 is None else c0[d].astype(np.float32)
            order = range(seq) if direction == "forward" else range(seq - 1, -1, -1)
            for t in order:
                e: dict[str, np.ndarray] = {"x": xd[t], "h": h, "c": c}
                for step in cell.steps:
                    if step[0] == "concat":
                        e[step[1]] = np.concatenate([e[a] for a in step[2]], axis=1)
                    elif step[0] == "add":
                        e[step[1]] = (e[step[2][0]] + e[step[2][1]]).astype(np.float32)
                    elif step[0] == "mvm":
                        e[step[3]] = self._run_mvm(self.prog.mvms[step[1]], e[step[2]], t)  # type: ignore[index]
                    else:
                        sess = self._sessions.get((rec.node, d, step[1]), cell.models[step[1]],
                                                  f"the cell of {rec.node} (direction {d}, part {step[1]})")[0]
                        outs = run_session(sess, {n: e[n] for n in step[2]}, f"the cell of {rec.node}")
                        e.update(zip(step[3], outs, strict=True))
                active = (t < lens)[:, None]
                h = np.where(active, e["h_new"], h).astype(np.float32)
                c = np.where(active, e["c_new"], c).astype(np.float32)
                y[t, d] = np.where(active, e["h_new"], 0)
            y_h[d], y_c[d] = h, c
        if rec.layout:
            y, y_h, y_c = np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(y_c, 0, 1)
        return {name: v for name, v in zip(rec.outputs, (y, y_h, y_c), strict=True) if name}

    def _run_mvm(self, mvm: MVM, x: np.ndarray, step: int = 0) -> np.ndarray:
        if self.mode == "hardware" and any(m in self._copies for m in mvm.matrices):
            return self._run_copies(mvm, x, step)
        return self._run_mvm_once(mvm, x)

    def _run_mvm_once(self, mvm: MVM, x: np.ndarray) -> np.ndarray:
        matrices = [self.prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
        groups = self._plans[mvm.node] if self.mode == "ideal" else self._stacks[mvm.node]
        # Each group: its kept input rows (None = all, else the rows prune_inputs kept) and its slices.
        plans: list[Any] = [(m.kept_rows, g) for m, g in zip(matrices, groups, strict=True)]
        shapes = [(m.input_rows, m.shape[1]) for m in matrices]
        x = np.asarray(x, dtype=np.float32)
        quantized = self.mode == "hardware" and mvm.kind == "conv" and self.prog.hardware.input_sign == "polarity"
        if quantized:  # quantize each input once, not once per receptive field that holds it
            x = quantize_polarity(x, float(mvm.input_range), self.prog.hardware.input_bits)  # type: ignore[arg-type]

        def matmul(rows: np.ndarray, group: Any, n: int) -> np.ndarray:
            kept, inner = group
            rows = rows if kept is None else rows[:, kept]
            if self.mode == "ideal":
                return self._matmul_ideal(mvm, rows, inner, n)
            return self._matmul_hardware(mvm, rows, inner, n, quantized)

        if mvm.node in self._conv_blocks:
            y = self._conv_hardware(mvm, x)
        elif mvm.node in self._conv_models:
            _check_conv_rank(mvm, x)
            model, whole = self._conv_models[mvm.node]
            sess = self._sessions.get(("conv", mvm.node), model, f"the conv of {mvm.node}")[0]
            y = run_session(sess, {"x": x}, f"the conv of {mvm.node}")[0]
            if whole:  # bias and ReLU ran in the Conv model
                return y  # type: ignore[no-any-return]
        elif mvm.kind == "conv":
            y = _conv(x, mvm, plans, shapes, matmul)
        else:
            p = mvm.params
            if p["x_transpose"]:
                x = np.swapaxes(x, -1, -2)
            k, n = shapes[0]
            lead = x.shape[:-1]
            y = matmul(x.reshape(-1, k), plans[0], n).reshape(lead + (n,))
            if mvm.node in self._whole:
                return y
            if p["squeeze"]:
                y = y[..., 0]
            if p["y_transpose"]:
                y = np.swapaxes(y, -1, -2)
        if mvm.alpha != 1.0:
            y = y * np.float32(mvm.alpha)
        if mvm.bias is not None:
            bias = mvm.bias
            if mvm.kind == "conv":
                bias = bias.reshape((-1,) + (1,) * (y.ndim - 2))
            # y is a fresh float32 buffer (or a view of one) that nothing else holds: add in place
            if y.dtype == np.float32 and bias.dtype == np.float32 and y.flags.writeable \
                    and np.broadcast_shapes(y.shape, bias.shape) == y.shape:
                np.add(y, bias, out=y)
            else:
                y = y + bias
        if mvm.activation is not None and not (self.mode == "hardware" and self._tile_act[mvm.node]):
            if mvm.activation["op"] == "Relu" and y.dtype == np.float32 and y.flags.writeable:
                np.maximum(y, np.float32(0), out=y)
            else:
                y = apply_activation(y, mvm.activation)  # ideal mode: after the sum, the same with one row block
        # not ascontiguousarray: it turns the 0-d result of a 1-D @ 1-D MatMul into shape (1,)
        return np.asarray(y, dtype=np.float32, order="C")


def _product_rows(mvm: MVM, y: np.ndarray) -> np.ndarray:
    """An MVM's output as one row per product (a conv's (batch, position); a dense layer's input row)."""
    if mvm.kind == "conv":
        return np.moveaxis(y, 1, -1).reshape(-1, y.shape[1])
    if mvm.params.get("y_transpose"):
        y = np.swapaxes(y, -1, -2)
    return y.reshape(-1, y.shape[-1]) if y.ndim else y.reshape(1, 1)


def _from_product_rows(mvm: MVM, rows: np.ndarray, like: np.ndarray) -> np.ndarray:
    """The inverse of _product_rows, to the shape of ``like``."""
    if mvm.kind == "conv":
        return np.ascontiguousarray(np.moveaxis(rows.reshape((like.shape[0],) + like.shape[2:] + (like.shape[1],)),
                                                -1, 1))
    if mvm.params.get("y_transpose"):
        swapped = like.shape[:-2] + (like.shape[-1], like.shape[-2])
        return np.ascontiguousarray(np.swapaxes(rows.reshape(swapped), -1, -2))
    return rows.reshape(like.shape)


def _row_blocks(group: list[_SlicePlan], weights: bool = True) -> _RowBlocks:
    """A matrix's row blocks with zero weights (``Simulator.at`` fills them; none unless ``weights``) and
    each column's output range."""
    starts = sorted({p.rows[0] for p in group})
    stops = [max(p.rows[1] for p in group if p.rows[0] == start) for start in starts]
    cols = [(min(p.cols[0] for p in group if p.rows[0] == start),
             max(p.cols[1] for p in group if p.rows[0] == start)) for start in starts]
    ws = [np.zeros((stop - start, c1 - c0), np.float32)
          for start, stop, (c0, c1) in zip(starts, stops, cols, strict=True)] if weights else []
    scales = [np.ones(c1 - c0, np.float32) for c0, c1 in cols]
    for p in group:
        i = starts.index(p.rows[0])
        scales[i][p.cols[0] - cols[i][0]:p.cols[1] - cols[i][0]] = p.output_range
    return _RowBlocks(starts, stops, cols, ws, scales)


def _dense(weights: np.ndarray, plans: list[_SlicePlan]) -> np.ndarray:
    """The float32 matrix a matrix's slices tile: ``weights`` itself when they cover all of it."""
    covered = np.zeros(weights.shape, bool)
    for p in plans:
        covered[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]] = True
    if covered.all():
        return np.ascontiguousarray(weights, dtype=np.float32)
    w = np.zeros(weights.shape, np.float32)
    for p in plans:
        w[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]] = p.weights
    return w


def apply_activation(y: np.ndarray, act: dict) -> np.ndarray:  # type: ignore[type-arg]
    """A fused tile-output activation (ReLU, hard-sigmoid, or Clip as hard-tanh)."""
    if act["op"] == "Relu":
        return np.maximum(y, np.float32(0))
    if act["op"] == "HardSigmoid":
        return np.clip(np.float32(act["alpha"]) * y + np.float32(act["beta"]), 0, 1).astype(np.float32)
    lo = -np.inf if act["min"] is None else np.float32(act["min"])
    hi = np.inf if act["max"] is None else np.float32(act["max"])
    return np.clip(y, lo, hi).astype(np.float32)


def _conv(x: np.ndarray, mvm: MVM, plans: list[Any], shapes: list[tuple[int, int]],
          matmul: Callable[[np.ndarray, Any, int], np.ndarray]) -> np.ndarray:
    """Conv as im2col + MVM per group: rows are receptive fields, ordered (channel, kernel...)."""
    p = mvm.params
    kernel, strides, dil = p["kernel"], p["strides"], p["dilations"]
    nsp = len(kernel)
    _check_conv_rank(mvm, x)
    spatial = x.shape[2:]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    if p.get("transpose"):
        xp, strides = _transpose_input(x, p, eff), [1] * nsp
    else:
        begin, end = _conv_pads(p["auto_pad"], p["pads"], spatial, strides, eff)
        xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end, strict=True)))
    taps = int(np.prod(kernel))
    batch = x.shape[0]
    outs = []
    axes = tuple(range(2, 2 + nsp))
    c0 = 0  # a matrix's input channels follow the previous one's (one group, or a pack of groups)
    for gplans, (k, n) in zip(plans, shapes, strict=True):
        xg = xp[:, c0:c0 + k // taps]
        c0 += k // taps
        win = sliding_window_view(xg, eff, axis=axes)  # (B, Cg, *S_full, *eff)
        sl = (slice(None), slice(None)) + tuple(slice(None, None, s) for s in strides) \
            + tuple(slice(None, None, d) for d in dil)
        win = win[sl]  # (B, Cg, *S_out, *kernel)
        out_sp = win.shape[2:2 + nsp]
        perm = (0,) + tuple(range(2, 2 + nsp)) + (1,) + tuple(range(2 + nsp, 2 + 2 * nsp))
        cols = np.ascontiguousarray(win.transpose(perm)).reshape(-1, k)
        y = matmul(cols, gplans, n).reshape((batch,) + out_sp + (n,))
        outs.append(np.moveaxis(y, -1, 1))
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)


def _transpose_input(x: np.ndarray, p: dict[str, Any], eff: list[int]) -> np.ndarray:
    """ConvTranspose as a stride-1 Conv: the input dilated by the strides, padded by eff - 1 - pad
    (cropped where that is negative) and by the output padding at the end."""
    nsp = len(eff)
    spatial, strides = x.shape[2:], p["strides"]
    begin, end = transpose_pads(p, spatial, eff)
    dilated = np.zeros(x.shape[:2] + tuple((s - 1) * st + 1 for s, st in zip(spatial, strides, strict=True)),
                       x.dtype)
    dilated[(slice(None), slice(None)) + tuple(slice(None, None, st) for st in strides)] = x
    lo = [e - 1 - b for e, b in zip(eff, begin, strict=True)]
    hi = [e - 1 - n for e, n in zip(eff, end, strict=True)]
    xp = np.pad(dilated, [(0, 0), (0, 0)] + [(max(0, a), max(0, b)) for a, b in zip(lo, hi, strict=True)])
    crop = tuple(slice(max(0, -a), xp.shape[2 + i] - max(0, -b)) for i, (a, b) in enumerate(zip(lo, hi, strict=True)))
    assert len(crop) == nsp
    return xp[(slice(None), slice(None)) + crop]


def transpose_pads(p: dict[str, Any], spatial: tuple[int, ...], eff: list[int]) -> tuple[list[int], list[int]]:
    """ConvTranspose pads (begin, end with the output padding taken off the end), as onnxruntime computes
    them: explicit pads, or from ``output_shape`` / SAME auto_pad (the odd unit at the tail for SAME_UPPER,
    at the head otherwise)."""
    nsp = len(spatial)
    strides, out_pad = p["strides"], p["output_padding"]
    full = [(s - 1) * st + op + e for s, st, op, e in zip(spatial, strides, out_pad, eff, strict=True)]
    target = p.get("output_shape")
    if target is None and p["auto_pad"] in ("SAME_UPPER", "SAME_LOWER"):
        target = [s * st for s, st in zip(spatial, strides, strict=True)]
    if target is None:
        begin, end = list(p["pads"][:nsp]), list(p["pads"][nsp:])
        if p["auto_pad"] == "VALID":
            begin, end = [0] * nsp, [0] * nsp
    else:
        total = [max(0, f - t) for f, t in zip(full, target, strict=True)]
        upper = p["auto_pad"] == "SAME_UPPER"
        begin = [t // 2 if upper else t - t // 2 for t in total]
        end = [t - b for t, b in zip(total, begin, strict=True)]
    return begin, [e - op for e, op in zip(end, out_pad, strict=True)]


_ORT_MATMUL = 16384  # weights from which a session's packed MatMul beats numpy's (below, call overhead rules)


def _dense_epilogue(mvm: MVM, matrix: Matrix, w: np.ndarray) -> tuple[np.ndarray | None, bool] | None:
    """Ideal mode: (bias, ReLU) for a dense MVM whose MatMul model can hold all of it (one matrix of
    at least _ORT_MATMUL weights, no pruned rows, alpha 1, a bias per column, a ReLU if any, no output
    transpose or squeeze); None otherwise."""
    p, act, bias = mvm.params, mvm.activation, mvm.bias
    if mvm.kind != "dense" or len(mvm.matrices) != 1 or matrix.kept_rows is not None or w.size < _ORT_MATMUL \
            or p["squeeze"] or p["y_transpose"] or mvm.alpha != 1.0 or (act is not None and act["op"] != "Relu") \
            or (bias is not None and (bias.dtype != np.float32 or bias.shape != (w.shape[1],))):
        return None
    return bias, act is not None


def _matmul_model(w: np.ndarray, bias: np.ndarray | None = None, relu: bool = False) -> onnx.ModelProto:
    """Ideal mode: x (M x K) @ w (+ bias) (then ReLU) as one ONNX model (onnxruntime packs w once per session)."""
    inits = [numpy_helper.from_array(w, "w")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["p"])]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias, "b"))
        nodes.append(helper.make_node("Add", ["p", "b"], ["s"]))
    if relu:
        nodes.append(helper.make_node("Relu", [nodes[-1].output[0]], ["r"]))
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(nodes, "mvm",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", w.shape[0]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", w.shape[1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _check_conv_rank(mvm: MVM, x: np.ndarray) -> None:
    nsp = len(mvm.params["kernel"])
    if x.ndim != nsp + 2:
        raise InputError(f"node '{mvm.node}' (Conv): input of rank {x.ndim}, a {nsp}-D kernel needs rank {nsp + 2}")


_CONV_PARAMS = {"kernel", "strides", "dilations", "pads", "auto_pad", "group", "in_channels_per_group",
                "out_channels_per_group", "traffic"}  # traffic: what schedule_links counted


def _conv_model(mvm: MVM, matrices: list[Matrix], dense: list[np.ndarray]) -> tuple[onnx.ModelProto, bool] | None:
    """Ideal mode: a conv MVM as one ONNX Conv whose kernel is its matrices' weights (one matrix per group,
    rows ordered (channel, kernel...), pruned rows back as zeros), with the bias and a ReLU when alpha is 1
    (then the model is the whole MVM: True); None for any other MVM."""
    p = mvm.params
    if mvm.kind != "conv" or mvm.op_type != "Conv" or set(p) - _CONV_PARAMS or len(matrices) != p["group"]:
        return None
    kernels = []
    for m, w in zip(matrices, dense, strict=True):
        if m.kept_rows is not None:
            full = np.zeros((m.input_rows, w.shape[1]), np.float32)
            full[m.kept_rows] = w
            w = full
        kernels.append(w.T.reshape(w.shape[1], p["in_channels_per_group"], *p["kernel"]))
    nsp = len(p["kernel"])
    attrs: dict[str, Any] = {"kernel_shape": p["kernel"], "strides": p["strides"], "dilations": p["dilations"],
                             "group": p["group"]}
    if p["auto_pad"] in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs["auto_pad"] = p["auto_pad"]
    else:
        attrs["pads"] = p["pads"]
    dims = ["batch", "channels", *(f"d{i}" for i in range(nsp))]
    inits = [numpy_helper.from_array(np.ascontiguousarray(np.concatenate(kernels)), "w")]
    whole = mvm.alpha == 1.0 and (mvm.activation is None or mvm.activation["op"] == "Relu")
    if whole and mvm.bias is not None:
        inits.append(numpy_helper.from_array(mvm.bias.astype(np.float32).reshape(-1), "b"))
    nodes = [helper.make_node("Conv", [i.name for i in inits] and ["x", *(i.name for i in inits)],
                              ["c" if whole and mvm.activation is not None else "y"], **attrs)]
    if whole and mvm.activation is not None:
        nodes.append(helper.make_node("Relu", ["c"], ["y"]))
    graph = helper.make_graph(nodes, mvm.node, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, whole


def _hw_conv_model(mvm: MVM, n_matrices: int) -> onnx.ModelProto | None:
    """Hardware mode: a Conv taking its kernel as an input (one row block's read weights), for a conv MVM
    with one matrix per group; None for any other MVM."""
    p = mvm.params
    if mvm.kind != "conv" or mvm.op_type != "Conv" or set(p) - _CONV_PARAMS or n_matrices != p["group"]:
        return None
    nsp = len(p["kernel"])
    attrs: dict[str, Any] = {"kernel_shape": p["kernel"], "strides": p["strides"], "dilations": p["dilations"]}
    if p["auto_pad"] in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs["auto_pad"] = p["auto_pad"]
    else:
        attrs["pads"] = p["pads"]
    dims = ["batch", "channels", *(f"d{i}" for i in range(nsp))]
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], **attrs)], mvm.node,
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, ["n", "c", *p["kernel"]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _conv_blocks(mvm: MVM, matrix: Matrix, blocks: _RowBlocks) -> list[_ConvBlock]:
    """A conv matrix's row blocks as Conv kernels (zero; ``Simulator.at`` fills them)."""
    kernel = mvm.params["kernel"]
    kk = int(np.prod(kernel))
    kept = None if matrix.kept_rows is None else np.asarray(matrix.kept_rows)
    n = matrix.shape[1]
    out = []
    for start, stop, (q0, q1), scale in zip(blocks.starts, blocks.stops, blocks.cols, blocks.full_scale,
                                            strict=True):
        first, last = (start, stop - 1) if kept is None else (int(kept[start]), int(kept[stop - 1]))
        c0, c1 = first // kk, last // kk + 1
        full = np.ones(n, np.float32)
        full[q0:q1] = scale
        out.append(_ConvBlock(np.zeros((n, c1 - c0, *kernel), np.float32), c0, c1, kept,
                              full.reshape((1, n) + (1,) * len(kernel))))
    return out


def _conv_pads(auto_pad: str, pads: list[int], spatial: tuple[int, ...], strides: list[int],
               eff: list[int]) -> tuple[list[int], list[int]]:
    nsp = len(spatial)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for s, st, e in zip(spatial, strides, eff, strict=True):
            out = -(-s // st)
            total = max(0, (out - 1) * st + e - s)
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
        return begin, end
    if auto_pad == "VALID":
        return [0] * nsp, [0] * nsp
    return list(pads[:nsp]), list(pads[nsp:])


def check_inputs(expected: Sequence[TensorInfo], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inputs as arrays, checked against the expected names, dtypes and (non-symbolic) dims."""
    names = {t.name for t in expected}
    missing = [t.name for t in expected if t.name not in inputs]
    extra = [n for n in inputs if n not in names]
    if missing or extra:
        what = "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                     f"unknown {', '.join(extra)}" if extra else "") if p)
        raise InputError(f"inputs do not match the model: {what}; it takes "
                         + ", ".join(f"{t.name} {t.dtype if t.elem_type else '?'} {list(t.shape or [])}"
                                     for t in expected))
    out = {}
    for t in expected:
        arr = np.asarray(inputs[t.name])
        if t.elem_type and arr.dtype != t.dtype:
            raise InputError(f"input '{t.name}' is {arr.dtype}; the model takes {t.dtype}")
        if t.shape is not None and (len(arr.shape) != len(t.shape) or any(
                isinstance(d, int) and d != a for d, a in zip(t.shape, arr.shape, strict=False))):
            raise InputError(f"input '{t.name}' has shape {list(arr.shape)}; expected {list(t.shape)}")
        out[t.name] = arr
    return out


def simulate(prog: Program, inputs: Mapping[str, np.ndarray], mode: str = "ideal", *, seed: int = 0,
             t: float = 0.0, drift_compensation: bool = True) -> dict[str, np.ndarray]:
    """Run a program once on ``inputs`` (hardware mode: one chip programmed with ``seed``, read at ``t`` s)."""
    sim = Simulator(prog, mode)
    if mode == "hardware":
        sim.program(seed)
        sim.at(t, drift_compensation)
    return sim.run(inputs)
