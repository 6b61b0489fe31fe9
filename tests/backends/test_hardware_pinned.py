"""Hardware-mode outputs pinned for fixed seeds and read time.

The values were computed with the simulator before its speed work (issue 12):
per-slice 8-bit input and output quantization at each slice's calibrated range,
read weights with programming noise, drift and read noise, digital partial
sums. A faster simulator must reproduce them to float32 rounding.
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


def _run(input_sign: str) -> np.ndarray:
    model, x = _model()
    prog = compile_model(model, hardware=replace(load_hardware(), input_sign=input_sign), calibration_data=x)
    sim = Simulator(prog, "hardware")
    sim.program(5)
    sim.at(86400.0)
    return sim.run(x)["y"]

PINNED = {
    "polarity": [
        [-1.9455272, -0.484804809, -0.999749184, -0.395928472, 0.163520113,
         -0.227373466, 1.07612026, -1.36906612, 1.22624636, 0.261164874],
        [-0.00251881406, -0.507565439, -1.40850127, -1.26740479, 0.955027103,
         0.109853677, -1.44718957, 0.289429337, -0.135202497, 0.81045717],
        [1.98416531, -0.741272628, -1.13850713, 0.997326136, -1.08688712,
         0.359526873, 0.662684739, -0.306970894, 0.664091587, -0.705519676],
        [1.43513858, -0.777825117, -1.89900494, 0.736832023, -0.443770766,
         0.463577837, -2.06569314, -0.909641325, -0.368707269, -1.08689046],
        [-0.506877422, -1.86756706, -0.738465011, 2.05526233, 0.0691649467,
         -0.750934362, -0.415970683, 0.00498620421, -0.589943767, -0.499990255],
        [-1.84477568, -0.727019489, -0.466688454, 0.987162411, -0.147779688,
         0.0397826657, 0.245817006, -2.2924037, 0.440415412, -0.74471432],
    ],
    "two-pass": [
        [-1.33790767, -0.0476792343, -0.391801119, -0.153776884, -0.227350667,
         0.205725774, 0.587860465, -0.902315557, 0.933093309, 0.805640817],
        [0.278890491, 0.209515557, -1.64062178, -0.294449985, 0.94315058,
         0.719122946, -0.818522096, 0.928190827, -0.480216712, 0.733193219],
        [1.50065875, 0.825181186, -0.637315154, 1.74224973, 0.135740712,
         0.152347684, 0.467710763, -0.526159406, 0.470040411, -0.430115074],
        [2.56757021, 0.147029266, -0.779043794, -0.246349603, 0.411473989,
         -0.328523278, -1.24878347, -0.31059894, -2.47244406, -0.442124397],
        [0.410455346, -0.657675385, 0.414881885, 1.17672598, 0.947701395,
         0.939101458, 0.588852942, 0.415849239, -0.647215486, -0.0942720994],
        [-0.988077044, -0.00631044526, 0.280017614, -0.136293948, 0.167609558,
         0.930657089, -0.0955691934, -0.453711808, -0.781618357, 0.171828434],
    ],
}


@pytest.mark.parametrize("input_sign", ["polarity", "two-pass"])
def test_hardware_mode_outputs_are_pinned(input_sign: str) -> None:
    np.testing.assert_allclose(_run(input_sign), np.array(PINNED[input_sign], np.float32), rtol=1e-6, atol=1e-7)
