"""Hardware mode: a programmed chip instance, its reads over time, and the 8-bit I/O.

``ProgrammedChip`` programs every slice's target conductances once (seeded):
programming noise and drift exponents per device. ``weights_at(t)`` reads the
devices at time t after programming (drift plus 1/f read noise) and returns
each slice's effective weights, optionally with global drift compensation:
the tile is read with a fixed probe input right after programming and again
at t, and its outputs are scaled by the ratio. The quantizers model the
input landing pads (PWM durations) and the ramp-based output conversion.
"""

from __future__ import annotations

import numpy as np

from backends.pcm import PCMModel
from compiler.conductance import combine
from compiler.errors import AnacError
from compiler.hardware import DeviceModel, Encoding
from compiler.program import Program

T_PROBE = 0.0  # the reference read happens right after programming


class NoiselessModel:
    """Devices that hold their target exactly and do not drift (no noise model for this technology)."""

    def program(self, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return g

    def drift_exponents(self, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.zeros_like(g)

    def read(self, g: np.ndarray, nu: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        return g


def device_model(spec: DeviceModel) -> PCMModel | NoiselessModel:
    """The statistical model of the spec's device technology."""
    if spec.kind == "pcm":
        return PCMModel(spec)
    return NoiselessModel()


class ProgrammedChip:
    """One programming of all slices of a program, drawn once from ``seed``."""

    def __init__(self, prog: Program, seed: int) -> None:
        self.prog, self.seed = prog, seed
        hw = prog.hardware
        self.model = device_model(hw.device)
        self.noiseless = isinstance(self.model, NoiselessModel)
        rng = np.random.default_rng([seed, 0])
        self._state: dict[int, tuple[np.ndarray, np.ndarray, Encoding, np.ndarray]] = {}
        self._reference: dict[int, float] = {}
        for s in prog.slices or []:
            targets, scale = prog.targets(s)
            t32 = targets.astype(np.float32)
            enc = hw.encoding(s.encoding)
            g = self.model.program(t32, rng)
            if enc.devices_per_weight == 4 and enc.significance_factor != 1.0:
                g = self._program_lsb(g, t32, enc, rng)
            nu = self.model.drift_exponents(t32, rng)
            self._state[s.id] = (g, nu, enc, scale)
        ref_rng = np.random.default_rng([seed, 1])
        for s in prog.slices or []:
            self._reference[s.id] = self._probe(self._read(s.id, T_PROBE, ref_rng))

    def _program_lsb(self, g: np.ndarray, t: np.ndarray, enc: Encoding, rng: np.random.Generator) -> np.ndarray:
        """F > 1: program the LSB pair to the residual the programmed MSB pair left (closed loop)."""
        f, g_max = enc.significance_factor, self.prog.hardware.device.g_max_us
        target = (f + 1) * (t[0] - t[2])  # s W, in uS
        residual = target - f * (g[0] - g[2])
        lsb = np.stack([np.clip(residual, 0, g_max), np.clip(-residual, 0, g_max)]).astype(np.float32)
        g = g.copy()
        g[1], g[3] = self.model.program(lsb, rng)
        return g

    def _read(self, sid: int, t: float, rng: np.random.Generator) -> np.ndarray:
        g, nu, enc, scale = self._state[sid]
        return combine(self.model.read(g, nu, t, rng), enc, scale)

    @staticmethod
    def _probe(w: np.ndarray) -> float:
        # A fixed all-ones probe on every row: the summed magnitude of the column outputs.
        return float(np.abs(w.sum(axis=0, dtype=np.float64)).sum())

    def weights_at(self, t: float, drift_compensation: bool = True) -> dict[int, np.ndarray]:
        """Each slice's effective weights read at ``t`` seconds after programming."""
        if t < 0 or not np.isfinite(t):
            raise AnacError(f"time after programming must be a finite number >= 0 s, got {t}")
        rng = np.random.default_rng([self.seed, 2, int(round(t * 1e3))])
        out = {}
        for sid in self._state:
            w = self._read(sid, t, rng)
            if drift_compensation and not self.noiseless:
                now = self._probe(w)
                if now > 0:
                    w = w * np.float32(self._reference[sid] / now)
            out[sid] = np.ascontiguousarray(w, dtype=np.float32)
        return out


def quantize_signed(x: np.ndarray, full_scale: float | np.ndarray, bits: int) -> np.ndarray:
    """Signed conversion: 2^(bits-1) - 1 levels each side of zero, saturating at +-full_scale."""
    levels = 2 ** (bits - 1) - 1
    step = np.float32(full_scale / levels) if np.isscalar(full_scale) else (full_scale / levels).astype(np.float32)
    return (np.clip(np.rint(x / step), -levels, levels) * step).astype(np.float32)


def quantize_unsigned(x: np.ndarray, full_scale: float | np.ndarray, bits: int) -> np.ndarray:
    """Unsigned conversion: 2^bits - 1 levels over [0, full_scale], saturating."""
    levels = 2 ** bits - 1
    step = np.float32(full_scale / levels) if np.isscalar(full_scale) else (full_scale / levels).astype(np.float32)
    return (np.clip(np.rint(x / step), 0, levels) * step).astype(np.float32)


def quantize_polarity(x: np.ndarray, full_scale: float, bits: int) -> np.ndarray:
    """Sign as pulse polarity, magnitude as an unsigned ``bits`` word: 2^bits - 1 levels each side."""
    levels = 2 ** bits - 1
    step = np.float32(full_scale / levels)
    return (np.clip(np.rint(x / step), -levels, levels) * step).astype(np.float32)
