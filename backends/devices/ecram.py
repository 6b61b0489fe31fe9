"""Protonic ECRAM (Onen et al., Science 2022): open-loop pulse programming and relaxation.

Programming: from the reset conductance (0 for the "up" scheme, g_max / 2 for "updown") the
controller sends n = round((target - g_reset) / step) identical pulses, step = g_max / (states - 1).
An up pulse moves the device by step, a down pulse by (1 - asymmetry) step (the controller assumes
symmetric steps, so down-programmed devices undershoot), each with cycle-to-cycle noise of
``ecram_c2c_sigma`` steps: n pulses add sqrt(n) c2c step of spread. After programming, a
fraction of the change relaxes back: g(t) = g - r (g - g_reset) (1 - exp(-t / tau)).
"""

from __future__ import annotations

import numpy as np
from anac.core.hardware import DeviceModel


class ECRAMModel:
    def __init__(self, spec: DeviceModel) -> None:
        self.spec = spec

    @property
    def step(self) -> float:
        return self.spec.g_max_us / (self.spec.ecram_states - 1)

    @property
    def g_reset(self) -> float:
        return 0.0 if self.spec.ecram_scheme == "up" else self.spec.g_max_us / 2

    def program(self, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        s, step, g0 = self.spec, self.step, self.g_reset
        n = np.rint((targets.astype(np.float64) - g0) / step)
        per_pulse = np.where(n >= 0, step, (1.0 - s.ecram_asymmetry) * step)
        noise = rng.standard_normal(targets.shape, dtype=np.float32)
        g = g0 + n * per_pulse + np.sqrt(np.abs(n)) * s.ecram_c2c_sigma * per_pulse * noise
        return np.clip(g, 0.0, s.g_max_us).astype(np.float32)

    def state(self, targets: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The programmed change from the reset conductance, part of which relaxes."""
        return (g - np.float32(self.g_reset)).astype(np.float32)

    def relaxation(self, delta: np.ndarray, t: float) -> np.ndarray:
        """The conductance lost to relaxation by time t: r delta (1 - exp(-t / tau))."""
        s = self.spec
        return (s.ecram_relax_fraction * (1.0 - np.exp(-t / s.ecram_relax_tau_s)) * delta).astype(np.float32)

    def read(self, g: np.ndarray, delta: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        g_t = g - self.relaxation(delta, t)
        noise = rng.standard_normal(g.shape, dtype=np.float32)
        return np.maximum(0.0, g_t + np.abs(g_t) * np.float32(self.spec.ecram_read_sigma) * noise).astype(np.float32)
