"""Verification: the simulated program against onnxruntime on the original model.

Per output: max absolute error, relative error ||y - y_ref|| / ||y_ref||,
cosine similarity and argmax agreement; the run passes when every output's
relative error is within the tolerance. Hardware mode repeats this for each
time after programming and each programmed instance, reporting mean and
spread, and top-1 accuracy when labels are given.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from anac.backends.host import as_array, make_session, run_session
from anac.backends.simulator import Simulator
from anac.core.errors import AnacError
from anac.core.program import Program

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = {"ideal": 1e-5, "hardware": 0.25}


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
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "passed": self.passed, "tolerance": self.tolerance,
                "outputs": {k: asdict(v) for k, v in self.outputs.items()}, "problems": self.problems}


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


def check_tolerance(tolerance: float | None, mode: str) -> float:
    """The tolerance to use: the mode's default, or ``tolerance`` when it is a finite number >= 0."""
    if tolerance is None:
        return DEFAULT_TOLERANCE[mode]
    tol = float(tolerance)
    if not np.isfinite(tol) or tol < 0:
        raise AnacError(f"tolerance must be a finite number >= 0, got {tolerance}")
    return tol


def output_problems(name: str, y: np.ndarray, ref: np.ndarray, side: str = "the simulated program") -> list[str]:
    """Why comparing ``y`` with ``ref`` cannot pass whatever the error figures say: non-finite values on either
    side, or a float reference that is all zeros or constant (it carries no information to check against)."""
    out = []
    for who, a in ((side, as_array(y)), ("onnxruntime (the reference)", as_array(ref))):
        if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                out.append(f"output '{name}' of {who} has {bad} non-finite value(s) (NaN or Inf) of {a.size}")
    r = as_array(ref)
    if np.issubdtype(r.dtype, np.floating) and r.size and np.isfinite(r).all():
        if not r.any():
            out.append(f"the reference output '{name}' is all zeros: it carries no information to verify against")
        elif r.size > 1 and (r == r.flat[0]).all():
            out.append(f"the reference output '{name}' is constant ({r.flat[0]:g} everywhere): it carries no "
                       f"information to verify against")
    return out


def _argmax_agreement(y: np.ndarray, ref: np.ndarray) -> float | None:
    if np.issubdtype(ref.dtype, np.integer) or ref.dtype == np.bool_:
        return float(np.mean(y == ref)) if ref.size else None
    if ref.ndim >= 1 and ref.shape[-1] > 1 and ref.size:
        return float(np.mean(np.argmax(y, axis=-1) == np.argmax(ref, axis=-1)))
    return None


def verify_program(prog: Program, model: str | Path | onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                   tolerance: float | None = None) -> VerifyReport:
    """Run ``prog`` in the ideal simulator and the original model in onnxruntime; compare."""
    mode = "ideal"
    tol = check_tolerance(tolerance, mode)
    names = [t.name for t in prog.outputs]
    got = Simulator(prog, mode).run(inputs)
    ref = reference_outputs(model, inputs, names)
    outputs = {n: compare(got[n], ref[n]) for n in names}
    problems = [p for n in names for p in output_problems(n, got[n], ref[n])]
    passed = not problems and all(o.rel_err <= tol for o in outputs.values())
    return VerifyReport(mode, passed, tol, outputs, problems)

TIME_UNITS = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}


