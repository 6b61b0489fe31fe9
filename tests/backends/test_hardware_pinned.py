"""Hardware-mode outputs pinned for fixed seeds and read time.

The values were computed with the simulator before its speed work (issue 12):
per-slice 8-bit input and output quantization at each slice's calibrated range,
read weights with programming noise, drift and read noise, digital partial
sums. A faster simulator must reproduce them to float32 rounding. Recomputed once
when drift compensation became one probe ratio per tile instead of per slice
(issue 18: the conv and the Gemm's slices share a tile). These pins compile with one conductance scale per
slice (``scale="tile"``), whose semantics the per-column default left unchanged; ``PINNED_COLUMN`` was
recorded from the simulator when "column" became the default, each column's output converted in its own
current (issue 18), and pins that.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from anac.api import compile_model
from anac.backends.simulator import Simulator
from anac.core.hardware import load_hardware
from helpers import const, make_model, node, tensor, weights


def _model() -> tuple[object, dict[str, np.ndarray]]:
    """Conv 3->16 3x3 (27 rows, fused ReLU at the tile), then a 1024 -> 10 Gemm with bias (two row blocks)."""
    rng = np.random.default_rng(1212)
    inits = [const("wc", weights(rng, 16, 3, 3, 3, scale=0.3)), const("shape", np.array([0, -1], np.int64)),
             const("w", weights(rng, 1024, 10)), const("b", weights(rng, 10, scale=0.1))]
    model = make_model([node("Conv", ["x", "wc"], ["c"], name="conv", pads=[1, 1, 1, 1]),
                        node("Relu", ["c"], ["r"], name="relu"),
                        node("Reshape", ["r", "shape"], ["f"], name="flatten"),
                        node("Gemm", ["f", "w", "b"], ["y"], name="fc")],
                       [tensor("x", [6, 3, 8, 8])], [tensor("y", [6, 10])], inits)
    x = {"x": rng.standard_normal((6, 3, 8, 8)).astype(np.float32)}
    return model, x


def _run(input_sign: str, scale: str = "tile") -> np.ndarray:
    model, x = _model()
    prog = compile_model(model, hardware=replace(load_hardware(), input_sign=input_sign), calibration_data=x,
                         calibration_percentile=99.99,  # the ranges of the pinned run, not the default MSE rule
                         options={"scale": scale})
    sim = Simulator(prog, "hardware")
    sim.program(5)
    sim.at(86400.0)
    return sim.run(x)["y"]

PINNED = {
    "polarity": [
        [-2.01843619, -0.540426791, -1.01703632, -0.410510272, 0.204560354,
         -0.241955265, 1.06424379, -1.39822972, 1.21436977, 0.234706491],
        [0.0120629855, -0.492983669, -1.42308307, -1.27010989, 0.998772562,
         0.0952718779, -1.50551677, 0.262970954, -0.135202497, 0.798580647],
        [1.99874711, -0.758559704, -1.16767073, 1.06753004, -1.14521444,
         0.34765029, 0.653513491, -0.306970894, 0.707836986, -0.720101476],
        [1.46430218, -0.795112193, -1.94545543, 0.765995622, -0.461057901,
         0.448996007, -2.12402058, -0.926928341, -0.327667087, -1.10417759],
        [-0.495000839, -1.92589438, -0.755752087, 2.08442593, 0.0518778712,
         -0.80926156, -0.401388884, -0.0095956251, -0.592648983, -0.514572024],
        [-1.91768467, -0.729724705, -0.466688454, 0.987162411, -0.162361488,
         0.0397826657, 0.245817006, -2.3507309, 0.457702488, -0.800336242],
    ],
    "two-pass": [
        [-1.35519469, -0.0330974348, -0.418259442, -0.0862783566, -0.195481762,
         0.220307603, 0.573278666, -0.916897416, 0.935798526, 0.820222735],
        [0.29347229, 0.255966216, -1.6843673, -0.309031785, 0.975019395,
         0.733704746, -0.862267554, 0.91901952, -0.480216712, 0.721316695],
        [1.54440415, 0.837057769, -0.625438571, 1.79787171, 0.123864189,
         0.152347684, 0.453128934, -0.514282823, 0.472745687, -0.427409828],
        [2.65235615, 0.135152712, -0.808207393, -0.23447302, 0.370433807,
         -0.372268707, -1.29252887, -0.284140587, -2.48702598, -0.45400092],
        [0.436913729, -0.716002584, 0.438634992, 1.17672586, 0.962283194,
         0.909937859, 0.632598341, 0.403972715, -0.661797285, -0.0796902999],
        [-1.03182244, -0.0327687971, 0.309181213, -0.148170501, 0.164904311,
         0.933362305, -0.110151023, -0.465588361, -0.796200156, 0.171828419],
    ],
}


PINNED_COLUMN = {
    "polarity": [
        [-1.98054075, -0.545841098, -1.04126668, -0.427854627, 0.196575597,
         -0.221442237, 1.0638032, -1.34829319, 1.21366918, 0.209661692],
        [0.0449913032, -0.528045237, -1.40507746, -1.28771782, 0.978511155,
         0.0388798043, -1.47153783, 0.238596708, -0.0902341604, 0.777764559],
        [1.99915075, -0.759162068, -1.17219722, 1.06284428, -1.11608922,
         0.322691977, 0.666620016, -0.306076646, 0.712270975, -0.716006875],
        [1.42896032, -0.79119128, -1.92480934, 0.750773311, -0.458440363,
         0.403059632, -2.07056975, -0.933293223, -0.289141506, -1.05782914],
        [-0.480528474, -1.88217425, -0.756522417, 2.09481049, 0.0661002547,
         -0.811973214, -0.369401097, -0.0248155519, -0.577724576, -0.480222076],
        [-1.91812146, -0.681513369, -0.430974483, 0.956361711, -0.131086722,
         0.0318914875, 0.258879423, -2.34557009, 0.453570813, -0.75252521],
    ],
    "two-pass": [
        [-1.35819864, -0.0602025278, -0.458176851, -0.125158966, -0.180926755,
         0.257465959, 0.526507437, -0.851607561, 0.896236897, 0.830594003],
        [0.314585984, 0.23428373, -1.64821088, -0.309322476, 0.948484302,
         0.703372359, -0.866207182, 0.890331447, -0.448387951, 0.69437933],
        [1.4945035, 0.866691411, -0.616414666, 1.8102001, 0.172586218,
         0.152638242, 0.466006875, -0.521532357, 0.45837903, -0.428552061],
        [2.62915325, 0.170321301, -0.758196414, -0.188110948, 0.358939111,
         -0.379655033, -1.31226611, -0.246527523, -2.47215796, -0.402358085],
        [0.425118178, -0.672103763, 0.435185522, 1.15123773, 0.97371453,
         0.893226624, 0.635284007, 0.388247192, -0.685518622, -0.0314550623],
        [-1.02017558, 0.0208207332, 0.282074392, -0.133868009, 0.172586247,
         0.907980561, -0.131021708, -0.463698357, -0.808307886, 0.15727374],
    ],
}


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_hardware_mode_outputs_are_pinned(input_sign: str) -> None:
    np.testing.assert_allclose(_run(input_sign), np.array(PINNED[input_sign], np.float32), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_per_column_outputs_are_pinned(input_sign: str) -> None:
    np.testing.assert_allclose(_run(input_sign, "column"), np.array(PINNED_COLUMN[input_sign], np.float32),
                               rtol=1e-6, atol=1e-7)
