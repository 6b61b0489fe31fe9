"""Weights <-> target conductances for each encoding (the math both passes and backends use).

A slice of weights W (r x c) becomes target conductances T (D x r x c) for the
D devices of each weight and a scale per column, s (c,), with W ~ combine(T) / s:

- 2-PCM: one differential pair, W ~ (G+ - G-) / s, s = Gmax / max|W|.
- 4-PCM, F = 1: (G+ + g+) - (G- + g-); both pairs take half, s = 2 Gmax / max|W|,
  so each device's programming error is averaged with its twin's.
- 4-PCM, F > 1: F (G+ - G-) + (g+ - g-), s = (F + 1) Gmax / max|W|; the MSB pair
  is programmed first and the LSB pair to the residual that is left (closed loop,
  done when the device model programs the slice).
- 1 device per weight (flash-like cells): a signed level s W, s = Gmax / max|W|,
  rounded to 2^bits levels when the encoding has ``bits_per_device``.
Scales are per tile (one max over the slice) or per column. Weights beyond
``clip_sigma`` standard deviations are clipped first, so outliers do not
squeeze every other weight into a few levels.

A column's analog output is a current, x . W[:, j] s_j: the output conversion
sees it in conductance units, so with per-column scales column j's full scale
in weight units is R / s_j for the slice's one range R (``column_gains``).
"""

from __future__ import annotations

import numpy as np
from anac.core.hardware import Encoding


def pair_signs(encoding: Encoding) -> np.ndarray:
    """Each device's contribution to the weight, in the order of ``device_targets``."""
    if encoding.devices_per_weight == 4:
        f = encoding.significance_factor
        return np.array([f, 1.0, -f, -1.0], np.float32)  # G+, g+, G-, g-
    if encoding.devices_per_weight == 2:
        return np.array([1.0, -1.0], np.float32)
    if encoding.devices_per_weight == 1:
        return np.array([1.0], np.float32)
    raise ValueError(f"encoding {encoding.name}: {encoding.devices_per_weight} devices per weight not modelled")


def headroom(encoding: Encoding) -> float:
    """How many Gmax one weight of maximal magnitude spans."""
    if encoding.devices_per_weight == 4:
        return encoding.significance_factor + 1.0
    return 1.0


def clip_weights(w: np.ndarray, clip_sigma: float | None) -> np.ndarray:
    """Clip outliers beyond ``clip_sigma`` standard deviations of the slice."""
    if clip_sigma is None:
        return w
    bound = float(clip_sigma * w.std())
    return np.clip(w, -bound, bound) if bound > 0 else w


def device_targets(w: np.ndarray, encoding: Encoding, g_max: float, per_column: bool = False,
                   clip_sigma: float | None = None,
                   absmax: float | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Target conductances (D x r x c, uS) and per-column scales (c,) of a weight slice.

    ``absmax`` overrides the slice's own largest magnitude: one value (per-tile
    scale) or one per column (per-column scale), as when ``w`` is a sample of
    the rows of a larger slice.
    """
    w = clip_weights(np.asarray(w, np.float32), clip_sigma)
    scale = _scales(w, encoding, g_max, per_column, absmax)
    sw = w * scale  # in uS, within +-headroom * Gmax
    d = encoding.devices_per_weight
    if d == 1:
        level = sw
        if encoding.bits_per_device:
            steps = 2 ** (encoding.bits_per_device - 1) - 1
            level = np.round(sw / g_max * steps) * (g_max / steps)
        return level[None].astype(np.float32), scale
    pos, neg = np.clip(sw, 0, None), np.clip(-sw, 0, None)
    if d == 2:
        return np.stack([pos, neg]).astype(np.float32), scale
    f = encoding.significance_factor
    part = 1.0 / (f + 1.0)  # F = 1: both pairs carry half; F > 1: MSB and LSB targets alike, LSB corrected later
    return np.stack([pos * part, pos * part, neg * part, neg * part]).astype(np.float32), scale


def column_scales(w: np.ndarray, encoding: Encoding, g_max: float, per_column: bool = False,
                  clip_sigma: float | None = None) -> np.ndarray:
    """The per-column scales (c,) ``device_targets`` gives a weight slice, without its targets."""
    return _scales(clip_weights(np.asarray(w, np.float32), clip_sigma), encoding, g_max, per_column, None)


def column_gains(scale: np.ndarray) -> np.ndarray:
    """Each column's current per unit of weight output, relative to the slice's smallest scale (that of its
    largest weights, the per-tile scale, unless a column is all zero): a slice's output range in weight
    units at that scale, divided by these, is each column's range. All ones for a per-tile scale."""
    return (scale / scale.min()).astype(np.float32)


def _scales(w: np.ndarray, encoding: Encoding, g_max: float, per_column: bool,
            absmax: float | np.ndarray | None) -> np.ndarray:
    if per_column:
        peak = np.abs(w).max(axis=0) if absmax is None else np.asarray(absmax, np.float32)
    else:
        peak = np.full(w.shape[1], np.abs(w).max() if absmax is None else absmax, np.float32)
    peak = np.where(peak > 0, peak, 1.0).astype(np.float32)
    return (headroom(encoding) * g_max / peak).astype(np.float32)


def combine(g: np.ndarray, encoding: Encoding, scale: np.ndarray) -> np.ndarray:
    """The weights that conductances ``g`` (D x r x c) represent: sum_i sign_i G_i / s."""
    signs = pair_signs(encoding)
    return (np.tensordot(signs, g, axes=1) / scale).astype(np.float32)