def parse_times(text: str) -> list[tuple[str, float]]:
    """"1s,1h,1d,1y" -> [("1s", 1.0), ("1h", 3600.0), ...]; a bare number is seconds."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        m = re.fullmatch(r"([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)", part, re.IGNORECASE)
        if not part or m is None or (m.group(2) and m.group(2).lower() not in TIME_UNITS):
            raise AnacError(f"cannot read time '{part}' in '{text}': give numbers >= 0 with a unit of "
                            f"{', '.join(TIME_UNITS)} (for example 1s,1h,1d,1y)")
        out.append((part, float(m.group(1)) * TIME_UNITS[(m.group(2) or "s").lower()]))
    return out


@dataclass
class Stat:
    """Mean and standard deviation over repeats (each a fresh programming)."""

    mean: float
    std: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        a = np.asarray(values, dtype=np.float64)
        return cls(float(a.mean()), float(a.std()))


@dataclass
class TimeReport:
    """Figures at one time after programming, over all repeats."""

    label: str
    seconds: float
    outputs: dict[str, dict[str, Stat | None]]
    accuracy: Stat | None = None


@dataclass
class HardwareVerifyReport:
    """The result of a hardware-mode verify; ``to_json()`` is what ``anac verify --json`` prints."""

    passed: bool
    tolerance: float
    seed: int
    repeats: int
    drift_compensation: bool
    times: list[TimeReport]
    reference_accuracy: float | None = None
    accuracy_output: str | None = None
    calibration: dict[str, Any] | None = None
    mode: str = "hardware"
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "passed": self.passed, "tolerance": self.tolerance, "seed": self.seed,
                "repeats": self.repeats, "drift_compensation": self.drift_compensation,
                "reference_accuracy": self.reference_accuracy, "accuracy_output": self.accuracy_output,
                "calibration": self.calibration, "problems": self.problems,
                "times": [{"t": t.label, "seconds": t.seconds, "accuracy": _stat_json(t.accuracy),
                           "outputs": {k: {f: _stat_json(v) for f, v in o.items()} for k, o in t.outputs.items()}}
                          for t in self.times]}


def _stat_json(s: Stat | None) -> dict[str, float] | None:
    return None if s is None else asdict(s)


def accuracy_output(outputs: Mapping[str, np.ndarray], n_labels: int) -> str | None:
    """The first float output of shape (n_labels, classes) to take the argmax of for accuracy."""
    for name, y in outputs.items():
        y = as_array(y)
        if np.issubdtype(y.dtype, np.floating) and y.ndim == 2 and y.shape[0] == n_labels and y.shape[1] > 1:
            return name
    return None


def verify_hardware(prog: Program, model: str | Path | onnx.ModelProto, inputs: Mapping[str, np.ndarray],
                    times: list[tuple[str, float]], *, seed: int = 0, repeats: int = 1,
                    drift_compensation: bool = True, labels: np.ndarray | None = None,
                    tolerance: float | None = None) -> HardwareVerifyReport:
    """Program ``repeats`` chip instances (seeds seed, seed+1, ...) and compare at each time with onnxruntime."""
    if repeats < 1:
        raise AnacError(f"repeats must be at least 1, got {repeats}")
    tol = check_tolerance(tolerance, "hardware")
    names = [t.name for t in prog.outputs]
    ref = reference_outputs(model, inputs, names)
    problems: list[str] = []
    acc_name, ref_acc = None, None
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        acc_name = accuracy_output(ref, len(labels))
        if acc_name is None:
            raise AnacError(f"'labels' holds {len(labels)} labels but no output has shape ({len(labels)}, classes)")
        ref_acc = float(np.mean(ref[acc_name].argmax(axis=1) == labels))
    sim = Simulator(prog, "hardware")
    per_time: dict[str, dict[str, list[OutputReport]]] = {label: {n: [] for n in names} for label, _ in times}
    accs: dict[str, list[float]] = {label: [] for label, _ in times}
    for r in range(repeats):
        log.info("programming chip instance %d of %d (seed %d) and reading it at %s", r + 1, repeats, seed + r,
                 ", ".join(label for label, _ in times))
        sim.program(seed + r)
        for label, secs in times:
            sim.at(secs, drift_compensation)
            got = sim.run(inputs)
            for n in names:
                per_time[label][n].append(compare(got[n], ref[n]))
                problems += [p for p in output_problems(n, got[n], ref[n], f"chip instance {r} at {label}")
                             if p not in problems]
            if acc_name is not None:
                accs[label].append(float(np.mean(as_array(got[acc_name]).argmax(axis=1) == labels)))
    reports = []
    for label, secs in times:
        outs = {}
        for n, reps in per_time[label].items():
            outs[n] = {f: Stat.of([getattr(o, f) for o in reps]) for f in ("max_abs_err", "rel_err", "cosine")}
            am = [o.argmax_agreement for o in reps]
            outs[n]["argmax_agreement"] = None if any(a is None for a in am) else Stat.of(am)  # type: ignore[arg-type]
        reports.append(TimeReport(label, secs, outs, Stat.of(accs[label]) if acc_name is not None else None))
    passed = not problems and \
        all(o["rel_err"].mean <= tol for t in reports for o in t.outputs.values())  # type: ignore[union-attr]
    return HardwareVerifyReport(passed, tol, seed, repeats, drift_compensation, reports, ref_acc, acc_name,
                                prog.calibration, problems=problems)
