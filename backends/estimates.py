"""Estimates for mapping decisions: per-layer sensitivity to each encoding.

A layer's sensitivity to an encoding is the relative error of its output,
||X W_hw - X W|| / ||X W||, when its weights are programmed into simulated
devices with that encoding and read at ``t`` (with drift compensation), on
its inputs X: rows captured from calibration data when given, else seeded
standard-normal rows. assign_devices minimises the sum of their squares
(independent errors add in variance) under a device budget.

The error is a statistic, so it is measured on a seeded sample of each
matrix: ``ROWS`` of its rows and ``COLUMNS`` of its columns (the relative
error of a sum of independent per-device errors does not depend on how many
rows it runs over). The conductance scale still comes from the whole matrix
(its largest magnitude, or each sampled column's), as its slices see it.
The cost is a few hundred thousand simulated devices per layer and encoding,
whatever the layer's size.

A layer's output sensitivity (``output_sensitivity``) is what its error costs
at the model's outputs: the relative error of the outputs of an ideal run
with only that layer's weights perturbed, by Gaussian noise of one standard
deviation per column proportional to the conductance scale (the matrix's
largest magnitude, or the column's under ``per_column``: device noise is a
fraction of g_max), on programmed cells only, rescaled so the layer's own
relative output error on its inputs (as above) is its measured sensitivity.
A layer whose output a later large-gain path amplifies scores higher than its
own error; one whose error later layers wash out, lower.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
from anac.backends.analog import ProgrammedDevices, device_model
from anac.backends.simulator import Simulator
from anac.core.conductance import device_targets
from anac.core.program import Matrix, Program

SENSITIVITY_T = 86400.0  # one day after programming
# The relative precision of a layer's summed squared error as measured here (64 x 256 sampled outputs, one
# seeded draw of device noise): differences below it are noise (assign_devices' error_tolerance).
PRECISION = 0.02
SAMPLES = 64
ROWS = 128  # input rows sampled per matrix
COLUMNS = 256  # output columns sampled per matrix


def layer_sensitivity(prog: Program, inputs: Mapping[str, np.ndarray] | None = None, *, t: float = SENSITIVITY_T,
                      seed: int = 0, samples: int = SAMPLES) -> dict[str, dict[str, float]]:
    """{layer: {encoding: relative output error}} for every crossbar layer and every encoding of the spec."""
    hw = prog.hardware
    model = device_model(hw.device)
    out: dict[str, dict[str, float]] = {}
    for li, mvm in enumerate((prog.mvms or {}).values()):
        rng = np.random.default_rng([seed, li])
        mats = [prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
        sums = {enc.name: [0.0, 0.0] for enc in hw.encodings}
        for m in mats:
            x = _rows(inputs, mvm.node, m.input_rows, samples, rng)
            if m.kept_rows is not None:
                x = x[:, m.kept_rows]
            pick = np.random.default_rng([seed, li])
            rows = np.sort(pick.choice(m.shape[0], min(m.shape[0], ROWS), replace=False))
            cols = np.sort(pick.choice(m.shape[1], min(m.shape[1], COLUMNS), replace=False))
            w, absmax = _sample(m, rows, cols)
            x = x[:, rows]
            ref = x @ w.astype(np.float64)
            for ei, enc in enumerate(hw.encodings):
                targets, scale = device_targets(w, enc, hw.device.g_max_us, m.per_column, m.clip_sigma, absmax)
                dev_rng = np.random.default_rng([seed, li, ei])
                dev = ProgrammedDevices(model, targets.astype(np.float16), scale, enc, hw.device.g_max_us, dev_rng)
                mask = prog.block_mask(m.id, (0, m.shape[0]), (0, m.shape[1]))
                if mask is not None:  # cells between packed groups are never programmed
                    dev.g = dev.g * mask[np.ix_(rows, cols)]
                dev.set_reference(dev_rng)
                w_hw = dev.weights_at(t, dev_rng, compensate=True)
                sums[enc.name][0] += float(np.sum((x @ w_hw.astype(np.float64) - ref) ** 2))
                sums[enc.name][1] += float(np.sum(ref ** 2))
        out[mvm.node] = {e: float(np.sqrt(num / den)) if den > 0 else 0.0 for e, (num, den) in sums.items()}
    return out


def output_sensitivity(prog: Program, batches: Sequence[Mapping[str, np.ndarray]], layer_error: Mapping[str, float],
                       inputs: Mapping[str, np.ndarray] | None = None, *, seed: int = 0, samples: int = SAMPLES,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, float]:
    """{layer: relative error of the model's outputs} with only that layer's weights perturbed so that its own
    relative output error is ``layer_error[layer]`` (ideal runs on ``batches``; layer inputs as layer_sensitivity)."""
    ref = _outputs(Simulator(prog, "ideal"), batches)
    den = sum(float(np.sum(np.square(y))) for y in ref)
    order = {n: i for i, n in enumerate(prog.mvms or {})}
    out: dict[str, float] = {}
    for done, (n, e) in enumerate(layer_error.items()):
        if e <= 0 or den <= 0:
            out[n] = 0.0
            continue
        li = order[n]
        mats = dict(prog.matrices or {})
        noise = {}
        num = ref_sq = 0.0
        for mid in prog.mvms[n].matrices:  # type: ignore[index]
            m = mats[mid]
            rng = np.random.default_rng([seed, li, len(noise)])
            w = np.asarray(m.weights, np.float64)
            scale = np.abs(w).max(axis=0) if m.per_column else np.abs(w).max()
            d = rng.standard_normal(w.shape) * scale
            mask = prog.block_mask(mid, (0, m.shape[0]), (0, m.shape[1]))
            if mask is not None:  # cells between packed groups are never programmed
                d *= mask
            x = _rows(inputs, n, m.input_rows, samples, rng)
            if m.kept_rows is not None:
                x = x[:, m.kept_rows]
            num += float(np.sum((x @ d) ** 2))
            ref_sq += float(np.sum((x @ w) ** 2))
            noise[mid] = d
        k = e * np.sqrt(ref_sq / num) if num > 0 else 0.0
        for mid, d in noise.items():
            mats[mid] = replace(mats[mid], weights=(mats[mid].weights + k * d).astype(np.float32))
        got = _outputs(Simulator(replace(prog, matrices=mats), "ideal"), batches)
        err = sum(float(np.sum((a - b) ** 2)) for a, b in zip(got, ref, strict=True))
        out[n] = float(np.sqrt(err / den))
        if progress is not None:
            progress(done + 1, len(layer_error))
    return out


def _outputs(sim: Simulator, batches: Sequence[Mapping[str, np.ndarray]]) -> list[np.ndarray]:
    return [np.asarray(y, np.float64).ravel() for b in batches for y in sim.run(b).values()]


def _sample(m: Matrix, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, float | np.ndarray | None]:
    """The sampled weights and the conductance scale's magnitude from the whole matrix (None under clipping,
    whose bound comes from the sample's spread)."""
    w = m.weights[np.ix_(rows, cols)]
    if m.clip_sigma:
        return w, None
    if m.per_column:
        return w, np.abs(m.weights[:, cols]).max(axis=0)
    return w, float(max(m.weights.max(), -m.weights.min()))


def _rows(inputs: Mapping[str, np.ndarray] | None, layer: str, k: int, samples: int,
          rng: np.random.Generator) -> np.ndarray:
    if inputs is not None and layer in inputs and inputs[layer].shape[-1] == k:  # (a narrower last pack: drawn)
        x = np.asarray(inputs[layer], np.float64).reshape(-1, k)
        if len(x) > samples:
            x = x[rng.choice(len(x), samples, replace=False)]
        return x
    return rng.standard_normal((samples, k))
