"""NOR flash (charge-trap / floating-gate) multi-bit cells programmed by program-and-verify.

Programming: the first pulse lands within ``flash_first_sigma`` g_max of the target; each
verify iteration shrinks the error by ``flash_verify_shrink`` down to the verify floor.
Reading: a temperature coefficient of conductance from the programming temperature,
charge-loss retention g exp(-t' / tau) (tau log-normal across devices; t' is the time since
the last refresh when ``flash_refresh_s`` > 0) and Gaussian read noise. Units uS, s, K.
A one-device-per-weight encoding stores a signed level (the cell read against a reference),
so conductances here lie in [-g_max, g_max] and charge loss shrinks their magnitude.
"""

from __future__ import annotations

import numpy as np
from anac.core.hardware import DeviceModel


class FlashModel:
    def __init__(self, spec: DeviceModel) -> None:
        self.spec = spec

    def prog_sigma(self) -> float:
        """Standard deviation of the programmed error (uS) after the verify iterations."""
        s = self.spec
        frac = max(s.flash_first_sigma * s.flash_verify_shrink ** s.flash_verify_iterations, s.flash_verify_floor)
        return frac * s.g_max_us

    def program(self, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(targets.shape, dtype=np.float32)
        g_max = self.spec.g_max_us
        return np.clip(targets + np.float32(self.prog_sigma()) * noise, -g_max, g_max).astype(np.float32)

    def state(self, targets: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Per-device retention time constants (s)."""
        s = self.spec
        z = rng.standard_normal(targets.shape, dtype=np.float32)
        return (s.flash_retention_tau_s * np.exp(s.flash_retention_spread * z)).astype(np.float32)

    def retention_factor(self, tau: np.ndarray, t: float) -> np.ndarray:
        """exp(-t' / tau), t' the time since programming or the last refresh."""
        if self.spec.flash_refresh_s > 0:
            t = t % self.spec.flash_refresh_s
        return np.exp(-np.float64(t) / tau).astype(np.float32)

    def temperature_factor(self) -> float:
        s = self.spec
        return max(0.0, 1.0 + s.flash_temp_coeff_per_k * (s.temperature_k - s.flash_program_temp_k))

    def read(self, g: np.ndarray, tau: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        g_t = g * self.retention_factor(tau, t) * np.float32(self.temperature_factor())
        noise = rng.standard_normal(g.shape, dtype=np.float32)
        return (g_t + np.abs(g_t) * np.float32(self.spec.flash_read_sigma) * noise).astype(np.float32)
