"""assign_devices under a budget: CP-SAT equals brute force; budgets and capacity errors."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model, save_program
from anac.core.errors import CapacityError
from anac.core.hardware import IBM_PCM_14NM
from helpers import matmul_chain

MODELS = Path(__file__).parents[2] / "models"


def _chain(rng: np.random.Generator, dims: list[int]):  # type: ignore[no-untyped-def]
    return matmul_chain(rng, dims)


def _brute_force(layers: dict[str, tuple[int, int]], sens: dict[str, dict[str, float]], tiles: int) -> float:
    """The best sum of squared errors over every encoding of every block of 512 columns of every layer
    (K x N each), a block's error its share of the layer's weights times the layer's squared sensitivity."""
    per_tile = IBM_PCM_14NM.devices_per_tile
    blocks = [(n, k * (min(cols, c + 512) - c), k * cols) for n, (k, cols) in layers.items()
              for c in range(0, cols, 512)]
    best = float("inf")
    for combo in itertools.product(["4-PCM", "2-PCM"], repeat=len(blocks)):
        dev = {"4-PCM": 0, "2-PCM": 0}
        for (_, w, _), e in zip(blocks, combo, strict=True):
            dev[e] += w * IBM_PCM_14NM.encoding(e).devices_per_weight
        if sum(-(-d // per_tile) for d in dev.values()) <= tiles:
            best = min(best, sum(round(1e9 * w / total * sens[n][e] ** 2)
                                 for (n, w, total), e in zip(blocks, combo, strict=True)))
    return best


@pytest.mark.parametrize("seed", range(4))
def test_cpsat_choice_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dims = [int(d) for d in rng.integers(200, 900, size=6)]
    model = _chain(rng, dims)
    names = [f"l{i}" for i in range(5)]
    sens = {n: {"4-PCM": float(rng.uniform(0.01, 0.05)), "2-PCM": float(rng.uniform(0.05, 0.2))} for n in names}
    layers = {f"l{i}": (dims[i], dims[i + 1]) for i in range(5)}
    all4 = -(-sum(k * n for k, n in layers.values()) * 4 // IBM_PCM_14NM.devices_per_tile)
    tiles = max(2, all4 - 2)  # tight enough that some layers must take 2-PCM
    prog = compile_model(model, options={"tiles": tiles, "sensitivity": sens})
    a = prog.assignment
    # the encoding of every slice column block, from the slices themselves
    got = 0
    for n, (k, cols) in layers.items():
        for c in range(0, cols, 512):
            (e,) = {s.encoding for s in prog.slices if s.matrix == n and s.cols[0] <= c < s.cols[1]}
            got += round(1e9 * k * (min(cols, c + 512) - c) / (k * cols) * sens[n][e] ** 2)
    assert a["status"] == "optimal" and got == _brute_force(layers, sens, tiles)
    assert len(prog.tiles_used()) <= tiles


def test_measured_sensitivity_prefers_4pcm_and_budget_mixes_encodings(tmp_path: Path) -> None:
    prog = compile_model(MODELS / "kws_mlp.onnx", options={"tiles": 5})
    a = prog.assignment
    assert a["status"] == "optimal" and len(prog.tiles_used()) <= 5
    assert set(a["encodings"].values()) == {"2-PCM", "4-PCM"}
    # 2-PCM (one pair) is the noisier encoding for every layer; the measured table is reported.
    assert all(s["2-PCM"] > s["4-PCM"] for s in a["sensitivity"].values())
    assert "sensitivity" not in prog.options  # measured, not an option
    program = json.loads((save_program(prog, tmp_path / "k.anac") / "program.json").read_text())
    assert program["assignment"]["encodings"] == a["encodings"] and program["options"] == {"tiles": 5}
    assert 2.0 < a["pcm_per_weight"] < 4.0 and a["estimated_error"] > 0


def test_unbudgeted_is_all_default_and_generous_budget_is_all_4pcm(rng: np.random.Generator) -> None:
    model = _chain(rng, [600, 600, 30])
    assert set(compile_model(model).assignment["encodings"].values()) == {"4-PCM"}
    roomy = compile_model(model, options={"chips": 1})
    assert set(roomy.assignment["encodings"].values()) == {"4-PCM"} and roomy.assignment["status"] == "optimal"


def test_pcm_per_weight_budget(rng: np.random.Generator) -> None:
    model = _chain(rng, [600, 600, 600, 600])
    prog = compile_model(model, options={"pcm_per_weight": 3.0})
    assert prog.assignment["pcm_per_weight"] <= 3.0
    assert set(prog.assignment["encodings"].values()) == {"2-PCM", "4-PCM"}


def test_capacity_error_states_the_smallest_mapping(rng: np.random.Generator) -> None:
    model = _chain(rng, [1024, 1024, 1024])  # 2 M weights: all-2-PCM needs 4 tiles
    with pytest.raises(CapacityError, match=r"smallest mapping \(every free layer 2-PCM\) needs 4 tiles; "
                                            r"the budget gives 3 tiles"):
        compile_model(model, options={"tiles": 3})


def test_deterministic_for_a_seed(rng: np.random.Generator, tmp_path: Path) -> None:
    model = _chain(rng, [700, 900, 800, 50])
    a = save_program(compile_model(model, options={"tiles": 4}), tmp_path / "a.anac")
    b = save_program(compile_model(model, options={"tiles": 4}), tmp_path / "b.anac")
    for f in ("program.json", "weights.npz"):
        assert (a / f).read_bytes() == (b / f).read_bytes()


def test_within_the_error_tolerance_the_fewest_devices_win(rng: np.random.Generator) -> None:
    model = _chain(rng, [500, 1000, 300, 30])  # l0 500 k weights, l1 300 k, l2 9 k
    # All-4-PCM needs 4 tiles; l0 or l1 alone on 2-PCM fits 3; l1 costs a little less error than l0.
    sens = {"l0": {"4-PCM": 0.05, "2-PCM": 0.100}, "l1": {"4-PCM": 0.05, "2-PCM": 0.0995},
            "l2": {"4-PCM": 0.05, "2-PCM": 0.3}}
    exact = compile_model(model, options={"tiles": 3, "sensitivity": sens})
    assert exact.assignment["encodings"] == {"l0": "4-PCM", "l1": "2-PCM", "l2": "4-PCM"}
    assert "error_tolerance" not in exact.assignment
    tolerant = compile_model(model, options={"tiles": 3, "sensitivity": sens, "error_tolerance": 0.02})
    a = tolerant.assignment
    assert a["encodings"] == {"l0": "2-PCM", "l1": "4-PCM", "l2": "4-PCM"} and a["error_tolerance"] == 0.02
    assert tolerant.pcm_devices() < exact.pcm_devices() and len(tolerant.tiles_used()) <= 3
    # Beyond the tolerance the error still decides.
    far = {**sens, "l0": {"4-PCM": 0.05, "2-PCM": 0.2}}
    assert compile_model(model, options={"tiles": 3, "sensitivity": far, "error_tolerance": 0.02}
                         ).assignment["encodings"]["l0"] == "4-PCM"
