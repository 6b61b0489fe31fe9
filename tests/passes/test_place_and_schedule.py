"""The CP-SAT placer against greedy and brute force; the link schedule's invariants."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import compile_model, save_program
from anac.core.dataflow import tasks
from anac.core.hardware import Links, load_hardware
from anac.passes.place import assign_chips, proxy_cost
from helpers import check_placement, matmul_chain

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _chain(rng: np.random.Generator, dims: list[int], relu: bool = True):  # type: ignore[no-untyped-def]
    return matmul_chain(rng, dims, relu=relu)


def _tiles(prog):  # type: ignore[no-untyped-def]
    by_tile = defaultdict(list)
    for s in prog.slices:
        by_tile[(s.chip, s.tile)].append(s)

    class T:
        def __init__(self, slices):  # type: ignore[no-untyped-def]
            self.slices = slices

    return [T(v) for _, v in sorted(by_tile.items())]


@pytest.mark.parametrize("dims", [[512, 512, 512, 512, 512], [600, 512, 700, 300, 512], [768, 512, 256, 768, 512]])
def test_small_instances_are_optimal_and_match_brute_force(dims: list[int]) -> None:
    rng = np.random.default_rng(0)
    hw = replace(load_hardware(), tiles_per_chip=3, tile_grid=(2, 2))
    prog = compile_model(_chain(rng, dims), hardware=hw, options={"solver": "greedy"})
    tiles = _tiles(prog)
    chips = prog.chips_used
    assert 2 <= chips <= 3 and len(tiles) <= 8
    hint = [i // hw.tiles_per_chip for i in range(len(tiles))]
    chip_of, status, _ = assign_chips(prog, tiles, chips, hint, 10.0, 0)
    assert status == "optimal"
    best = min(proxy_cost(prog, tiles, list(c)) for c in itertools.product(range(chips), repeat=len(tiles))
               if all(list(c).count(k) <= hw.tiles_per_chip for k in range(chips)) and c[0] == 0)
    assert proxy_cost(prog, tiles, chip_of) == best
    assert all(chip_of.count(k) <= hw.tiles_per_chip for k in range(chips))


@pytest.mark.parametrize("topology", ["host", "ring", "mesh"])
def test_cpsat_is_never_worse_than_greedy(rng: np.random.Generator, topology: str) -> None:
    hw = replace(load_hardware(), tiles_per_chip=4, links=Links(topology=topology))
    model = _chain(rng, [1024, 512, 512, 512, 512, 512, 600, 10])
    prog = compile_model(model, hardware=hw)
    check_placement(prog)
    info = prog.placement_info
    assert prog.chips_used == info["greedy"]["chips"] == -(-info["tiles"] // 4)
    assert info["link_bytes"] <= info["greedy"]["link_bytes"]


def test_cpsat_beats_greedy_on_resnet50() -> None:
    prog = compile_model(LIGHT / "light_resnet50.onnx")
    info = prog.placement_info
    assert prog.chips_used == info["greedy"]["chips"] == 3
    assert info["link_bytes"] < info["greedy"]["link_bytes"]


def _check_schedule(prog) -> None:  # type: ignore[no-untyped-def]
    sched = prog.schedule
    timeline = {t["id"]: t for t in sched["timeline"]}
    assert set(timeline) == {t.id for t in tasks(prog)}
    busy = defaultdict(list)
    for t in timeline.values():
        assert t["end_ns"] > t["start_ns"] >= 0
        for a in t["after"]:  # nothing starts before what it needs has ended
            assert t["start_ns"] >= timeline[a]["end_ns"], (t["id"], a)
        for r in t["resources"]:
            busy[r].append((t["start_ns"], t["end_ns"], t["id"]))
    for r, spans in busy.items():  # no link, tile or host does two things at once
        spans.sort()
        for (_, e0, a), (s1, _, b) in zip(spans, spans[1:], strict=False):
            assert e0 <= s1, f"{r}: {a} and {b} overlap"
    assert sched["latency_ns"] == max(t["end_ns"] for t in timeline.values())
    assert sched["latency_ns"] <= sched["greedy_latency_ns"]
    worst = max(sum(e - s for s, e, _ in spans) for spans in busy.values())
    assert sched["throughput_per_s"] == pytest.approx(1e9 / worst, abs=1e-3)  # rounded to 3 decimals


@pytest.mark.parametrize("topology", ["host", "ring"])
def test_schedule_invariants_multi_chip(rng: np.random.Generator, topology: str) -> None:
    hw = replace(load_hardware(), tiles_per_chip=3, links=Links(topology=topology))
    prog = compile_model(_chain(rng, [1024, 512, 512, 512, 700, 10]), hardware=hw)
    assert prog.chips_used >= 2
    kinds = {t["kind"] for t in prog.schedule["timeline"]}
    assert {"mvm", "transfer", "sum", "host"} >= kinds and {"mvm", "transfer"} <= kinds
    _check_schedule(prog)


def test_schedule_invariants_on_a_cnn_and_transfers_cross_chips(rng: np.random.Generator) -> None:
    prog = compile_model(LIGHT / "light_squeezenet.onnx")
    _check_schedule(prog)
    assert prog.schedule["status"].startswith(("optimal", "within", "feasible", "fallback"))
    assert prog.schedule["bound_ns"] <= prog.schedule["latency_ns"]


def test_chip_to_chip_transfers_for_an_on_chip_chain(rng: np.random.Generator) -> None:
    # Three 512 x 512 layers, ReLU fused, one tile per chip: each layer feeds the next chip directly.
    hw = replace(load_hardware(), tiles_per_chip=1, tile_grid=(1, 1))
    prog = compile_model(_chain(rng, [512, 512, 512, 512]), hardware=hw)
    xfers = [t for t in prog.schedule["timeline"] if t["kind"] == "transfer"]
    between = [t for t in xfers if t["src"].startswith("chip") and t["dst"].startswith("chip")]
    assert prog.chips_used == 3 and len(between) == 2
    assert all(t["bytes"] == 4 * 512 for t in between)  # batch 4 x 512 8-bit words
    assert all(len(t["resources"]) == 2 for t in between)  # topology "host": up one link, down another
    _check_schedule(prog)


def test_same_input_and_seed_give_the_same_program(rng: np.random.Generator, tmp_path: Path) -> None:
    hw = replace(load_hardware(), tiles_per_chip=4)
    model = _chain(rng, [1024, 512, 512, 512, 600, 10])
    a = save_program(compile_model(model, hardware=hw), tmp_path / "a.anac")
    b = save_program(compile_model(model, hardware=hw), tmp_path / "b.anac")
    assert (a / "program.json").read_bytes() == (b / "program.json").read_bytes()
    data = json.loads((a / "program.json").read_text())
    assert data["schedule"]["timeline"] and data["placement"]["status"]
    assert "solve_time_s" in json.loads((a / "report.json").read_text())["placement"]
