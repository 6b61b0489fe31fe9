"""Calibration of the analog I/O ranges from representative inputs.

Runs the program in ideal mode and records, per MVM, the distribution of
|input| (the full scale of its landing pads) and, per slice, of |analog
output| (the full scale of its output conversion; in current units, i.e. each
column's output times its gain when the matrix has a conductance scale per
column, ``Program.column_gains``), as histograms on a log
grid of 1/8 octave. Each range is then chosen to minimise the conversion's
mean squared error on those values at the hardware's bits: values above the
range saturate (error (|x| - r)^2), values below half a step round to zero
(x^2), the rest carry the rounding error step^2 / 12. A fixed percentile
(``percentile=``) clips the heaviest tails whatever the bits: at 99.99 it
cost MobileNetV3-small a relative error of 0.13 with 16-bit I/O and no
device noise, where the MSE rule chooses ranges near the largest values.
Without data, the fallback is seeded standard-normal inputs, and a warning
says so: ranges set that way fit inputs of unit scale only.

Those ranges fit the exact activations. On a noisy chip, nets that amplify
device noise (depthwise-separable ones: squeeze-excitation gates,
hard-swish) do better with tighter ranges, which clip the large errors the
noise makes along with the rare true tails. ``tune_ranges`` chooses, on the
calibration data and on one simulated chip instance of its own (not one a
verify draws by default), one factor for all input ranges and then one for
all output ranges, each the candidate whose hardware-mode outputs are
closest to the exact ones.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from anac.backends.simulator import _NONNEGATIVE, Simulator, check_inputs, tile_activation
from anac.core.errors import InputError
from anac.core.program import Program

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = None  # None: the MSE rule; a number in (0, 100]: that percentile of |x|
FALLBACK_DRAWS = 8
BINS_PER_OCTAVE = 8
_LOW, _HIGH = -64, 64  # octaves the histograms cover: |x| in [2^-64, 2^64); smaller is counted as zero
_NBINS = (_HIGH - _LOW) * BINS_PER_OCTAVE


def calibrate(prog: Program, data: Mapping[str, np.ndarray] | None = None, *,
              percentile: float | None = DEFAULT_PERCENTILE, seed: int = 0) -> dict[str, Any]:
    """Set ``input_range`` on every MVM and ``output_range`` on every slice; return a summary."""
    if percentile is not None and not 0 < percentile <= 100:
        raise InputError(f"calibration percentile must be in (0, 100], got {percentile}")
    seen_in: dict[str, Any] = {}
    seen_out: dict[int, Any] = {}
    # A slice's output is converted in current units: per-column scales weigh its columns apart.
    gains = {s.id: g for s in prog.slices or [] if (g := prog.column_gains(s)) is not None}

    def observe_percentile(kind: str, key: Any, values: np.ndarray) -> None:
        values = values * gains[key] if kind == "slice" and key in gains else values
        book = seen_in if kind == "input" else seen_out
        level = float(np.percentile(np.abs(values), percentile)) if values.size else 0.0
        book[key] = max(book.get(key, 0.0), level)

    def observe_histogram(kind: str, key: Any, values: np.ndarray) -> None:
        values = values * gains[key] if kind == "slice" and key in gains else values
        book = seen_in if kind == "input" else seen_out
        h = book.get(key)
        if h is None:
            h = book[key] = np.zeros(_NBINS + 1, np.int64)  # bin 0: zeros (and |x| < 2^-64)
        h += _histogram(values)

    sim = Simulator(prog, "ideal", observer=observe_histogram if percentile is None else observe_percentile)
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
    hw = prog.hardware
    mvms = prog.mvms or {}
    if percentile is None:
        in_levels = 2 ** hw.input_bits - 1  # polarity or two-pass: an unsigned magnitude word either way
        unsigned = {mid: bool(tile_activation(prog, m) and m.activation["op"] in _NONNEGATIVE)  # type: ignore[index]
                    for m in mvms.values() for mid in m.matrices}
        ranges_in = {k: mse_range(h, in_levels) for k, h in seen_in.items()}
        ranges_out = {s.id: mse_range(seen_out[s.id], 2 ** hw.output_bits - 1 if unsigned.get(s.matrix)
                                      else 2 ** (hw.output_bits - 1) - 1)
                      for s in prog.slices or [] if s.id in seen_out}
        rule = "mse"
    else:
        ranges_in, ranges_out, rule = seen_in, seen_out, f"percentile {percentile}"
    for mvm in mvms.values():
        mvm.input_range = _positive(ranges_in.get(mvm.node, 0.0))
    for s in prog.slices or []:
        s.output_range = _positive(ranges_out.get(s.id, 0.0))
    # A copy (replicate) sees the same inputs with the same weights: each of its slices takes the widest
    # range of the copy-0 slices it overlaps (the simulator runs copies with copy 0's output ranges).
    first = [s for s in prog.slices or [] if s.copy == 0]
    for s in prog.slices or []:
        if s.copy:
            s.output_range = max((f.output_range for f in first if f.matrix == s.matrix  # type: ignore[misc]
                                  and f.rows[0] < s.rows[1] and s.rows[0] < f.rows[1]
                                  and f.cols[0] < s.cols[1] and s.cols[0] < f.cols[1]), default=1.0)
    prog.calibration = {"source": source, "rule": rule,
                        "percentile": percentile, "input_bits": hw.input_bits, "output_bits": hw.output_bits}
    return prog.calibration


TUNE_FACTORS = (1.0, 0.85, 0.7, 0.55, 0.4)
TUNE_SEED = 2**31 - 1  # a chip instance of its own: verify's --seed counts up from 0
TUNE_T = 86400.0  # read a day after programming, the time the encodings' sensitivities are measured at
TUNE_SAMPLES = 64  # calibration samples the tuning runs on (at most)


def tune_ranges(prog: Program, data: Mapping[str, np.ndarray] | None = None, *, seed: int = TUNE_SEED,
                t: float = TUNE_T, factors: tuple[float, ...] = TUNE_FACTORS) -> dict[str, Any]:
    """Scale the calibrated input ranges, then the output ranges, by the factor (of ``factors``) that brings
    the hardware-mode outputs closest (relative L2 error over all outputs) to the exact ones, on one
    chip instance (``seed``) read at ``t``, on calibration batches. Returns the factors and errors."""
    if prog.plan is not None or not prog.mvms:
        return {}
    if any(m.input_range is None for m in prog.mvms.values()):
        raise InputError("tune_ranges needs calibrated ranges: run calibrate first")
    if data is None:
        batches = list(_random_batches(prog, 0))[:2]
    else:
        batches, samples = [], 0
        for b in calibration_batches(prog, data):
            batches.append(b)
            samples += len(next(iter(b.values())))
            if samples >= TUNE_SAMPLES:
                break
    ideal = Simulator(prog, "ideal")
    exact = [ideal.run(b) for b in batches]

    def error() -> float:
        # A simulator takes the ranges as it is built (some are baked into its models): one per candidate, on
        # the same chip instance (programming is seeded).
        hw = Simulator(prog, "hardware")
        hw.program(seed)
        hw.at(t)
        num = den = 0.0
        for b, ref in zip(batches, exact, strict=True):
            out = hw.run(b)
            for k, r in ref.items():
                if np.issubdtype(r.dtype, np.floating):
                    num += float(np.sum((out[k].astype(np.float64) - r) ** 2))
                    den += float(np.sum(r.astype(np.float64) ** 2))
        return float(np.sqrt(num / den)) if den > 0 else 0.0

    base_in = {k: float(m.input_range) for k, m in prog.mvms.items()}  # type: ignore[arg-type]
    base_out = {s.id: float(s.output_range) for s in prog.slices or []}  # type: ignore[arg-type]
    log.info("tuning the analog ranges for the noisy chip: %d factors x 2 on %d batch(es)", len(factors), len(batches))
    tried: dict[str, dict[float, float]] = {"input": {}, "output": {}}
    for a in factors:
        for k, m in prog.mvms.items():
            m.input_range = base_in[k] * a
        tried["input"][a] = error()
    best_in = min(tried["input"], key=tried["input"].get)  # type: ignore[arg-type]
    for k, m in prog.mvms.items():
        m.input_range = base_in[k] * best_in
    for a in factors:
        for s in prog.slices or []:
            s.output_range = base_out[s.id] * a
        tried["output"][a] = error()
    best_out = min(tried["output"], key=tried["output"].get)  # type: ignore[arg-type]
    for s in prog.slices or []:
        s.output_range = base_out[s.id] * best_out
    summary = {"input_factor": best_in, "output_factor": best_out, "error_before": tried["input"][factors[0]],
               "error_after": tried["output"][best_out], "seed": seed, "t": t}
    log.info("ranges tuned: inputs x%g, outputs x%g; error on the calibration data %.3f -> %.3f", best_in, best_out,
             summary["error_before"], summary["error_after"])
    if prog.calibration is not None:
        prog.calibration = {**prog.calibration, "tuned": summary}
    return summary


def _histogram(values: np.ndarray) -> np.ndarray:
    """Counts of |values| per bin: bin 0 holds zeros, bin i > 0 the 1/8 octave [2^(LOW + (i-1)/8), ...)."""
    a = np.abs(np.asarray(values, np.float64).ravel())
    a = a[np.isfinite(a)]
    nz = a[a >= 2.0 ** _LOW]
    idx = np.minimum(np.floor((np.log2(nz) - _LOW) * BINS_PER_OCTAVE).astype(np.int64), _NBINS - 1) + 1
    h = np.bincount(idx, minlength=_NBINS + 1)
    h[0] += a.size - nz.size
    return h


def mse_range(hist: np.ndarray, levels: int) -> float:
    """The full scale r minimising the mean squared conversion error of the histogrammed |x| with ``levels``
    steps over [0, r]; candidates are the bin edges up to the largest value seen."""
    counts = hist[1:].astype(np.float64)
    nz = np.flatnonzero(counts)
    if nz.size == 0:
        return 0.0
    lo_edge = 2.0 ** (_LOW + np.arange(_NBINS) / BINS_PER_OCTAVE)
    centre = lo_edge * 2.0 ** (0.5 / BINS_PER_OCTAVE)
    top = nz[-1]
    first = max(nz[0], top - 16 * BINS_PER_OCTAVE)  # ranges below 2^-16 of the largest value never win
    c, h = centre[:top + 1], counts[:top + 1]
    s0, s1, s2 = np.cumsum(h), np.cumsum(h * c), np.cumsum(h * c * c)
    r = lo_edge[first:top + 1] * 2.0 ** (1.0 / BINS_PER_OCTAVE)  # each candidate: the upper edge of a bin
    k = np.arange(first, top + 1)  # bins <= k are inside the range
    tail0, tail1, tail2 = s0[-1] - s0[k], s1[-1] - s1[k], s2[-1] - s2[k]
    step = r / levels
    j = np.searchsorted(c, step / 2) - 1  # bins whose centre rounds to zero
    low2 = np.where(j >= 0, s2[np.maximum(j, 0)], 0.0)
    low0 = np.where(j >= 0, s0[np.maximum(j, 0)], 0.0)
    err = tail2 - 2 * r * tail1 + r * r * tail0 + low2 + (s0[k] - low0) * step * step / 12
    return float(r[int(np.argmin(err))])


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
