"""The PCM device model: programming noise, drift and 1/f read noise.

This is the statistical model of IBM's aihwkit (PCMLikeNoiseModel), fitted to
a 1 M-device PCM array (Nandakumar et al. 2019; Joshi et al. 2020); every
coefficient comes from the hardware spec's ``DeviceModel``. Conductances are
in uS and times in s. All randomness comes from the ``np.random.Generator``
passed in, so a programmed instance is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np
from anac.core.hardware import DeviceModel


class PCMModel:
    """Sample programmed conductances and read them back at a time after programming."""

    def __init__(self, spec: DeviceModel) -> None:
        self.spec = spec

    def prog_sigma(self, g_target: np.ndarray) -> np.ndarray:
        """Standard deviation of the programming error (uS) at each target conductance."""
        x = np.abs(g_target) / self.spec.g_max_us
        c = self.spec.prog_noise_poly
        poly = sum(ci * x**i for i, ci in enumerate(c))
        return poly * (self.spec.g_max_us / 25.0)

    def program(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """G_prog = max(0, G_T + sigma_prog(G_T) N(0,1))."""
        noise = rng.standard_normal(g_target.shape, dtype=np.float32)
        return np.maximum(0.0, g_target + self.prog_sigma(g_target) * noise).astype(np.float32)

    def drift_params(self, g_target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mean and spread of the drift exponent nu at each target conductance."""
        g = np.maximum(np.abs(g_target) / self.spec.g_max_us, 1e-7)
        a, b, lo, hi = self.spec.drift_mu
        mu = np.clip(a * np.log(g) + b, lo, hi)
        a, b, lo, hi = self.spec.drift_sigma
        sigma = np.clip(a * np.log(g) + b, lo, hi)
        return mu, sigma

    def drift_exponents(self, g_target: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """nu = |mu_nu + sigma_nu N(0,1)|, one per device."""
        mu, sigma = self.drift_params(g_target)
        return np.abs(mu + sigma * rng.standard_normal(g_target.shape, dtype=np.float32)).astype(np.float32)

    def drift_factor(self, nu: np.ndarray, t: float) -> np.ndarray:
        """((t + t0) / t0) ** -nu."""
        t0 = self.spec.drift_t0_s
        return np.power(np.float32((t + t0) / t0), -nu).astype(np.float32)

    def read_sigma(self, g_prog: np.ndarray, t: float) -> np.ndarray:
        """Relative 1/f read-noise sigma at time t: Q(G_prog) * sqrt(ln((t + t0 + t_read) / (2 t_read)))."""
        c, e, floor, cap = self.spec.read_noise_q
        q = np.minimum(c / np.maximum((np.abs(g_prog) / self.spec.g_max_us) ** e, floor), cap)
        t0, t_read = self.spec.drift_t0_s, self.spec.t_read_s
        return (q * np.sqrt(np.log((t + t0 + t_read) / (2 * t_read)))).astype(np.float32)

    def state(self, g_target: np.ndarray, g_prog: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The per-device state a read needs: the drift exponents."""
        return self.drift_exponents(g_target, rng)

    def read(self, g_prog: np.ndarray, nu: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        """Conductances read at time t after programming: drift, then 1/f read noise."""
        g_drift = g_prog * self.drift_factor(nu, t)
        noise = rng.standard_normal(g_prog.shape, dtype=np.float32)
        return np.maximum(0.0, g_drift + np.abs(g_drift) * self.read_sigma(g_prog, t) * noise).astype(np.float32)
