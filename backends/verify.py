"""Verification: the simulated program against onnxruntime on the original model.

Per output: max absolute error, relative error ||y - y_ref|| / ||y_ref||,
cosine similarity and argmax agreement; the run passes when every output's
relative error is within the tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from backends.host import as_array, make_session, run_session
from backends.simulator import Simulator
from compiler.program import Program

DEFAULT_TOLERANCE = {"ideal": 1e-5}


@dataclass
class OutputReport:
    """Error figures of one output."""

    shape: list[int]
    max_abs_err: float
    rel_err: float
    cosine: float
    argmax_agreement: float | None


@dataclass
class VerifyReport:
    """The result of ``verify``; ``to_json()`` is what ``anac verify --json`` prints."""

    mode: str
    passed: bool
    tolerance: float
    outputs: dict[str, OutputReport] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "passed": self.passed, "tolerance": self.tolerance,
                "outputs": {k: asdict(v) for k, v in self.outputs.items()}}


def reference_outputs(model: str | Path | onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                      names: list[str]) -> dict[str, np.ndarray]:
    """onnxruntime on the original model."""
    src = str(model) if isinstance(model, (str, Path)) else model
    sess = make_session(src, "the original model")
    feed_names = {i.name for i in sess.get_inputs()}
    feeds = {k: v for k, v in inputs.items() if k in feed_names}
    out_names = [o.name for o in sess.get_outputs()]
    values = dict(zip(out_names, run_session(sess, feeds, "the original model"), strict=True))
    return {n: as_array(values[n]) for n in names}


def compare(y: np.ndarray, ref: np.ndarray) -> OutputReport:
    """Error figures of ``y`` against ``ref``."""
    y, ref = as_array(y), as_array(ref)
    if y.shape != ref.shape:
        return OutputReport(list(y.shape), float("inf"), float("inf"), 0.0, None)
    a, b = y.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and NaN in both count as equal
    diff = np.where(same, 0.0, a - b)
    finite = np.isfinite(b)
    ref_norm = float(np.linalg.norm(np.where(finite, b, 0.0)))
    err_norm = float(np.linalg.norm(diff)) if np.isfinite(diff).all() else float("inf")
    rel = err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))
    both = finite & np.isfinite(a)  # the cosine is taken over the values finite in both
    aa, bb = np.where(both, a, 0.0), np.where(both, b, 0.0)
    na, nb = float(np.linalg.norm(aa)), float(np.linalg.norm(bb))
    if na == 0 and nb == 0:
        cosine = 1.0 if err_norm == 0 else 0.0
    else:
        cosine = float(aa @ bb / (na * nb)) if na > 0 and nb > 0 else 0.0
    max_abs = float(np.abs(diff).max()) if diff.size else 0.0
    return OutputReport(list(y.shape), max_abs, rel, cosine, _argmax_agreement(y, ref))


def _argmax_agreement(y: np.ndarray, ref: np.ndarray) -> float | None:
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        return float(np.mean(y == ref)) if ref.size else None
    if ref.ndim >= 1 and ref.shape[-1] > 1 and ref.size:
        return float(np.mean(np.argmax(y, axis=-1) == np.argmax(ref, axis=-1)))
    return None


def verify_program(prog: Program, model: str | Path | onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                   mode: str = "ideal", tolerance: float | None = None) -> VerifyReport:
    """Run ``prog`` in the simulator and the original model in onnxruntime; compare."""
    tol = DEFAULT_TOLERANCE[mode] if tolerance is None else float(tolerance)
    names = [t.name for t in prog.outputs]
    got = Simulator(prog, mode).run(inputs)
    ref = reference_outputs(model, inputs, names)
    outputs = {n: compare(got[n], ref[n]) for n in names}
    passed = all(o.rel_err <= tol for o in outputs.values())
    return VerifyReport(mode, passed, tol, outputs)
