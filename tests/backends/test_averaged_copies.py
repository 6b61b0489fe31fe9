"""Hardware mode with averaged copies: the layer's output is the mean of its copies', so device error falls with K."""

from __future__ import annotations

import numpy as np
from anac.api import compile_model
from anac.backends.calibrate import calibrate
from anac.backends.simulator import Simulator
from helpers import small_cnn


def _spy(sim: Simulator, layer: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Record each run of ``layer`` on one copy (_run_mvm_once) and its output (_run_mvm)."""
    once: list[np.ndarray] = []
    whole: list[np.ndarray] = []
    run_once, run = sim._run_mvm_once, sim._run_mvm

    def spy_once(mvm, x, activate=True):  # type: ignore[no-untyped-def]
        y = run_once(mvm, x, activate)
        if mvm.node == layer:
            once.append(y.copy())
        return y

    def spy(mvm, x, step=0):  # type: ignore[no-untyped-def]
        y = run(mvm, x, step)
        if mvm.node == layer:
            whole.append(y.copy())
        return y

    sim._run_mvm_once, sim._run_mvm = spy_once, spy  # type: ignore[method-assign]
    return once, whole


def test_output_is_the_mean_of_the_copies(rng: np.random.Generator) -> None:
    prog = compile_model(small_cnn(rng), options={"average": "conv2=3,fc=3"})
    calibrate(prog, seed=0)
    x = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    sim = Simulator(prog, "hardware")
    sim.program(5)
    sim.at(60.0)
    once, whole = _spy(sim, "fc")
    sim.run(x)
    assert len(once) == 3 and len(whole) == 1
    assert not np.allclose(once[0], once[1])  # each copy on its own devices
    np.testing.assert_allclose(whole[0], np.mean(once, axis=0), rtol=1e-6, atol=1e-7)
    # conv2's ReLU is digital (it has a bias): applied to the mean of the copies' converted outputs
    c_once, c_whole = _spy(sim, "conv2")
    sim.run(x)
    np.testing.assert_allclose(c_whole[0], np.maximum(0, np.mean(c_once, axis=0)), rtol=1e-6, atol=1e-7)
    # silence copy 2 of fc (its read weights to zero): the output moves by 1/3 of that copy's analog part
    before, copy2 = whole[0], once[2]
    bias = prog.mvms["fc"].bias
    sim._copy_reads[("fc", 2)][:] = 0
    once.clear()
    whole.clear()
    sim.run(x)
    np.testing.assert_allclose(once[2], np.broadcast_to(bias, once[2].shape), atol=1e-6)
    np.testing.assert_allclose(whole[0] - before, -(copy2 - bias) / 3, rtol=1e-5, atol=1e-6)


def test_error_falls_with_the_number_of_copies(rng: np.random.Generator) -> None:
    model = small_cnn(rng)
    x = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    error = {}
    for k in (1, 4):
        prog = compile_model(model, options={"average": f"conv1={k},conv2={k},fc={k}"})
        calibrate(prog, seed=0)
        ref = Simulator(prog, "ideal").run(x)["y"]
        sim = Simulator(prog, "hardware")
        runs = []
        for seed in range(4):
            sim.program(seed)
            sim.at(1.0)
            runs.append(np.linalg.norm(sim.run(x)["y"] - ref) / np.linalg.norm(ref))
        error[k] = float(np.mean(runs))
    # independent device noise averaged over 4 copies: about half the error (1/sqrt(4)); quantization aside
    assert error[4] < 0.7 * error[1], error
