"""Calibration of the analog I/O ranges from representative inputs.

Runs the program in ideal mode and records, per MVM, a high percentile of
|input| (the full-scale input of its landing pads) and, per slice, a high
percentile of |analog output| (the full scale of its output conversion).
Without data, the fallback is seeded standard-normal inputs, and a warning
says so: ranges set that way fit inputs of unit scale only.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from anac.backends.simulator import Simulator, check_inputs
from anac.core.errors import InputError
from anac.core.program import Program

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.99
FALLBACK_DRAWS = 8


def calibrate(prog: Program, data: Mapping[str, np.ndarray] | None = None, *,
              percentile: float = DEFAULT_PERCENTILE, seed: int = 0) -> dict[str, Any]:
    """Set ``input_range`` on every MVM and ``output_range`` on every slice; return a summary."""
    if not 0 < percentile <= 100:
        raise InputError(f"calibration percentile must be in (0, 100], got {percentile}")
    seen_in: dict[str, float] = {}
    seen_out: dict[int, float] = {}

    def observe(kind: str, key: Any, values: np.ndarray) -> None:
        book = seen_in if kind == "input" else seen_out
        level = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
        book[key] = max(book.get(key, 0.0), level)

    sim = Simulator(prog, "ideal", observer=observe)
    if data is None:
        log.warning("no calibration data: input and output ranges are set from %d draws of seeded standard-normal "
                    "inputs, which fit inputs of unit scale only; give representative inputs with "
                    "--calibration-data FILE.npz", FALLBACK_DRAWS)
        batches = list(_random_batches(prog, seed))
        source = f"fallback: {FALLBACK_DRAWS} draws of seeded N(0,1) inputs (seed {seed})"
    else:
        batches = list(calibration_batches(prog, data))
        source = f"data: {len(batches)} batch(es)"
    log.info("calibrating analog input/output ranges on %d batch(es)", len(batches))
    for batch in batches:
        sim.run(batch)
    for mvm in (prog.mvms or {}).values():
        mvm.input_range = _positive(seen_in.get(mvm.node, 0.0))
    for s in prog.slices or []:
        s.output_range = _positive(seen_out.get(s.id, 0.0))
    # A copy (replicate) sees the same inputs with the same weights: each of its slices takes the widest
    # range of the copy-0 slices it overlaps (the simulator runs copies with copy 0's output ranges).
    first = [s for s in prog.slices or [] if s.copy == 0]
    for s in prog.slices or []:
        if s.copy:
            s.output_range = max((f.output_range for f in first if f.matrix == s.matrix  # type: ignore[misc]
                                  and f.rows[0] < s.rows[1] and s.rows[0] < f.rows[1]
                                  and f.cols[0] < s.cols[1] and s.cols[0] < f.cols[1]), default=1.0)
    prog.calibration = {"source": source, "percentile": percentile}
    return prog.calibration


def _positive(v: float) -> float:
    # A range of zero (a dead input or an all-zero slice) would divide by zero in the quantizers.
    return float(v) if v > 0 else 1.0


def _random_batches(prog: Program, seed: int) -> Iterator[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    for _ in range(FALLBACK_DRAWS):
        batch = {}
        for t in prog.inputs:
            if np.issubdtype(t.dtype, np.floating):
                batch[t.name] = rng.standard_normal(t.shape).astype(t.dtype)  # type: ignore[arg-type]
            elif np.issubdtype(t.dtype, np.integer):  # small values: valid indices into most tables
                batch[t.name] = rng.integers(0, 4, t.shape).astype(t.dtype)  # type: ignore[arg-type]
            else:
                raise InputError(f"input '{t.name}' is {t.dtype}: random calibration inputs cannot stand in for "
                                 f"it; give --calibration-data")
        yield batch


def calibration_batches(prog: Program, data: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    """Cut the calibration arrays (samples on axis 0) into batches of the compiled input shapes.

    The last batch wraps around to the first samples, so any number of samples
    fills whole batches (host stages run at the compiled batch size).
    """
    names = [t.name for t in prog.inputs]
    arrays = {k: np.asarray(v) for k, v in data.items() if k != "labels"}
    missing, extra = [n for n in names if n not in arrays], [n for n in arrays if n not in names]
    if missing or extra:
        raise InputError("calibration data does not match the model's inputs: "
                         + "; ".join(p for p in (f"missing {', '.join(missing)}" if missing else "",
                                                 f"unknown {', '.join(extra)}" if extra else "") if p)
                         + f"; the model takes {', '.join(names)}")
    batches = 1
    for t in prog.inputs:
        a, shape = arrays[t.name], tuple(t.shape)  # type: ignore[arg-type]
        if a.ndim != len(shape) or a.shape[1:] != shape[1:] or a.dtype != t.dtype or a.shape[0] == 0:
            raise InputError(f"calibration array '{t.name}' is {a.dtype} {list(a.shape)}; the program takes "
                             f"{t.dtype} batches of {list(shape)} (samples on the first axis)")
        batches = max(batches, -(-a.shape[0] // shape[0]))
    for i in range(batches):
        yield check_inputs(prog.inputs, {t.name: arrays[t.name][np.arange(i * t.shape[0], (i + 1) * t.shape[0])
                                                                 % len(arrays[t.name])]  # type: ignore[index]
                                         for t in prog.inputs})
