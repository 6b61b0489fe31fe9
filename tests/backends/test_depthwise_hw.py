"""Hardware mode on depthwise convolutions: groups of k x k rows and one column each, packed or not."""

from __future__ import annotations

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends.analog import ProgrammedChip
from anac.backends.simulator import Simulator
from helpers import const, make_model, node, tensor, weights
from onnx import numpy_helper

CHANNELS = 48


def _depthwise(rng: np.random.Generator) -> tuple[object, dict[str, np.ndarray]]:
    """A depthwise 3x3 conv (48 groups of one 9-row, 1-column matrix) then a 1x1 conv mixing the channels."""
    model = make_model([node("Conv", ["x", "wd"], ["d"], name="dw", group=CHANNELS, pads=[1, 1, 1, 1]),
                        node("Conv", ["d", "wp"], ["y"], name="pw")],
                       [tensor("x", [4, CHANNELS, 8, 8])], [tensor("y", [4, 16, 8, 8])],
                       [const("wd", weights(rng, CHANNELS, 1, 3, 3, scale=0.5)),
                        const("wp", weights(rng, 16, CHANNELS, 1, 1, scale=0.2))])
    return model, {"x": rng.standard_normal((4, CHANNELS, 8, 8)).astype(np.float32)}


def _rel_err(prog: object, x: dict[str, np.ndarray], ref: np.ndarray, seed: int, comp: bool) -> float:
    sim = Simulator(prog, "hardware")  # type: ignore[arg-type]
    sim.program(seed)
    sim.at(1.0, comp)
    y = sim.run(x)["y"]
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


def test_drift_compensation_adds_no_error_before_drift(rng: np.random.Generator) -> None:
    """At 1 s the devices have not drifted (t0 = 20 s): the compensated read must be as good as the raw one.

    A probe ratio per 9 x 1 depthwise slice is a ratio of its own read noise (the column sum of
    mixed-sign weights can be near zero) and multiplied the error several times when each group was
    a slice of its own; one ratio per tile, from all the columns on it, is not. (With groups packed
    block-diagonally the slices are wide; the test below pins the per-tile ratio itself.)"""
    model, x = _depthwise(rng)
    prog = compile_model(model, calibration_data=x)
    ref = Simulator(prog, "ideal").run(x)["y"]
    raw = np.mean([_rel_err(prog, x, ref, s, False) for s in range(3)])
    comp = np.mean([_rel_err(prog, x, ref, s, True) for s in range(3)])
    assert comp < 1.2 * raw, (comp, raw)


@pytest.mark.parametrize("t", [1.0, 86400.0])
def test_one_compensation_ratio_per_tile(rng: np.random.Generator, t: float) -> None:
    model, x = _depthwise(rng)
    prog = compile_model(model, calibration_data=x)
    chip = ProgrammedChip(prog, seed=3)
    raw, comp = chip.weights_at(t, drift_compensation=False), chip.weights_at(t)
    tiles: dict[tuple[object, object], set[float]] = {}
    for s in prog.slices:
        nonzero = raw[s.id] != 0
        ratio = comp[s.id][nonzero] / raw[s.id][nonzero]
        tiles.setdefault((s.chip, s.tile), set()).update(np.round(ratio, 5).tolist())
    assert all(len(r) == 1 for r in tiles.values()), tiles
    assert any(len([s for s in prog.slices if (s.chip, s.tile) == k]) > 1 for k in tiles)  # tiles are shared


def test_packed_groups_each_use_the_full_conductance_range(rng: np.random.Generator) -> None:
    """Groups packed into one slice keep a conductance scale each: a group whose kernel is 100x smaller
    than its neighbours' is still programmed up to g_max, not into the programming-noise floor."""
    model, x = _depthwise(rng)
    wd = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "wd")).copy()
    wd[::2] *= 0.01  # every other group: a tiny kernel
    next(i for i in model.graph.initializer if i.name == "wd").CopyFrom(const("wd", wd))
    prog = compile_model(model, calibration_data=x)
    packed = [s for s in prog.slices if prog.block_mask(s.matrix, s.rows, s.cols) is not None]
    assert packed and all(prog.matrices[s.matrix].per_column for s in packed)
    for s in packed:
        targets, _ = prog.targets(s)
        peak = np.abs(targets.astype(np.float32)).sum(axis=0).max(axis=0)  # per column, over devices and rows
        assert peak.min() > 0.5 * peak.max(), (peak.min(), peak.max())
