"""Pins today's PCM outputs bit for bit (fixed seeds) so the device-family refactor cannot change them."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from anac.backends.analog import ProgrammedDevices, device_model
from anac.core.hardware import IBM_PCM_14NM

# Hashes and sums recorded from the PCM model before backends/devices/ existed.
PINNED = {
    (0.0, False): ("659cd3ebe0833f81", -353.12945556640625),
    (0.0, True): ("23be63193c1dbf9c", -362.85772705078125),
    (3600.0, False): ("96bf8879017f2579", -467.9366455078125),
    (3600.0, True): ("3743b7132b3b1477", -576.3466796875),
    (3.15e7, False): ("63e0c1772f6de362", -302.6336975097656),
    (3.15e7, True): ("c17331d657bc90d7", -546.6559448242188),
}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


@pytest.fixture(scope="module")
def devices() -> ProgrammedDevices:
    hw = IBM_PCM_14NM
    targets = np.random.default_rng(0).uniform(0, 25, (4, 64, 32)).astype(np.float32)
    d = ProgrammedDevices(device_model(hw.device), targets, np.ones(32, np.float32), hw.encoding("4-PCM"), 25.0,
                          np.random.default_rng([7, 0]))
    d.set_reference(np.random.default_rng([7, 1]))
    return d


def test_programmed_state_is_pinned(devices: ProgrammedDevices) -> None:
    assert _sha(devices.g) == "b40f263d9c3fe6eb"
    assert _sha(devices.nu) == "aebf2768b9bc0ec6"


@pytest.mark.parametrize(("t", "comp"), sorted(PINNED))
def test_reads_are_pinned(devices: ProgrammedDevices, t: float, comp: bool) -> None:
    w = devices.weights_at(t, np.random.default_rng([7, 2, int(t)]), comp)
    sha, total = PINNED[(t, comp)]
    assert float(w.sum()) == total
    assert _sha(w) == sha
