"""ReRAM after NeuRRAM (Wan et al., Nature 2022).

Programming: Gaussian error whose sigma depends on the target conductance, the cubic fit
sigma_G(G) = sum_i c_i G^i (uS) to the paper's Extended Data Fig. 3 at t = 1 s.
Relaxation: the programmed conductances spread further with time, by
``reram_relax_sigma_us`` per decade after ``reram_relax_t0_s`` (a random walk fixed per device
at programming, so successive reads of one chip relax consistently), plus read noise.
"""

from __future__ import annotations

import math

import numpy as np
from anac.core.hardware import DeviceModel


class ReRAMModel:
    def __init__(self, spec: DeviceModel) -> None:
        self.spec = spec

    def prog_sigma(self, targets: np.ndarray) -> np.ndarray:
        g = np.abs(targets.astype(np.float64))
        return np.maximum(sum(c * g**i for i, c in enumerate(self.spec.reram_prog_poly)), 0.0)

    def program(self, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal(targets.shape, dtype=np.float32)
        return np.clip(targets + self.prog_sigma(targets) * noise, 0.0, self.spec.g_max_us).astype(np.float32)

    def state(self, targets: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """A unit Gaussian per device: the direction and size of its relaxation."""
        return rng.standard_normal(targets.shape, dtype=np.float32)

    def relax_sigma(self, t: float) -> float:
        """Extra spread (uS) at time t: sigma_r log10(1 + t / t0)."""
        return self.spec.reram_relax_sigma_us * math.log10(1.0 + t / self.spec.reram_relax_t0_s)

    def read(self, g: np.ndarray, z: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        g_t = np.clip(g + np.float32(self.relax_sigma(t)) * z, 0.0, self.spec.g_max_us)
        noise = rng.standard_normal(g.shape, dtype=np.float32)
        return np.maximum(0.0, g_t + np.abs(g_t) * np.float32(self.spec.reram_read_sigma) * noise).astype(np.float32)
