"""Placement and the link schedule at scale: long graphs, hundreds of chips, bounds and gaps reported."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from anac.api import compile_model, save_program
from anac.core.dataflow import tasks
from anac.core.hardware import load_hardware
from anac.passes.place import Place, proxy_bound, proxy_cost
from anac.passes.schedule_links import ScheduleLinks, list_schedule, lower_bound
from anac.passes.split_matrices import SplitMatrices
from helpers import check_placement
from scale_models import matmul_stack, sigmoid_chain


def _check_schedule(prog) -> None:  # type: ignore[no-untyped-def]
    """Precedences and resources respected; latency, bound and gap consistent."""
    sched = prog.schedule
    timeline = {t["id"]: t for t in sched["timeline"]}
    assert len(timeline) == sched["tasks"] == len(tasks(prog))
    busy = defaultdict(list)
    for t in timeline.values():
        for a in t["after"]:
            assert t["start_ns"] >= timeline[a]["end_ns"], (t["id"], a)
        for r in t["resources"]:
            busy[r].append((t["start_ns"], t["end_ns"]))
    for spans in busy.values():
        spans.sort()
        assert all(e0 <= s1 for (_, e0), (s1, _) in zip(spans, spans[1:], strict=False))
    assert sched["latency_ns"] == max(t["end_ns"] for t in timeline.values())
    assert sched["bound_ns"] <= sched["latency_ns"] <= sched["greedy_latency_ns"]
    assert sched["gap"] == pytest.approx((sched["latency_ns"] - sched["bound_ns"]) / sched["latency_ns"], abs=1e-4)


def _check_big_placement(prog) -> None:  # type: ignore[no-untyped-def]
    """Every weight on exactly one placed slice, without a weight-sized coverage grid (the stack has GiBs)."""
    hw = prog.hardware
    per_matrix = defaultdict(list)
    per_chip = defaultdict(set)
    for s in prog.slices:
        assert None not in (s.chip, s.tile, s.row_offset, s.col_offset)
        assert 0 <= s.chip < prog.chips_used and 0 <= s.tile < hw.tiles_per_chip
        per_matrix[s.matrix].append(s)
        per_chip[s.chip].add(s.tile)
    assert all(len(t) <= hw.tiles_per_chip for t in per_chip.values())
    assert len(per_chip) == prog.chips_used == -(-prog.placement_info["tiles"] // hw.tiles_per_chip)
    for mid, group in per_matrix.items():
        k, n = prog.matrices[mid].shape
        assert sum(s.n_rows * s.n_cols for s in group) == k * n, mid
        r0, c0 = (np.array([getattr(s, f)[0] for s in group]) for f in ("rows", "cols"))
        r1, c1 = (np.array([getattr(s, f)[1] for s in group]) for f in ("rows", "cols"))
        assert (r0 >= 0).all() and (r1 <= k).all() and (c0 >= 0).all() and (c1 <= n).all()
        for i in range(len(group)):  # disjoint pieces whose areas add up to the matrix: an exact cover
            assert not ((r0[i + 1:] < r1[i]) & (r0[i] < r1[i + 1:]) & (c0[i + 1:] < c1[i]) & (c0[i] < c1[i + 1:])).any()
    prog.verify()  # placement invariants: on a tile of the chip, within its grid, no overlap, one encoding


def _place_and_schedule(prog):  # type: ignore[no-untyped-def]
    for p in (SplitMatrices(), Place(), ScheduleLinks()):
        p.run(prog)
        prog.verify()
        prog.produced.update(p.produces)
    return prog


def test_a_long_sigmoid_chain_is_scheduled_by_the_list_schedule_and_proven_optimal() -> None:
    prog = compile_model(sigmoid_chain(300), progress=lambda _m: None)
    sched = prog.schedule
    assert sched["status"].startswith("optimal (list schedule") and sched["gap"] == 0.0
    assert sched["time_limit_s"] == 0.0  # CP-SAT never ran
    _check_schedule(prog)
    check_placement(prog)


@pytest.mark.parametrize("partial_sums", ["host", "chip"])
def test_stack_on_200_plus_chips_places_and_schedules_with_bound_and_gap(partial_sums: str) -> None:
    # 20 x (4096 x 11008, 11008 x 4096) at 4-PCM: 176 tiles per layer, 6,880 tiles, 203 chips of 34.
    hw = replace(load_hardware(), partial_sums=partial_sums)
    prog = _place_and_schedule(matmul_stack([4096] + [11008, 4096] * 20, hardware=hw))
    info = prog.placement_info
    assert prog.chips_used >= 200 and info["tiles"] == info["lower_bound_tiles"] == 6880
    _check_big_placement(prog)
    assert 0 <= info["bound_bytes"] <= info["objective_bytes"] and 0.0 <= info["gap"] < 1.0
    assert info["link_bytes"] <= info["greedy"]["link_bytes"]
    assert info["status"] and info["method"]
    _check_schedule(prog)


def test_ragged_stack_is_decomposed_and_never_worse_than_greedy() -> None:
    # Odd sizes (multiples of 200) leave partial tiles for packing; over max_vars, windows of chips are solved.
    dims = [int(d) for d in np.random.default_rng(1).integers(4, 40, 41) * 200]
    prog = _place_and_schedule(matmul_stack(dims))
    info = prog.placement_info
    assert prog.chips_used * info["tiles"] > Place().max_vars
    assert info["status"].startswith(("decomposed", "optimal", "fallback"))
    assert info["link_bytes"] <= info["greedy"]["link_bytes"]
    assert info["bound_bytes"] <= info["objective_bytes"]
    _check_big_placement(prog)
    _check_schedule(prog)


def test_proxy_bound_is_a_lower_bound_on_every_assignment() -> None:
    # Small enough to enumerate: every assignment of 7 tiles to 3 chips of 3 tiles.
    import itertools

    hw = replace(load_hardware(), tiles_per_chip=3, tile_grid=(2, 2))
    for partial_sums in ("host", "chip"):
        prog = matmul_stack([600, 512, 700, 512, 300], hardware=replace(hw, partial_sums=partial_sums))
        SplitMatrices().run(prog)
        Place(solver="greedy").run(prog)
        by_tile = defaultdict(list)
        for s in prog.slices:
            by_tile[(s.chip, s.tile)].append(s)
        tiles = [type("T", (), {"slices": v})() for _, v in sorted(by_tile.items())]
        chips = prog.chips_used
        bound = proxy_bound(prog, tiles, chips)
        costs = [proxy_cost(prog, tiles, list(c)) for c in itertools.product(range(chips), repeat=len(tiles))
                 if all(c.count(k) <= hw.tiles_per_chip for k in range(chips))]
        assert 0 < bound <= min(costs)


def test_schedule_lower_bound_holds_against_cpsat() -> None:
    # Where CP-SAT proves an optimum, the head-body-tail bound is at most that optimum.
    rng = np.random.default_rng(0)
    from helpers import matmul_chain

    hw = replace(load_hardware(), tiles_per_chip=3)
    prog = compile_model(matmul_chain(rng, [1024, 512, 512, 512, 700, 10], relu=True), hardware=hw,
                         progress=lambda _m: None)
    work = tasks(prog)
    dur = {t.id: max(1, int(np.ceil(t.duration_ns))) for t in work}
    _, _, bound = lower_bound(work, dur)
    greedy = list_schedule(work, dur)
    assert bound <= prog.schedule["latency_ns"] <= max(greedy[k] + dur[k] for k in dur)
    assert prog.schedule["bound_ns"] >= bound
    _check_schedule(prog)


def test_bound_and_gap_reach_program_json(tmp_path: Path) -> None:
    hw = replace(load_hardware(), tiles_per_chip=4)
    from helpers import matmul_chain

    prog = compile_model(matmul_chain(np.random.default_rng(0), [1024, 512, 512, 512, 600, 10]), hardware=hw,
                         progress=lambda _m: None)
    out = save_program(prog, tmp_path / "p.anac")
    data = json.loads((out / "program.json").read_text())
    for key in ("status", "objective_bytes", "bound_bytes", "gap", "time_limit_s"):
        assert key in data["placement"], key
    for key in ("status", "bound_ns", "gap", "time_limit_s", "tasks"):
        assert key in data["schedule"], key


@pytest.mark.parametrize("seed", range(6))
def test_schedule_lower_bound_never_exceeds_the_cpsat_optimum_on_random_dags(seed: int) -> None:
    from anac.core.dataflow import Task

    rng = np.random.default_rng(seed)
    work = []
    for i in range(14):
        after = [f"t{j}" for j in range(i) if rng.random() < 0.2]
        resources = [f"r{k}" for k in rng.choice(3, size=rng.integers(1, 3), replace=False)]
        work.append(Task(f"t{i}", "mvm", resources, float(rng.integers(1, 20)), after))
    dur = {t.id: int(t.duration_ns) for t in work}
    head, tail, bound = lower_bound(work, dur)
    greedy = list_schedule(work, dur)
    upper = max(greedy[k] + dur[k] for k in dur)
    starts, status, _, proven = ScheduleLinks(gap_limit=0.0)._solve(work, dur, greedy, upper, head, tail, bound, 10.0)
    assert status in ("optimal", "fallback (list schedule was better)")
    optimum = max(starts[k] + dur[k] for k in dur)
    assert bound <= optimum <= upper and proven == optimum


def test_solver_budgets_scale_with_the_problem() -> None:
    from helpers import matmul_chain

    hw = replace(load_hardware(), tiles_per_chip=4, links=replace(load_hardware().links, topology="ring"))
    model = matmul_chain(np.random.default_rng(0), [1024, 512, 512, 512, 600, 10], relu=True)
    prog = compile_model(model, hardware=hw, progress=lambda _m: None)
    info, sched = prog.placement_info, prog.schedule
    if info["time_limit_s"]:  # CP-SAT ran on the whole problem: 0.5 ms per pair of a class of tiles (the same
        # layers) and a chip, at least 0.05 s
        layers: dict[tuple[int, int], set[str]] = defaultdict(set)
        for sl in prog.slices:
            layers[(sl.chip, sl.tile)].add(prog.matrices[sl.matrix].node)
        classes = len({frozenset(v) for v in layers.values()})
        assert info["time_limit_s"] == round(min(5.0, max(0.05, 0.0005 * classes * prog.chips_used)), 3)
    if sched["time_limit_s"]:  # CP-SAT ran: 0.1 ms per task, at least 0.02 s
        assert sched["time_limit_s"] == round(min(5.0, max(0.02, 0.0001 * sched["tasks"])), 3)
    capped = compile_model(model, hardware=hw, progress=lambda _m: None,
                           options={"schedule_links.max_tasks": 5, "schedule_links.gap_limit": 0.0})
    s = capped.schedule
    assert s["tasks"] > 5 and s["time_limit_s"] == 0.0
    assert s["status"].startswith(("heuristic", "optimal (list"))
    _check_schedule(capped)


def test_compile_summary_names_statuses_and_gaps(tmp_path: Path) -> None:
    from anac.cli import main
    from click.testing import CliRunner
    from helpers import matmul_chain, save

    path = save(matmul_chain(np.random.default_rng(0), [1024, 512, 512, 10]), tmp_path, "m.onnx")
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "m.anac")])
    assert result.exit_code == 0, result.output
    assert "placement: " in result.output and "schedule: " in result.output and "gap " in result.output
    result = CliRunner().invoke(main, ["compile", str(path), "-o", str(tmp_path / "m.anac"), "--json"])
    data = json.loads(result.stdout)
    assert {"status", "link_bytes"} <= set(data["placement"]) and {"status", "gap", "bound_ns"} <= set(data["schedule"])


def test_windowed_placement_is_deterministic() -> None:
    # Windows forced on a small ragged stack (max_vars=50): the same chips and tiles on every run.
    dims = [int(d) for d in np.random.default_rng(2).integers(4, 30, 13) * 200]
    runs = []
    for _ in range(2):
        prog = matmul_stack(dims)
        SplitMatrices().run(prog)
        Place(max_vars=50).run(prog)
        runs.append([(s.matrix, s.rows, s.cols, s.chip, s.tile, s.slot) for s in prog.slices])
        assert prog.placement_info["status"].startswith(("decomposed", "optimal", "fallback"))
        assert prog.placement_info["link_bytes"] <= prog.placement_info["greedy"]["link_bytes"]
    assert runs[0] == runs[1]
