"""Hardware mode: a programmed chip instance, its reads over time, and the 8-bit I/O.

``ProgrammedChip`` programs every slice's target conductances once (seeded):
programming noise and drift exponents per device. ``weights_at(t)`` reads the
devices at time t after programming (drift plus 1/f read noise) and returns
each slice's effective weights, optionally with global drift compensation:
each tile is read with a fixed probe input right after programming and again
at t, and the outputs of every slice on it are scaled by the ratio (one ratio
per tile, from all its columns: a slice of one column, such as a depthwise
group, would otherwise get a ratio of its own read noise). The quantizers model the
input landing pads (PWM durations) and the ramp-based output conversion.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from anac.backends.devices import DeviceFamily, family_model
from anac.core.conductance import combine
from anac.core.errors import AnacError
from anac.core.hardware import DeviceModel, Encoding
from anac.core.program import Program

T_PROBE = 0.0  # the reference read happens right after programming


class NoiselessModel:
    """Devices that hold their target exactly and do not drift (no noise model for this technology)."""

    def program(self, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return g

    def state(self, targets: np.ndarray, g: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.zeros_like(g)

    def read(self, g: np.ndarray, nu: np.ndarray, t: float, rng: np.random.Generator) -> np.ndarray:
        return g


def device_model(spec: DeviceModel) -> DeviceFamily:
    """The statistical model of the spec's device family (anac.backends.devices.FAMILIES)."""
    return family_model(spec)


class ProgrammedChip:
    """One programming of all slices of a program, drawn once from ``seed``."""

    def __init__(self, prog: Program, seed: int) -> None:
        self.prog, self.seed = prog, seed
        hw = prog.hardware
        self.model = device_model(hw.device)
        self.noiseless = isinstance(self.model, NoiselessModel)
        rng = np.random.default_rng([seed, 0])
        g_max = hw.device.g_max_us
        self._devices = {s.id: ProgrammedDevices(self.model, *prog.targets(s), hw.encoding(s.encoding), g_max, rng)
                         for s in prog.slices or []}
        for s in prog.slices or []:  # cells between packed groups are never programmed: no conductance
            mask = prog.block_mask(s.matrix, s.rows, s.cols)
            if mask is not None:
                self._devices[s.id].g = self._devices[s.id].g * mask
        ref_rng = np.random.default_rng([seed, 1])
        for d in self._devices.values():
            d.set_reference(ref_rng)
        # The slices sharing a tile (an unplaced slice is a tile of its own) and the tile's probe reference.
        self._tiles: dict[tuple[object, ...], list[int]] = {}
        for s in prog.slices or []:
            key = (s.chip, s.tile) if s.chip is not None and s.tile is not None else ("slice", s.id)
            self._tiles.setdefault(key, []).append(s.id)
        self._tile_of = {i: key for key, ids in self._tiles.items() for i in ids}
        self._tile_reference = {k: sum(self._devices[i].reference_g for i in ids) for k, ids in self._tiles.items()}

    def state_bytes(self) -> int:
        """Bytes held for the programmed devices (conductances and per-device state)."""
        return sum(d.g.nbytes + d.nu.nbytes for d in self._devices.values())

    def weights_at(self, t: float, drift_compensation: bool = True) -> dict[int, np.ndarray]:
        """Each slice's effective weights read at ``t`` seconds after programming."""
        return dict(self.read_at(t, drift_compensation))

    def read_at(self, t: float, drift_compensation: bool = True) -> Iterator[tuple[int, np.ndarray]]:
        """(slice id, effective weights read at ``t`` s), one slice at a time: a caller that copies each
        where it belongs holds the reads of the tiles still being read, not all of them.

        Global drift compensation takes one ratio per tile: its probe reference over its probe read at t.
        Each device is read once, in slice order; a slice is yielded (scaled) once every slice of its tile
        has been read, so the tile's ratio is known.
        """
        rng = self._read_rng(t)
        if not drift_compensation or self.noiseless:
            for sid, d in self._devices.items():
                yield sid, d.weights_at(t, rng, False)
            return
        left = {key: len(ids) for key, ids in self._tiles.items()}
        now = dict.fromkeys(self._tiles, 0.0)
        pending: dict[tuple[object, ...], list[tuple[int, np.ndarray]]] = {key: [] for key in self._tiles}
        for sid, d in self._devices.items():
            key = self._tile_of[sid]
            w = d.weights_at(t, rng, False)
            now[key] += _probe(w * d.scale)
            pending[key].append((sid, w))
            left[key] -= 1
            if left[key] == 0:
                ratio = np.float32(self._tile_reference[key] / now[key] if now[key] > 0 else 1.0)
                for i, wi in pending.pop(key):
                    yield i, wi * ratio

    def _read_rng(self, t: float) -> np.random.Generator:
        return np.random.default_rng([self.seed, 2, int(round(_check_time(t) * 1e3))])


