"""The reference simulator: runs a compiled Program on numpy and onnxruntime.

Host stages run in onnxruntime (sessions made on first use, one intra-op
thread, a bounded number alive: backends/host.py); analog stages run every
MVM batched over all its input rows, with partial sums of slices that share
output columns added digitally.

- ``ideal``: the float weights, no quantization, no noise; matches
  onnxruntime on the original model to float32 rounding. Each matrix is
  assembled once from its slices; a dense MVM is one float32 MatMul on it
  and a conv one Conv (with its bias and activation), and each run of
  consecutive host stages and MVMs is one onnxruntime graph (one session
  call, not one per stage). A recurrent direction is one onnxruntime Scan:
  the products of the inputs alone made for all steps first, the body the
  products of h, the sums and the cell's host models. With an observer
  (calibration) stages run one by one and slices are summed one by one in
  float64, so each slice's output can be seen.
- ``hardware``: ``program(seed)`` programs the slices' target conductances
  into simulated devices (backends/analog.py), ``at(t)`` reads them t seconds
  later; inputs are quantized to the spec's input bits at each MVM's
  calibrated range, each slice's output to the output bits at its calibrated
  range with saturation (in current units: with a conductance scale per column,
  column j's range in weights is the slice's over its gain, Program.column_gains),
  then partial sums, bias and non-fused-at-tile
  activations are applied digitally. A fused activation runs at the tile
  output (before output conversion) when the layer has one row block, no
  bias and alpha 1; otherwise it is applied after the digital sum. A dense
  MVM is one numpy matmul per row block (the slices of a block side by
  side); a conv one onnxruntime Conv per row block, of the quantized input
  with the block's read weights as its kernel (the products its im2col rows
  would give; other MVMs use im2col). Read weights are held once, in buffers
  that ``at(t)`` refills. A recurrent cell's slices that hold only input rows
  run over all time steps in one product (each product still converted on
  its own); the slices that see h run per step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx
from anac.backends.analog import ProgrammedChip, quantize_polarity, quantize_signed, quantize_unsigned
from anac.backends.host import ARENA_SESSIONS, HostStages, Sessions, make_session, run_session
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


@dataclass
class _SplitProduct:
    """Hardware mode: a cell's product of [x_t, h] with the x rows' analog sums made for all steps first.

    ``x_parts[i]``: row block i's sums over its x rows, (seq, passes x batch, its columns), None when it
    holds no x row; per step only h's rows are multiplied and added before the block's conversion (the
    crossbar sums both row groups before the ADC). ``lo, hi``: the columns of the x-only slices, converted
    for all steps at once (``Simulator._x_blocks``), or None."""

    mvm: MVM
    blocks: _RowBlocks
    n: int
    width: int
    x_parts: list[np.ndarray | None]
    x_only: tuple[int, int] | None


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
        if prog.plan is not None:  # its weights are shape-only placeholders: a run would compute with zeros
            raise AnacError("this program was planned without weights (anac plan): it has no weight values to "
                            "simulate; compile the model (anac compile) to verify or simulate it")
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
        # Copies (replicate, average) hold the same weights: the plans are copy 0's. Hardware mode runs a
        # layer with copies once per copy with that copy's read weights in copy 0's buffers, each copy giving
        # its share of the products, or all of them, averaged (_run_copies); in ideal mode both are the identity.
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
        self._steps: list[tuple[str, Any]] | None = None  # what run() does, planned at its first call
        self._fused: dict[Any, Any] = {}  # ideal mode: recurrent directions' Scan sessions (_cell_scan)
        self._x_blocks: dict[str, _RowBlocks] = {}  # hardware mode: cell matrices' x-only slices (_layout_recurrent)
        # hardware mode: recurrent directions' Scan sessions on the current read (_hw_cell_scan); at() drops them
        self._hw_scans: dict[Any, Any] = {}
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
            self._layout_recurrent()
        self.t = None
        self._hw_scans.clear()  # they hold the previous read's weights
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
        """Hardware mode: put copy ``copy``'s read weights of a layer with copies in its buffers (copy 0's slots)."""
        for mid in mvm.matrices:
            reads = self._copy_reads[(mid, copy)]
            for p in self._plans[mvm.node][mvm.matrices.index(mid)]:
                w = reads[p.rows[0]:p.rows[1], p.cols[0]:p.cols[1]]
                for buf, index, transposed in self._slots[p.id]:
                    buf[index] = w.T if transposed else w

    def _run_copies(self, mvm: MVM, x: np.ndarray, step: int) -> np.ndarray:
        """Hardware mode, a layer with copies. Averaged copies (Matrix.copy_mode "average"): every copy computes
        every product with its own devices, and the output is the mean of the copies' converted outputs, taken
        before a digital activation (one at the tile output runs on each copy). Replicated copies: its products
        (rows of x: batch x output positions, or batch rows) split in contiguous bands across its copies, each
        band computed with that copy's devices; with fewer products than copies (a recurrent step) the whole
        step on copy ``step`` mod copies."""
        k = max(self._copies[m] for m in mvm.matrices)
        average = self.prog.matrices[mvm.matrices[0]].copy_mode == "average"  # type: ignore[index]
        digital_act = average and mvm.activation is not None and not self._tile_act[mvm.node]
        outs = []
        try:
            for c in range(k):
                self._load_copy(mvm, c)
                outs.append(self._run_mvm_once(mvm, x, activate=not digital_act))
        finally:
            self._load_copy(mvm, 0)
        if average:
            y = np.mean(outs, axis=0, dtype=np.float32)
            return apply_activation(y, mvm.activation) if digital_act else y  # type: ignore[arg-type]
        rows = [_product_rows(mvm, y) for y in outs]
        n = len(rows[0])
        if n < k:
            return outs[step % k]
        bands = np.array_split(np.arange(n), k)
        mixed = np.concatenate([r[b] for r, b in zip(rows, bands, strict=True)])
        return _from_product_rows(mvm, mixed, outs[0])

    def read_weight_bytes(self) -> int:
        """Hardware mode: bytes of the read weights held (row blocks and conv kernels; 0 before the first read)."""
        dense = sum(w.nbytes for blocks in self._stacks.values() for b in blocks for w in b.weights) \
            + sum(w.nbytes for b in self._x_blocks.values() for w in b.weights)
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
            slices = self.prog.slices or []
            gains = {p.id: self.prog.column_gains(slices[p.id]) for group in plans for p in group}
            self._stacks[node] = [_row_blocks(group, gains, conv is None) for group in plans]
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

    def _layout_recurrent(self) -> None:
        """Hardware mode: a cell's matrix driven by [x_t, h] keeps the slices that hold only x rows in row
        blocks of their own (``_x_blocks``, run over all steps at once) and the others in its stack; each
        slice's read still lands in one buffer."""
        for rec in self.prog.recurrent.values():
            for cell in rec.cells:
                concats = {s[1]: s[2] for s in cell.steps if s[0] == "concat"}
                for s in cell.steps:
                    if s[0] != "mvm" or concats.get(s[2]) != ["x", "h"]:
                        continue
                    mvm = self.prog.mvms[s[1]]  # type: ignore[index]
                    if not _plain(mvm, self.prog) or any(m in self._copies for m in mvm.matrices):
                        continue
                    width = self.prog.matrices[mvm.matrices[0]].shape[0] - rec.hidden  # type: ignore[index]
                    group = self._plans[s[1]][0]
                    xs = [p for p in group if p.rows[1] <= width]
                    if not xs:
                        continue
                    hs = [p for p in group if p.rows[1] > width]
                    whole = self._stacks[s[1]][0]
                    self._x_blocks[s[1]], self._stacks[s[1]] = _sub_blocks(whole, xs), [_sub_blocks(whole, hs)]
                    for blocks, part in ((self._x_blocks[s[1]], xs), (self._stacks[s[1]][0], hs)):
                        for p in part:
                            i = blocks.starts.index(p.rows[0])
                            c0 = blocks.cols[i][0]
                            self._slots[p.id] = [(blocks.weights[i], (slice(0, p.rows[1] - p.rows[0]),
                                                                      slice(p.cols[0] - c0, p.cols[1] - c0)), False)]

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
        if self._steps is None:
            self._steps = self._plan_steps()
        for kind, item in self._steps:
            if kind == "host":
                self._host.run(item, env)
            elif kind == "recurrent":
                env.update(self._run_recurrent(item, env))
            elif kind == "mvm":
                env[item.output] = self._run_mvm(item, env[item.input])  # type: ignore[arg-type]
            else:
                key, model, ins, outs, what = item
                sess = self._sessions.get(key, model, what)[0]
                env.update(zip(outs, run_session(sess, {n: env[n] for n in ins}, what), strict=True))
        return {t.name: env[t.name] for t in self.prog.outputs}  # type: ignore[misc]

    def _plan_steps(self) -> list[tuple[str, Any]]:
        """What ``run`` does, in order: host stages, MVMs, recurrent layers; in ideal mode without an observer
        each run of consecutive host stages and MVMs that ONNX ops can express (all of them, unless a
        recurrent layer or an unusual MVM is between) is one onnxruntime graph ("fused"), so a program of
        many small stages pays one session call, not one per stage."""
        steps: list[tuple[str, Any]] = []
        for st in self.prog.stages or []:
            if st.kind == "host":
                steps.append(("host", st))
            elif st.kind == "recurrent":
                steps.append(("recurrent", self.prog.recurrent[st.nodes[0]]))
            else:
                steps += [("mvm", self.prog.mvms[n]) for n in st.nodes]  # type: ignore[index]
        if self.mode != "ideal" or self.observer is not None:
            return steps
        parts = [self._graph_part(kind, item) for kind, item in steps]
        reads = [_step_reads(kind, item) for kind, item in steps]
        readers = Counter(n for r in reads for n in r)
        wanted = {t.name for t in self.prog.outputs}
        out: list[tuple[str, Any]] = []
        i = 0
        while i < len(steps):
            j, size = i, 0
            while j < len(steps) and parts[j] is not None and (j == i or size + parts[j].nbytes <= _FUSED_BYTES):
                size += parts[j].nbytes  # type: ignore[union-attr]
                j += 1
            later = wanted | set(readers - Counter(n for r in reads[i:j] for n in r))  # read outside [i, j)
            fused = _fuse([p for p in parts[i:j] if p is not None], later, f"segment{len(out)}") if j > i else None
            if fused is None:
                out.append(steps[i])
                i += 1
                continue
            model, ins, outs = fused
            names = [st.name if kind == "host" else st.node for kind, st in steps[i:j]]
            what = f"host stages and MVMs {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
            try:
                self._sessions.get(("fused", i), model, what)
                out.append(("fused", (("fused", i), model, ins, outs, what)))
            except AnacError:  # onnxruntime does not take the joined graph: its parts run one by one
                out += steps[i:j]
            i = j
        return out

    def _graph_part(self, kind: str, item: Any) -> _Part | None:
        """Ideal mode: a host stage or an MVM as ONNX nodes for a fused graph; None if it cannot be one."""
        if kind == "host":
            m = item.model
            if not isinstance(m, onnx.ModelProto):
                return None
            g = m.graph
            return _Part(list(g.node), list(g.initializer), list(g.input), list(g.output),
                         {o.domain or "": o.version for o in m.opset_import}, list(m.functions), m.ir_version)
        if kind != "mvm":
            return None
        mvm: MVM = item
        p, pre = mvm.params, f"anac::{mvm.node}/"
        nodes: list[onnx.NodeProto] = []
        inits: list[onnx.TensorProto] = []
        if mvm.node in self._conv_models:
            model, whole = self._conv_models[mvm.node]
            rename = {"x": mvm.input, "y": pre + "y"}
            for n in model.graph.node:
                nodes.append(helper.make_node(n.op_type, [rename.get(i, pre + i) for i in n.input],
                                              [rename.get(o, pre + o) for o in n.output], name=pre + n.op_type,
                                              **{a.name: helper.get_attribute_value(a) for a in n.attribute}))
            for t in model.graph.initializer:
                inits.append(numpy_helper.from_array(numpy_helper.to_array(t), pre + t.name))
            if whole:
                nodes[-1].output[0] = mvm.output
                return _Part(nodes, inits, [], [], {"": 11}, [], 8, [mvm.input], [mvm.output])
            bias_shape = (-1,) + (1,) * len(p["kernel"])
        elif mvm.kind == "dense" and len(mvm.matrices) == 1 and id(self._plans[mvm.node][0]) in self._dense \
                and not (p.get("x_transpose") or p.get("y_transpose") or p.get("squeeze")):
            x = mvm.input
            kept = self.prog.matrices[mvm.matrices[0]].kept_rows  # type: ignore[index]
            if kept is not None:
                inits.append(numpy_helper.from_array(np.asarray(kept, np.int64), pre + "kept"))
                nodes.append(helper.make_node("Gather", [x, pre + "kept"], [pre + "rows"], axis=-1,
                                              name=pre + "Gather"))
                x = pre + "rows"
            inits.append(numpy_helper.from_array(self._dense[id(self._plans[mvm.node][0])], pre + "w"))
            nodes.append(helper.make_node("MatMul", [x, pre + "w"], [pre + "y"], name=pre + "MatMul"))
            bias_shape = None
        else:
            return None
        y = pre + "y"
        if mvm.alpha != 1.0:
            inits.append(numpy_helper.from_array(np.float32(mvm.alpha), pre + "alpha"))
            nodes.append(helper.make_node("Mul", [y, pre + "alpha"], [pre + "scaled"], name=pre + "Mul"))
            y = pre + "scaled"
        if mvm.bias is not None:
            b = mvm.bias.astype(np.float32)
            inits.append(numpy_helper.from_array(b if bias_shape is None else b.reshape(bias_shape), pre + "b"))
            nodes.append(helper.make_node("Add", [y, pre + "b"], [pre + "biased"], name=pre + "Add"))
            y = pre + "biased"
        act = mvm.activation
        if act is not None:
            if act["op"] == "Relu":
                nodes.append(helper.make_node("Relu", [y], [pre + "act"], name=pre + "Relu"))
            elif act["op"] == "HardSigmoid":
                nodes.append(helper.make_node("HardSigmoid", [y], [pre + "act"], name=pre + "HardSigmoid",
                                              alpha=float(act["alpha"]), beta=float(act["beta"])))
            else:
                bounds = []
                for k in ("min", "max"):
                    if act[k] is not None:
                        inits.append(numpy_helper.from_array(np.float32(act[k]), pre + k))
                    bounds.append("" if act[k] is None else pre + k)
                nodes.append(helper.make_node("Clip", [y, *bounds], [pre + "act"], name=pre + "Clip"))
        nodes[-1].output[0] = mvm.output  # the last node's output: nothing in the part reads it
        return _Part(nodes, inits, [], [], {"": 11}, [], 8, [mvm.input], [mvm.output])

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
                part = _tile_activation(part, mvm.activation)  # type: ignore[arg-type]
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
                    part = _tile_activation(part, mvm.activation)  # type: ignore[arg-type]
                q = quantize(part, b.full_scale, hw.output_bits, inplace=True)
                y = q if y is None else np.add(y, q, out=y)
            assert y is not None  # a matrix has at least one row block
            outs.append(y[:batch] - y[batch:] if hw.input_sign == "two-pass" else y)
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def _run_recurrent(self, rec: Any, env: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One LSTM/GRU/RNN layer: its cell once per time step and direction, with sequence_lens masking.

        The products of the input alone are made for all steps at once before the loop (each product is
        its own input vector, so batching them changes nothing): in ideal mode a cell's matrix driven by
        [x_t, h] splits into its x rows (one MatMul over all steps) and its h rows, and each direction is
        one onnxruntime Scan (h's products, the sums and the cell's host models as its body); in hardware
        mode the slices that hold only x rows run over all steps at once (each product still converted on
        its own), the others per step. With an observer the cell runs step by step as written.
        """
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
        masked = bool((lens < seq).any())
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
            xd = np.ascontiguousarray(xd, dtype=np.float32)
            scanned = self._cell_scan(rec, d, cell, xd, h, c, lens if masked else None, direction == "reverse")
            pre, split = self._cell_pre(rec, cell, xd)
            if scanned is None:
                scanned = self._hw_cell_scan(rec, d, cell, xd, pre, split, h, c, lens if masked else None,
                                             direction == "reverse")
            if scanned is not None:
                y[:, d], y_h[d], y_c[d] = scanned
                continue
            order = range(seq) if direction == "forward" else range(seq - 1, -1, -1)
            step = self._cell_steps(rec, d, cell, xd, pre, split)
            for t in order:
                h_new, c_new = step(t, h, c)
                if masked:
                    active = (t < lens)[:, None]
                    h = np.where(active, h_new, h).astype(np.float32)
                    c = np.where(active, c_new, c).astype(np.float32)
                    y[t, d] = np.where(active, h_new, 0)
                else:
                    h, c = np.asarray(h_new, np.float32), np.asarray(c_new, np.float32)
                    y[t, d] = h
            y_h[d], y_c[d] = h, c
        if rec.layout:
            y, y_h, y_c = np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(y_c, 0, 1)
        return {name: v for name, v in zip(rec.outputs, (y, y_h, y_c), strict=True) if name}

    def _cell_pre(self, rec: Any, cell: Any, xd: np.ndarray) -> tuple[dict[str, np.ndarray], dict[str, _SplitProduct]]:
        """Hardware mode: what a direction's cell can compute for all steps of ``xd`` (seq, batch, in) before the
        loop: the products of x alone (by output name) and, per product of [x_t, h], its x rows' sums
        (``_SplitProduct``; its x-only slices' outputs under its output name). Ideal mode: nothing."""
        seq, batch = xd.shape[:2]
        flat = xd.reshape(seq * batch, -1)
        pre: dict[str, np.ndarray] = {}
        split: dict[str, _SplitProduct] = {}
        if self.mode != "hardware":
            return pre, split
        concats = {s[1]: s[2] for s in cell.steps if s[0] == "concat"}
        for _, node, inp, out in (s for s in cell.steps if s[0] == "mvm"):
            mvm = self.prog.mvms[node]  # type: ignore[index]
            if not _plain(mvm, self.prog) or any(m in self._copies for m in mvm.matrices):
                continue  # a replicated layer's steps go to its copies in turn: kept per step
            rows, n = self.prog.matrices[mvm.matrices[0]].shape  # type: ignore[index]
            if inp == "x":
                pre[out] = self._run_mvm_once(mvm, flat).reshape(seq, batch, n)
                continue
            width = rows - rec.hidden
            if concats.get(inp) != ["x", "h"] or width != flat.shape[1]:
                continue
            x_only = None
            if node in self._x_blocks:  # only the columns [lo, hi) the x-only slices hold
                xb = self._x_blocks[node]
                lo, hi = min(c[0] for c in xb.cols), max(c[1] for c in xb.cols)
                narrow = replace(xb, cols=[(c0 - lo, c1 - lo) for c0, c1 in xb.cols])
                pre[out] = self._matmul_hardware(mvm, flat, narrow, hi - lo).reshape(seq, batch, hi - lo)
                x_only = (lo, hi)
            blocks = self._stacks[node][0]
            split[node] = _SplitProduct(mvm, blocks, n, width, self._x_parts(mvm, blocks, width, xd), x_only)
        return pre, split

    def _cell_steps(self, rec: Any, d: int, cell: Any, xd: np.ndarray, pre: dict[str, np.ndarray],
                    split: dict[str, _SplitProduct]) -> Callable[[int, np.ndarray, np.ndarray],
                                                                 tuple[np.ndarray, np.ndarray]]:
        """One direction's step function (t, h, c) -> (h_new, c_new), given what ``_cell_pre`` made."""
        # a concatenation only split products read is not made
        reads = [a for s in cell.steps if not (s[0] == "mvm" and s[1] in split)
                 for a in (s[2] if s[0] != "mvm" else [s[2]])]
        steps = [s for s in cell.steps if not (s[0] == "concat" and s[1] not in reads)]
        sessions = {s[1]: self._sessions.get((rec.node, d, s[1]), cell.models[s[1]],
                                             f"the cell of {rec.node} (direction {d}, part {s[1]})")[0]
                    for s in cell.steps if s[0] == "host"}

        def step(t: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            e: dict[str, np.ndarray] = {"x": xd[t], "h": h, "c": c}
            for s in steps:
                if s[0] == "concat":
                    e[s[1]] = np.concatenate([e[a] for a in s[2]], axis=1)
                elif s[0] == "add":
                    e[s[1]] = (e[s[2][0]] + e[s[2][1]]).astype(np.float32)
                elif s[0] == "mvm":
                    if s[1] in split:  # h's rows now, the x rows' sums made before; the x-only slices' outputs
                        sp = split[s[1]]
                        y = self._split_step(sp, h, t)  # a fresh array
                        if sp.x_only is not None:
                            y[:, sp.x_only[0]:sp.x_only[1]] += pre[s[3]][t]
                        e[s[3]] = y
                    elif s[3] in pre:
                        e[s[3]] = pre[s[3]][t]
                    else:
                        e[s[3]] = self._run_mvm(self.prog.mvms[s[1]], e[s[2]], t)  # type: ignore[index]
                else:
                    outs = run_session(sessions[s[1]], {n: e[n] for n in s[2]}, f"the cell of {rec.node}")
                    e.update(zip(s[3], outs, strict=True))
            return e["h_new"], e["c_new"]
        return step

    def _quantize_in(self, mvm: MVM, x: np.ndarray) -> np.ndarray:
        """Hardware mode: an MVM's 8-bit inputs (two-pass: the positive pass's rows, then the negative's)."""
        hw = self.prog.hardware
        r_in = float(mvm.input_range)  # type: ignore[arg-type]
        if hw.input_sign == "two-pass":
            return np.concatenate([quantize_unsigned(np.maximum(x, 0), r_in, hw.input_bits),
                                   quantize_unsigned(np.maximum(-x, 0), r_in, hw.input_bits)])
        return quantize_polarity(x, r_in, hw.input_bits)

    def _x_parts(self, mvm: MVM, blocks: _RowBlocks, width: int, xd: np.ndarray) -> list[np.ndarray | None]:
        """Each row block's analog sums over its x rows for every step of ``xd`` (seq, batch, width): the
        quantized inputs the step's [x_t, h] would give on those rows, the same read weights; (seq, passes
        x batch, the block's columns), rows in the order ``_quantize_in`` gives a step's, or None."""
        seq, batch = xd.shape[:2]
        if all(start >= width for start in blocks.starts):
            return [None] * len(blocks.starts)
        xq = self._quantize_in(mvm, xd.reshape(seq * batch, width))
        if len(xq) > seq * batch:  # two-pass: (pass, seq, batch) -> (seq, pass, batch), a step's rows together
            xq = np.ascontiguousarray(xq.reshape(2, seq, batch, width).swapaxes(0, 1)).reshape(-1, width)
        return [(xq[:, start:width] @ w[:width - start]).reshape(seq, -1, w.shape[1]) if start < width else None
                for start, w in zip(blocks.starts, blocks.weights, strict=True)]

    def _split_step(self, sp: _SplitProduct, h: np.ndarray, t: int) -> np.ndarray:
        """Step t of a split product: per row block, h's rows times their read weights plus the block's x-row
        sums of step t (the analog column sum of [x_t, h]), converted at each column's range; digital sum
        (the x-only slices' outputs are added by the caller). As ``_matmul_hardware`` on [x_t, h], but for
        the order of the float32 additions in each analog sum."""
        bits, two_pass = self.prog.hardware.output_bits, self.prog.hardware.input_sign == "two-pass"
        hq = self._quantize_in(sp.mvm, h)
        b = sp.blocks
        y: np.ndarray | None = None
        for start, stop, (c0, c1), w, scale, xp in zip(b.starts, b.stops, b.cols, b.weights, b.full_scale,
                                                       sp.x_parts, strict=True):
            k = max(start, sp.width)
            hr = hq if (k, stop) == (sp.width, sp.width + hq.shape[1]) else hq[:, k - sp.width:stop - sp.width]
            part = hr @ w[k - start:]
            if xp is not None:
                part += xp[t]
            q = quantize_signed(part, scale, bits, inplace=True)
            if (c0, c1) == (0, sp.n):
                y = q if y is None else np.add(y, q, out=y)
            else:  # as _matmul_hardware: the other columns get nothing from this block
                y = np.zeros((hq.shape[0], sp.n), np.float32) if y is None else y
                y[:, c0:c1] += q
        assert y is not None  # a matrix has at least one slice
        return y[:len(h)] - y[len(h):] if two_pass else y

    def _hw_cell_scan(self, rec: Any, d: int, cell: Any, xd: np.ndarray, pre: dict[str, np.ndarray],
                      split: dict[str, _SplitProduct], h: np.ndarray, c: np.ndarray, lens: np.ndarray | None,
                      reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Hardware mode, polarity inputs, no observer: one direction as one onnxruntime Scan on the current read
        (``_hw_cell_model``: per step h's quantization, its rows' products, the x rows' sums added, each
        column's conversion, the cell's host models), what ``_cell_pre`` made fed per step; (Y, h, c), or None
        when the cell has a product ``_cell_pre`` does not split (then it runs step by step). ``lens`` as in
        ``_cell_scan``."""
        hw = self.prog.hardware
        if self.mode != "hardware" or self.observer is not None or hw.input_sign != "polarity":
            return None
        seq, batch, width = xd.shape
        outs = {s[1]: s[3] for s in cell.steps if s[0] == "mvm"}
        arrays = {"x": xd}
        for node, sp in split.items():
            arrays.update({f"{outs[node]}@x{i}": xp for i, xp in enumerate(sp.x_parts) if xp is not None})
            if sp.x_only is not None:
                arrays[f"{outs[node]}@xo"] = pre[outs[node]]
        arrays.update({n: a for n, a in pre.items() if n not in arrays and n not in {outs[k] for k in split}})
        key = (rec.node, d, width, lens is not None)
        if key not in self._hw_scans:
            self._hw_scans[key] = None
            model = _hw_cell_model(cell, {outs[k]: sp for k, sp in split.items()}, set(arrays), rec.hidden,
                                   hw.input_bits, hw.output_bits)
            if model is not None:
                scan, names = _scan_model(model, rec.hidden, {n: a.shape[2] for n, a in arrays.items()},
                                          lens is not None)
                what = f"the cell of {rec.node} (direction {d})"
                self._hw_scans[key] = make_session(scan, what, self._sessions.threads, self._sessions.arena), names
        if self._hw_scans[key] is None:
            return None
        sess, names = self._hw_scans[key]
        return _run_scan(sess, names, arrays, h, c, seq, lens, reverse, f"the cell of {rec.node} (direction {d})")

    def _product(self, key: Any, x: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Ideal mode: x @ w in float32, on an onnxruntime MatMul (made once under ``key``) when w is large."""
        if not x.size or w.size < _ORT_MATMUL:
            return x @ w  # type: ignore[no-any-return]
        sess = self._sessions.get(key, lambda: _matmul_model(np.ascontiguousarray(w)), "a product of a cell")[0]
        return run_session(sess, {"x": np.ascontiguousarray(x)}, "a product of a cell")[0]  # type: ignore[no-any-return]

    def _cell_scan(self, rec: Any, d: int, cell: Any, xd: np.ndarray, h: np.ndarray, c: np.ndarray,
                   lens: np.ndarray | None, reverse: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """Ideal mode without an observer: one direction of a layer as one onnxruntime Scan over the steps
        (its body: the cell's products of h, the sums and its host models), the products of x alone made
        for all steps first; (Y, h, c) of the direction, or None when a product of the cell is not a plain
        x @ W (then it runs step by step). ``lens``: sequence lengths when some are short (masking)."""
        if self.mode != "ideal" or self.observer is not None:
            return None
        seq, batch, width = xd.shape
        key = ("cell", rec.node, d, width, lens is not None)
        if key not in self._fused:
            self._fused[key] = None
            if all(_plain(self.prog.mvms[s[1]], self.prog) and id(self._plans[s[1]][0]) in self._dense  # type: ignore[index]
                   for s in cell.steps if s[0] == "mvm"):
                model, pre = _cell_model(cell, {s[1]: self._dense[id(self._plans[s[1]][0])]
                                                for s in cell.steps if s[0] == "mvm"}, width)
                scan, names = _scan_model(model, rec.hidden, {"x": width, **{n: w.shape[1] for n, w in pre}},
                                          lens is not None)
                sess = self._sessions.get(key, scan, f"the cell of {rec.node} (direction {d})")[0]
                self._fused[key] = sess, pre, names
        if self._fused[key] is None:
            return None
        sess, pre, names = self._fused[key]
        flat = xd.reshape(seq * batch, width)
        arrays = {n: self._product(("cell", rec.node, d, n), flat, w).reshape(seq, batch, -1) for n, w in pre}
        arrays["x"] = xd
        return _run_scan(sess, names, arrays, h, c, seq, lens, reverse, f"the cell of {rec.node} (direction {d})")

    def _run_mvm(self, mvm: MVM, x: np.ndarray, step: int = 0) -> np.ndarray:
        if self.mode == "hardware" and any(m in self._copies for m in mvm.matrices):
            return self._run_copies(mvm, x, step)
        return self._run_mvm_once(mvm, x)

    def _run_mvm_once(self, mvm: MVM, x: np.ndarray, activate: bool = True) -> np.ndarray:
        """One run of the layer on copy 0's buffers; ``activate`` False leaves a digital activation out."""
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
        if activate and mvm.activation is not None and not (self.mode == "hardware" and self._tile_act[mvm.node]):
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


def _row_blocks(group: list[_SlicePlan], gains: Mapping[int, np.ndarray | None],
                weights: bool = True) -> _RowBlocks:
    """A matrix's row blocks with zero weights (``Simulator.at`` fills them; none unless ``weights``) and
    each column's output range in weight units: its slice's range over the column's gain (the conversion
    is in current units, and a per-column scale gives each column its own current per unit of weight)."""
    starts = sorted({p.rows[0] for p in group})
    stops = [max(p.rows[1] for p in group if p.rows[0] == start) for start in starts]
    cols = [(min(p.cols[0] for p in group if p.rows[0] == start),
             max(p.cols[1] for p in group if p.rows[0] == start)) for start in starts]
    ws = [np.zeros((stop - start, c1 - c0), np.float32)
          for start, stop, (c0, c1) in zip(starts, stops, cols, strict=True)] if weights else []
    scales = [np.ones(c1 - c0, np.float32) for c0, c1 in cols]
    for p in group:
        i = starts.index(p.rows[0])
        gain = gains.get(p.id)
        scales[i][p.cols[0] - cols[i][0]:p.cols[1] - cols[i][0]] = \
            p.output_range if gain is None else np.float32(p.output_range) / gain
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


def _tile_activation(part: np.ndarray, act: dict) -> np.ndarray:  # type: ignore[type-arg]
    """``apply_activation`` on a fresh float32 product nothing else holds: ReLU in its buffer (the same values)."""
    if act["op"] == "Relu" and part.dtype == np.float32 and part.flags.writeable:
        return np.maximum(part, np.float32(0), out=part)
    return apply_activation(part, act)


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


# Ideal mode joins host stages and MVMs into graphs of at most this many bytes of weights (ONNX models stop
# at 2 GiB, and each graph's weights are copied while its session is made).
_FUSED_BYTES = 256 * 2**20
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


@dataclass
class _Part:
    """Ideal mode: a host stage or an MVM as ONNX nodes, to be joined with its neighbours in one graph."""

    nodes: list[onnx.NodeProto]
    inits: list[onnx.TensorProto]
    inputs: list[onnx.ValueInfoProto]  # a host stage's typed inputs and outputs (an MVM's are float32)
    outputs: list[onnx.ValueInfoProto]
    opsets: dict[str, int]  # an MVM's: the least default-domain opset its ops need as built
    functions: list[onnx.FunctionProto]
    ir_version: int
    reads: list[str] = field(default_factory=list)  # an MVM's input and output names
    writes: list[str] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return sum(t.ByteSize() for t in self.inits)


def _step_reads(kind: str, item: Any) -> set[str]:
    """The names a step of ``run`` reads from its environment."""
    if kind == "host":
        return set(item.inputs) | ({i.name for i in item.model.graph.input} if item.model is not None else set())
    if kind == "mvm":
        return {item.input}
    return {t for t in (item.x, item.sequence_lens, item.initial_h, item.initial_c) if t}


def _fuse(parts: list[_Part], later: set[str], name: str) -> tuple[onnx.ModelProto, list[str], list[str]] | None:
    """Parts as one ONNX model: its inputs (read, not made, by the parts) and outputs (made by the parts and
    in ``later``); None when they cannot share one (opsets that differ, clashing initializers, no output)."""
    opsets: dict[str, int] = {}
    for p in parts:
        if p.inputs or p.outputs:  # a host stage: its opsets must agree with the others'
            for d, v in p.opsets.items():
                if opsets.setdefault(d, v) != v:
                    return None
    least = max((p.opsets.get("", 0) for p in parts if not (p.inputs or p.outputs)), default=0)
    opsets.setdefault("", max(least, 17))
    if opsets[""] < least:
        return None
    infos: dict[str, onnx.ValueInfoProto] = {}
    inits: dict[str, onnx.TensorProto] = {}
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    nodes: list[onnx.NodeProto] = []
    made: set[str] = set()
    ins: list[str] = []
    node_names: set[str] = set()
    for p in parts:
        for vi in [*p.inputs, *p.outputs]:
            infos.setdefault(vi.name, vi)
        for t in p.inits:
            if t.name in inits and inits[t.name].SerializeToString() != t.SerializeToString():
                return None
            inits[t.name] = t
        for f in p.functions:
            functions.setdefault((f.domain, f.name), f)
        ins += [r for r in [*(i.name for i in p.inputs), *p.reads] if r not in made and r not in ins]
        for n in p.nodes:
            if n.name in node_names or not n.name:
                n2 = onnx.NodeProto()
                n2.CopyFrom(n)
                n2.name = f"{name}/{len(nodes)}"
                n = n2
            node_names.add(n.name)
            nodes.append(n)
            made.update(o for o in n.output if o)
        made.update(o.name for o in p.outputs)
        made.update(p.writes)
    outs = [o for o in dict.fromkeys(o for n in nodes for o in n.output) if o in later]
    if not outs:
        return None

    def info(n: str) -> onnx.ValueInfoProto:
        return infos.get(n) or helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, name, [info(n) for n in ins], [info(n) for n in outs], list(inits.values()))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
                              functions=list(functions.values()), producer_name="anac")
    model.ir_version = max([8, *(p.ir_version for p in parts)])
    return model, ins, outs


def _sub_blocks(blocks: _RowBlocks, part: list[_SlicePlan]) -> _RowBlocks:
    """Some of a matrix's slices as row blocks of their own (zero weights), each column's output range
    taken from ``blocks``, the matrix's row blocks."""
    starts = sorted({p.rows[0] for p in part})
    stops = [max(p.rows[1] for p in part if p.rows[0] == start) for start in starts]
    cols = [(min(p.cols[0] for p in part if p.rows[0] == start),
             max(p.cols[1] for p in part if p.rows[0] == start)) for start in starts]
    scales = [np.ones(c1 - c0, np.float32) for c0, c1 in cols]
    for p in part:
        i, j = starts.index(p.rows[0]), blocks.starts.index(p.rows[0])
        scales[i][p.cols[0] - cols[i][0]:p.cols[1] - cols[i][0]] = \
            blocks.full_scale[j][p.cols[0] - blocks.cols[j][0]:p.cols[1] - blocks.cols[j][0]]
    weights = [np.zeros((stop - start, c1 - c0), np.float32)
               for start, stop, (c0, c1) in zip(starts, stops, cols, strict=True)]
    return _RowBlocks(starts, stops, cols, weights, scales)


def _plain(mvm: MVM, prog: Program) -> bool:
    """A dense MVM that is only x @ W (one matrix, all rows kept, no bias, scale, activation or transpose)."""
    p = mvm.params
    return mvm.kind == "dense" and len(mvm.matrices) == 1 and mvm.bias is None and mvm.alpha == 1.0 \
        and mvm.activation is None and not (p.get("x_transpose") or p.get("y_transpose") or p.get("squeeze")) \
        and prog.matrices[mvm.matrices[0]].kept_rows is None  # type: ignore[index]


def _run_scan(sess: Any, names: Sequence[str], arrays: dict[str, np.ndarray], h: np.ndarray, c: np.ndarray,
              seq: int, lens: np.ndarray | None, reverse: bool, what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run a direction's Scan session: per-step inputs ``arrays`` (seq, batch, ...), reversed for a reverse
    direction, the mask of active steps when some sequences are short; (Y, h, c) in the sequence's order."""
    if lens is not None:
        arrays["active"] = (np.arange(seq)[:, None] < lens[None, :])[:, :, None]
    feeds = {"h0": h, "c0": c}
    feeds.update({f"scan:{n}": np.ascontiguousarray(arrays[n][::-1]) if reverse else arrays[n] for n in names})
    h_t, c_t, ys = run_session(sess, feeds, what)
    return (ys[::-1] if reverse else ys), h_t, c_t

def _host_step(cell: Any, s: tuple, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> None:  # type: ignore[type-arg]
    """Append a cell step that is not a product (a concat, an add or a host model, inlined) to a graph."""
    if s[0] == "concat":
        nodes.append(helper.make_node("Concat", list(s[2]), [s[1]], axis=1))
    elif s[0] == "add":
        nodes.append(helper.make_node("Add", list(s[2]), [s[1]]))
    else:
        more, more_inits = _inline(cell.models[s[1]], f"m{s[1]}/")
        nodes += more
        inits += more_inits

def _cell_model(cell: Any, weights: Mapping[str, np.ndarray], width: int) -> tuple[
        onnx.ModelProto, list[tuple[str, np.ndarray]]]:
    """Ideal mode: a recurrent cell's step as one ONNX graph from x, h, c (those it reads) and the products
    made before the loop to h_new, c_new: [x, h] @ [W; R] as (x @ W, given) + h @ R, x @ W given, other
    products as MatMuls, the host models inlined. Returns it and the given products (graph input, W)."""
    concats = {s[1]: s[2] for s in cell.steps if s[0] == "concat"}
    reads = [a for s in cell.steps for a in (s[2] if s[0] != "mvm" else [s[2]])]
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    pre: list[tuple[str, np.ndarray]] = []
    for s in cell.steps:
        if s[0] == "mvm":
            _, node, inp, out = s
            w = weights[node]
            if inp == "x":
                pre.append((out, w))
            elif concats.get(inp) == ["x", "h"] and reads.count(inp) == 1 and 0 < width < w.shape[0]:
                pre.append((f"{out}@x", w[:width]))
                inits.append(numpy_helper.from_array(np.ascontiguousarray(w[width:]), f"{node}/R"))
                nodes += [helper.make_node("MatMul", ["h", f"{node}/R"], [f"{out}@h"]),
                          helper.make_node("Add", [f"{out}@x", f"{out}@h"], [out])]
            else:
                inits.append(numpy_helper.from_array(np.ascontiguousarray(w), f"{node}/W"))
                nodes.append(helper.make_node("MatMul", [inp, f"{node}/W"], [out]))
        else:
            _host_step(cell, s, nodes, inits)
    model = _pruned(nodes, inits, "cell")  # without what h_new and c_new do not need (the concats split above)
    inputs = {i.name for i in model.graph.input}
    return model, [(n, w) for n, w in pre if n in inputs]


def _inline(model: onnx.ModelProto, prefix: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A host model's nodes and initializers with its inner names prefixed (its inputs and outputs kept)."""
    g = model.graph
    outer = {i.name for i in g.input} | {o.name for o in g.output}

    def name(n: str) -> str:
        return n if not n or n in outer else prefix + n
    inits, nodes = [], []
    for t in g.initializer:
        t2 = onnx.TensorProto()
        t2.CopyFrom(t)
        t2.name = name(t.name)
        inits.append(t2)
    for n in g.node:
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        n2.ClearField("input")
        n2.ClearField("output")
        n2.input.extend(name(i) for i in n.input)
        n2.output.extend(name(o) for o in n.output)
        nodes.append(n2)
    return nodes, inits


def _pruned(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], name: str) -> onnx.ModelProto:
    """A cell step graph of the nodes h_new and c_new need; its inputs: the names nothing in it makes."""
    needed, kept = {"h_new", "c_new"}, []
    for n in reversed(nodes):
        if needed & set(n.output):
            kept.append(n)
            needed |= set(n.input)
    kept.reverse()
    given = {i.name for i in inits} | {o for n in kept for o in n.output}
    inputs = [n for n in dict.fromkeys(i for n in kept for i in n.input) if n and n not in given]
    graph = helper.make_graph(kept, name, [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h_new", "c_new")],
                              [i for i in inits if i.name in needed])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _hw_cell_model(cell: Any, split: Mapping[str, _SplitProduct], given: set[str], hidden: int, input_bits: int,
                   output_bits: int) -> onnx.ModelProto | None:
    """Hardware mode, polarity inputs: a cell's step as one ONNX graph from h, c and ``given`` (per step: x, the
    products of x alone, ``<out>@x<i>`` row block i's x-row sums, ``<out>@xo`` the x-only slices' outputs) to
    h_new, c_new. A split product (by output name): h quantized as ``quantize_polarity`` does, per row block
    h's rows times the read weights (initializers: the read at the time of the call), plus the x-row sums,
    converted as ``quantize_signed`` does (Div, Round: half to even as numpy's rint, Clip, Mul), the blocks'
    columns side by side (or their digital sum, each at its columns), the x-only outputs added. None when a
    product is neither split nor given."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray | np.float32) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def quantize(x: str, step: str, levels: int, out: str) -> None:
        lo, hi = const(f"{out}/lo", np.float32(-levels)), const(f"{out}/hi", np.float32(levels))
        nodes.extend([helper.make_node("Div", [x, step], [f"{out}/d"]),
                      helper.make_node("Round", [f"{out}/d"], [f"{out}/r"]),
                      helper.make_node("Clip", [f"{out}/r", lo, hi], [f"{out}/c"]),
                      helper.make_node("Mul", [f"{out}/c", step], [out])])
    in_levels, out_levels = 2 ** input_bits - 1, 2 ** (output_bits - 1) - 1
    for s in cell.steps:
        if s[0] == "mvm":
            _, node, inp, out = s
            if out in given:
                continue
            sp = split.get(out)
            if sp is None:
                return None
            order = sorted(range(len(sp.blocks.starts)), key=lambda i: sp.blocks.cols[i][0])
            edges = [sp.blocks.cols[i] for i in order]
            side_by_side = [c0 for c0, _ in edges] == [0] + [c1 for _, c1 in edges[:-1]] and edges[-1][1] == sp.n
            order = order if side_by_side else list(range(len(order)))
            step_in = const(f"{out}/in_step", np.float32(float(sp.mvm.input_range) / in_levels))  # type: ignore[arg-type]
            quantize("h", step_in, in_levels, f"{out}/hq")
            qs = []
            for i in order:
                start, stop, w = sp.blocks.starts[i], sp.blocks.stops[i], sp.blocks.weights[i]
                k = max(start, sp.width)
                hr = f"{out}/hq"
                if (k, stop) != (sp.width, sp.width + hidden):  # some of h's rows
                    hr = f"{out}/h{i}"
                    nodes.append(helper.make_node("Slice", [f"{out}/hq", const(f"{hr}/s", np.array([k - sp.width])),
                                                            const(f"{hr}/e", np.array([stop - sp.width])),
                                                            const(f"{hr}/a", np.array([1]))], [hr]))
                nodes.append(helper.make_node("MatMul", [hr, const(f"{out}/w{i}", np.ascontiguousarray(w[k - start:]))],
                                              [f"{out}/p{i}"]))
                part = f"{out}/p{i}"
                if sp.x_parts[i] is not None:
                    nodes.append(helper.make_node("Add", [part, f"{out}@x{i}"], [f"{out}/s{i}"]))
                    part = f"{out}/s{i}"
                step = const(f"{out}/step{i}", (sp.blocks.full_scale[i] / out_levels).astype(np.float32))
                quantize(part, step, out_levels, f"{out}/q{i}")
                qs.append(f"{out}/q{i}")
            y = f"{out}/y" if sp.x_only is not None else out
            if side_by_side:
                nodes.append(helper.make_node("Concat", qs, [y], axis=1) if len(qs) > 1
                             else helper.make_node("Identity", qs, [y]))
            else:  # the digital sum of the blocks' outputs, each placed at its columns (zeros elsewhere)
                placed = []
                for i, q in zip(order, qs, strict=True):
                    c0, c1 = sp.blocks.cols[i]
                    if (c0, c1) != (0, sp.n):
                        pads = const(f"{q}/pads", np.array([0, c0, 0, sp.n - c1], np.int64))
                        nodes.append(helper.make_node("Pad", [q, pads], [f"{q}/placed"]))
                        q = f"{q}/placed"
                    placed.append(q)
                for j in range(1, len(placed)):
                    nodes.append(helper.make_node("Add", [placed[j - 1], placed[j]],
                                                  [y if j == len(placed) - 1 else f"{out}/sum{j}"]))
                    placed[j] = f"{out}/sum{j}"
                if len(placed) == 1:
                    nodes.append(helper.make_node("Identity", placed, [y]))
            if sp.x_only is not None:
                lo, hi = sp.x_only
                pads = const(f"{out}/pads", np.array([0, lo, 0, sp.n - hi], np.int64))
                nodes += [helper.make_node("Pad", [f"{out}@xo", pads], [f"{out}/xo"]),
                          helper.make_node("Add", [y, f"{out}/xo"], [out])]
        else:
            _host_step(cell, s, nodes, inits)
    model = _pruned(nodes, inits, "hardware cell")
    if {i.name for i in model.graph.input} - given - {"h", "c"}:
        return None
    return model


def _scan_model(step: onnx.ModelProto, hidden: int, widths: Mapping[str, int], masked: bool) -> tuple[
        onnx.ModelProto, list[str]]:
    """A cell's step model (_cell_model) as the body of one ONNX Scan: states h, c (initial "h0", "c0"), each
    step's slice of the inputs it reads among ``widths`` (x and the products made before the loop; fed as
    "scan:<name>", (seq, batch, width)); with ``masked`` also "scan:active" (seq, batch, 1), where a step
    leaves the state as it was and outputs 0. Outputs the last h, c and Y (seq, batch, hidden)."""
    body = onnx.GraphProto()
    body.CopyFrom(step.graph)
    names = [i.name for i in step.graph.input if i.name in widths]
    if masked:
        names.append("active")

    def vi(n: str, k: int | None = None, elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(n, elem, ["batch", hidden if k is None else k])
    del body.input[:]
    body.input.extend([vi("h"), vi("c"), *(vi(n, widths[n]) for n in names if n != "active")])
    if masked:
        body.input.append(vi("active", 1, TensorProto.BOOL))
        body.initializer.append(numpy_helper.from_array(np.zeros((), np.float32), "anac::zero"))
        body.node.extend([helper.make_node("Where", ["active", "h_new", "h"], ["anac::h"]),
                          helper.make_node("Where", ["active", "c_new", "c"], ["anac::c"]),
                          helper.make_node("Where", ["active", "h_new", "anac::zero"], ["anac::y"])])
    else:
        body.node.extend([helper.make_node("Identity", ["h_new"], ["anac::h"]),
                          helper.make_node("Identity", ["c_new"], ["anac::c"]),
                          helper.make_node("Identity", ["h_new"], ["anac::y"])])
    del body.output[:]
    body.output.extend([vi("anac::h"), vi("anac::c"), vi("anac::y")])
    scan = helper.make_node("Scan", ["h0", "c0", *(f"scan:{n}" for n in names)], ["h_t", "c_t", "y"],
                            num_scan_inputs=len(names), body=body)
    graph = helper.make_graph([scan], "cell",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h0", "c0")]
                              + [helper.make_tensor_value_info(f"scan:{n}", TensorProto.BOOL if n == "active"
                                                               else TensorProto.FLOAT, None) for n in names],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("h_t", "c_t", "y")])
    model = helper.make_model(graph, opset_imports=list(step.opset_import))
    model.ir_version = 8
    return model, names


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
