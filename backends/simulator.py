"""The reference simulator: runs a compiled Program on numpy and onnxruntime.

Host stages run in onnxruntime; analog stages run every MVM as one matmul
per slice, batched over all input rows, with partial sums of slices that
share output columns added digitally. ``ideal`` mode uses the float weights
with no quantization and no noise, so it matches onnxruntime on the original
model to float32 rounding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from backends.host import HostStages
from compiler.errors import AnacError, InputError
from compiler.ir import TensorInfo
from compiler.program import MVM, Program

MODES = ("ideal",)


@dataclass
class _SlicePlan:
    rows: tuple[int, int]
    cols: tuple[int, int]
    weights: np.ndarray  # contiguous float64 in ideal mode


class Simulator:
    """A program prepared for repeated runs: sessions made and slices laid out once."""

    def __init__(self, prog: Program, mode: str = "ideal") -> None:
        if mode not in MODES:
            raise AnacError(f"unknown simulation mode '{mode}'; available: {', '.join(MODES)}")
        self.prog, self.mode = prog, mode
        self._host = HostStages(prog.stages or [])
        self._plans: dict[str, list[list[_SlicePlan]]] = {}
        by_matrix: dict[str, list[_SlicePlan]] = {}
        for s in prog.slices or []:
            w = prog.matrices[s.matrix].weights  # type: ignore[index]
            block = np.ascontiguousarray(w[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]], dtype=np.float64)
            by_matrix.setdefault(s.matrix, []).append(_SlicePlan(s.rows, s.cols, block))
        for mvm in (prog.mvms or {}).values():
            self._plans[mvm.node] = [by_matrix[m] for m in mvm.matrices]

    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs of the program for one set of inputs (keyed by graph input name)."""
        env: dict[str, object] = dict(check_inputs(self.prog.inputs, inputs))
        for stage in self.prog.stages or []:
            if stage.kind == "host":
                self._host.run(stage, env)
            else:
                for node in stage.nodes:
                    mvm = self.prog.mvms[node]  # type: ignore[index]
                    env[mvm.output] = self._run_mvm(mvm, env[mvm.input])  # type: ignore[arg-type]
        return {t.name: env[t.name] for t in self.prog.outputs}  # type: ignore[misc]

    def _matmul(self, x: np.ndarray, plans: list[_SlicePlan], n: int) -> np.ndarray:
        """x (M x K) @ W via its slices; partial sums over row blocks added digitally.

        Ideal mode sums in float64 and rounds to float32 once: float32 BLAS can round
        equal columns one ULP apart depending on which slice holds them and where its
        SIMD tail falls, and a following Softmax turns that into a different answer.
        """
        x = x.astype(np.float64)
        y = np.zeros((x.shape[0], n), dtype=np.float64)
        for p in plans:
            y[:, p.cols[0]:p.cols[1]] += x[:, p.rows[0]:p.rows[1]] @ p.weights
        return y.astype(np.float32)

    def _run_mvm(self, mvm: MVM, x: np.ndarray) -> np.ndarray:
        plans = self._plans[mvm.node]
        shapes = [self.prog.matrices[m].shape for m in mvm.matrices]  # type: ignore[index]
        x = np.asarray(x, dtype=np.float32)
        if mvm.kind == "conv":
            y = _conv(x, mvm, plans, shapes, self._matmul)
        else:
            p = mvm.params
            if p["x_transpose"]:
                x = np.swapaxes(x, -1, -2)
            k, n = shapes[0]
            lead = x.shape[:-1]
            y = self._matmul(x.reshape(-1, k), plans[0], n).reshape(lead + (n,))
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
            y = y + bias
        # not ascontiguousarray: it turns the 0-d result of a 1-D @ 1-D MatMul into shape (1,)
        return np.asarray(y, dtype=np.float32, order="C")


def _conv(x: np.ndarray, mvm: MVM, plans: list[list[_SlicePlan]], shapes: list[tuple[int, int]],
          matmul) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Conv as im2col + MVM per group: rows are receptive fields, ordered (channel, kernel...)."""
    p = mvm.params
    kernel, strides, dil = p["kernel"], p["strides"], p["dilations"]
    nsp = len(kernel)
    if x.ndim != nsp + 2:
        raise InputError(f"node '{mvm.node}' (Conv): input of rank {x.ndim}, a {nsp}-D kernel needs rank {nsp + 2}")
    spatial = x.shape[2:]
    eff = [(k - 1) * d + 1 for k, d in zip(kernel, dil, strict=True)]
    begin, end = _conv_pads(p["auto_pad"], p["pads"], spatial, strides, eff)
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end, strict=True)))
    cg = p["in_channels_per_group"]
    batch = x.shape[0]
    outs = []
    axes = tuple(range(2, 2 + nsp))
    for g, (gplans, (k, n)) in enumerate(zip(plans, shapes, strict=True)):
        xg = xp[:, g * cg:(g + 1) * cg]
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


def simulate(prog: Program, inputs: Mapping[str, np.ndarray], mode: str = "ideal") -> dict[str, np.ndarray]:
    """Run a program once on ``inputs``; for repeated runs keep a ``Simulator``."""
    return Simulator(prog, mode).run(inputs)