def _check_time(t: float) -> float:
    if t < 0 or not np.isfinite(t):
        raise AnacError(f"time after programming must be a finite number >= 0 s, got {t}")
    return t


class ProgrammedDevices:
    """The devices of one slice, programmed once: conductances, drift exponents, reference read."""

    def __init__(self, model: DeviceFamily, targets: np.ndarray, scale: np.ndarray, enc: Encoding,
                 g_max: float, rng: np.random.Generator) -> None:
        self.model, self.enc, self.scale = model, enc, scale
        t32 = targets.astype(np.float32)
        g = model.program(t32, rng)
        if enc.devices_per_weight == 4 and enc.significance_factor != 1.0:
            g = self._program_lsb(g, t32, g_max, rng)
        self.g, self.nu = g, model.state(t32, g, rng)  # nu: per-device state (PCM: drift exponents)
        self.reference = self.reference_g = 0.0

    def _program_lsb(self, g: np.ndarray, t: np.ndarray, g_max: float, rng: np.random.Generator) -> np.ndarray:
        """F > 1: program the LSB pair to the residual the programmed MSB pair left (closed loop)."""
        f = self.enc.significance_factor
        target = (f + 1) * (t[0] - t[2])  # s W, in uS
        residual = target - f * (g[0] - g[2])
        lsb = np.stack([np.clip(residual, 0, g_max), np.clip(-residual, 0, g_max)]).astype(np.float32)
        g = g.copy()
        g[1], g[3] = self.model.program(lsb, rng)
        return g

    def read(self, t: float, rng: np.random.Generator) -> np.ndarray:
        """The weights the devices represent when read at ``t``."""
        return combine(self.model.read(self.g, self.nu, t, rng), self.enc, self.scale)

    def set_reference(self, rng: np.random.Generator) -> None:
        """Global drift compensation: read with the probe right after programming (``reference_g``: the
        probe's output in conductance units, uS, which add up across the slices of a tile)."""
        w = self.read(T_PROBE, rng)
        self.reference, self.reference_g = _probe(w), _probe(w * self.scale)

    def weights_at(self, t: float, rng: np.random.Generator, compensate: bool) -> np.ndarray:
        w = self.read(t, rng)
        if compensate:
            now = _probe(w)
            if now > 0:
                w = w * np.float32(self.reference / now)
        return np.ascontiguousarray(w, dtype=np.float32)


def _probe(w: np.ndarray) -> float:
    # A fixed all-ones probe on every row: the summed magnitude of the column outputs.
    return float(np.abs(w.sum(axis=0, dtype=np.float64)).sum())


def quantize_signed(x: np.ndarray, full_scale: float | np.ndarray, bits: int, inplace: bool = False) -> np.ndarray:
    """Signed conversion: 2^(bits-1) - 1 levels each side of zero, saturating at +-full_scale.
    ``inplace``: x is a float32 buffer nothing else reads; the result is written over it."""
    levels = 2 ** (bits - 1) - 1
    step = np.float32(full_scale / levels) if np.isscalar(full_scale) else (full_scale / levels).astype(np.float32)
    return _round_clip(x, step, -levels, levels, inplace)


def quantize_unsigned(x: np.ndarray, full_scale: float | np.ndarray, bits: int, inplace: bool = False) -> np.ndarray:
    """Unsigned conversion: 2^bits - 1 levels over [0, full_scale], saturating (``inplace`` as quantize_signed)."""
    levels = 2 ** bits - 1
    step = np.float32(full_scale / levels) if np.isscalar(full_scale) else (full_scale / levels).astype(np.float32)
    return _round_clip(x, step, 0, levels, inplace)


def quantize_polarity(x: np.ndarray, full_scale: float, bits: int) -> np.ndarray:
    """Sign as pulse polarity, magnitude as an unsigned ``bits`` word: 2^bits - 1 levels each side."""
    levels = 2 ** bits - 1
    step = np.float32(full_scale / levels)
    return _round_clip(x, step, -levels, levels)


def _round_clip(x: np.ndarray, step: np.float32 | np.ndarray, lo: int, hi: int, inplace: bool = False) -> np.ndarray:
    """clip(rint(x / step), lo, hi) * step as float32, in one buffer (the values of the plain expression):
    x's own when ``inplace`` and it can hold the result."""
    shape = np.shape(step)  # x's own buffer holds the result when step broadcasts to x's shape
    if inplace and x.dtype == np.float32 and x.flags.writeable and len(shape) <= x.ndim \
            and all(s in (1, d) for s, d in zip(shape[::-1], x.shape[::-1], strict=False)):
        q = np.divide(x, step, out=x)
    else:
        q = np.asarray(x / step)
    np.rint(q, out=q)
    np.clip(q, lo, hi, out=q)
    q *= step
    return q.astype(np.float32, copy=False)
