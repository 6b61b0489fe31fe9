"""Estimates for mapping decisions: per-layer sensitivity to each encoding.

A layer's sensitivity to an encoding is the relative error of its output,
||X W_hw - X W|| / ||X W||, when its weights are programmed into simulated
devices with that encoding and read at ``t`` (with drift compensation), on
its inputs X: rows captured from calibration data when given, else seeded
standard-normal rows. assign_devices minimises the sum of their squares
(independent errors add in variance) under a device budget.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from anac.backends.analog import ProgrammedDevices, device_model
from anac.core.conductance import device_targets
from anac.core.program import Program

SENSITIVITY_T = 86400.0  # one day after programming
SAMPLES = 64
COLUMNS = 256  # output columns sampled per matrix: the error statistic, not every device, is what is needed


def layer_sensitivity(prog: Program, inputs: Mapping[str, np.ndarray] | None = None, *, t: float = SENSITIVITY_T,
                      seed: int = 0, samples: int = SAMPLES) -> dict[str, dict[str, float]]:
    """{layer: {encoding: relative output error}} for every crossbar layer and every encoding of the spec."""
    hw = prog.hardware
    model = device_model(hw.device)
    out: dict[str, dict[str, float]] = {}
    for li, mvm in enumerate((prog.mvms or {}).values()):
        rng = np.random.default_rng([seed, li])
        out[mvm.node] = {}
        mats = [prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
        for ei, enc in enumerate(hw.encodings):
            num = den = 0.0
            for m in mats:
                x = _rows(inputs, mvm.node, m.input_rows, samples, rng)
                if m.kept_rows is not None:
                    x = x[:, m.kept_rows]
                cols = np.sort(np.random.default_rng([seed, li]).choice(m.shape[1], min(m.shape[1], COLUMNS),
                                                                         replace=False))
                w = np.ascontiguousarray(m.weights[:, cols])
                # The conductance scale comes from the whole matrix, as the slices of the layer see it.
                targets, scale = device_targets(w, enc, hw.device.g_max_us, m.per_column, m.clip_sigma,
                                                absmax=None if m.per_column or m.clip_sigma else
                                                float(np.abs(m.weights).max()))
                dev_rng = np.random.default_rng([seed, li, ei])
                dev = ProgrammedDevices(model, targets.astype(np.float16), scale, enc, hw.device.g_max_us, dev_rng)
                mask = prog.block_mask(m.id, (0, m.shape[0]), (0, m.shape[1]))
                if mask is not None:  # cells between packed groups are never programmed
                    dev.g = dev.g * mask[:, cols]
                dev.set_reference(dev_rng)
                w_hw = dev.weights_at(t, dev_rng, compensate=True)
                ref = x @ w.astype(np.float64)
                num += float(np.sum((x @ w_hw.astype(np.float64) - ref) ** 2))
                den += float(np.sum(ref ** 2))
            out[mvm.node][enc.name] = float(np.sqrt(num / den)) if den > 0 else 0.0
    return out


def _rows(inputs: Mapping[str, np.ndarray] | None, layer: str, k: int, samples: int,
          rng: np.random.Generator) -> np.ndarray:
    if inputs is not None and layer in inputs:
        x = np.asarray(inputs[layer], np.float64).reshape(-1, k)
        if len(x) > samples:
            x = x[rng.choice(len(x), samples, replace=False)]
        return x
    return rng.standard_normal((samples, k))
