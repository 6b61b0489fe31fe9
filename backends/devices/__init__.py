"""Device families: one statistical model per memory technology, chosen by ``device.family`` in the spec.

Every family has the same interface (all arrays in uS, times in s, randomness only
from the generator passed in, input arrays never modified):

* ``program(targets, rng) -> g``: the conductances programming leaves on the devices;
* ``state(targets, g, rng) -> s``: per-device state a later read needs (PCM: drift exponents);
* ``read(g, s, t, rng) -> g_t``: the conductances read ``t`` seconds after programming.

Drift compensation (a global probe-ratio correction) is applied on top by
``anac.backends.analog``; families do not compensate themselves.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
from anac.backends.devices.ecram import ECRAMModel
from anac.backends.devices.flash import FlashModel
from anac.backends.devices.pcm import PCMModel
from anac.backends.devices.reram import ReRAMModel
from anac.core.hardware import DeviceModel


class DeviceFamily(Protocol):
    def program(self, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def state(self, targets: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray: ...

    def read(self, g: np.ndarray, s: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray: ...


FAMILIES: dict[str, type] = {"pcm": PCMModel, "flash": FlashModel, "ecram": ECRAMModel, "reram": ReRAMModel}


def family_model(spec: DeviceModel) -> DeviceFamily:
    """The model of the spec's device family (the spec is validated, so the family is known)."""
    return FAMILIES[spec.family](spec)
