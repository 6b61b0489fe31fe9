"""schedule_links: a timeline per inference for MVMs, host stages and transfers (OR-tools CP-SAT).

Every task of compiler/dataflow.py becomes an interval: MVMs on their tile,
host stages and digital partial sums on the host, transfers on every link
of their route. One NoOverlap per resource (a tile runs its time-multiplexed
slices one after another; a link carries one transfer at a time), precedence
from the dataflow, and the makespan (the latency of one inference)
minimised. A list schedule in dataflow order is the warm start and the
fallback. Steady-state throughput with inferences pipelined is bounded by
the busiest resource: 1 / (its busy time per inference).
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

from anac.core.dataflow import Task, tasks
from anac.core.program import Program


@dataclass(frozen=True)
class ScheduleLinks:
    """Order MVMs, host work and transfers on their resources; report latency and throughput."""

    name: ClassVar[str] = "schedule_links"
    requires: ClassVar[tuple[str, ...]] = ("placement",)
    produces: ClassVar[tuple[str, ...]] = ("schedule",)
    time_limit_s: float = 5.0  # CP-SAT deterministic time limit
    seed: int = 0

    def run(self, prog: Program) -> None:
        work = tasks(prog)
        dur = {t.id: max(1, math.ceil(t.duration_ns)) for t in work}
        greedy = list_schedule(work, dur)
        starts, status, solve_s = greedy, "heuristic", 0.0
        if work:
            starts, status, solve_s = self._solve(work, dur, greedy)
        busy: dict[str, int] = defaultdict(int)
        for t in work:
            for r in t.resources:
                busy[r] += dur[t.id]
        bottleneck = max(busy, key=lambda r: (busy[r], r)) if busy else None
        latency = max((starts[t.id] + dur[t.id] for t in work), default=0)
        greedy_latency = max((greedy[t.id] + dur[t.id] for t in work), default=0)
        prog.schedule = {
            "status": status, "solve_time_s": round(solve_s, 3),
            "latency_ns": latency, "greedy_latency_ns": greedy_latency,
            "throughput_per_s": round(1e9 / busy[bottleneck], 3) if bottleneck else None,
            "bottleneck": bottleneck, "busy_ns": dict(sorted(busy.items())),
            "timeline": [{"id": t.id, "kind": t.kind, "resources": t.resources, "start_ns": starts[t.id],
                          "end_ns": starts[t.id] + dur[t.id], "bytes": t.nbytes, "src": t.src, "dst": t.dst,
                          "after": t.after} for t in sorted(work, key=lambda t: (starts[t.id], t.id))],
        }

    def _solve(self, work: list[Task], dur: dict[str, int], hint: dict[str, int]) -> tuple[dict[str, int], str, float]:
        from ortools.sat.python import cp_model

        horizon = sum(dur.values())
        m = cp_model.CpModel()
        start = {t.id: m.new_int_var(0, horizon, f"s{i}") for i, t in enumerate(work)}
        per_resource: dict[str, list[Any]] = defaultdict(list)
        for i, t in enumerate(work):
            iv = m.new_fixed_size_interval_var(start[t.id], dur[t.id], f"i{i}")
            for r in t.resources:
                per_resource[r].append(iv)
            for a in t.after:
                m.add(start[t.id] >= start[a] + dur[a])
            m.add_hint(start[t.id], hint[t.id])
        for ivs in per_resource.values():
            if len(ivs) > 1:
                m.add_no_overlap(ivs)
        makespan = m.new_int_var(0, horizon, "makespan")
        for t in work:
            m.add(makespan >= start[t.id] + dur[t.id])
        m.minimize(makespan)
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = self.time_limit_s
        solver.parameters.random_seed = self.seed
        solver.parameters.num_workers = 1
        t0 = time.perf_counter()
        status = solver.solve(m)
        elapsed = time.perf_counter() - t0
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return hint, "fallback (list schedule)", elapsed
        got = {t.id: int(solver.value(start[t.id])) for t in work}
        if max(got[t.id] + dur[t.id] for t in work) > max(hint[t.id] + dur[t.id] for t in work):
            return hint, "fallback (list schedule)", elapsed
        if status == cp_model.OPTIMAL:
            return got, "optimal", elapsed
        obj, bound = solver.objective_value, solver.best_objective_bound
        return got, f"feasible (gap {0.0 if obj == 0 else (obj - bound) / obj:.4f})", elapsed


def list_schedule(work: list[Task], dur: dict[str, int]) -> dict[str, int]:
    """Each task, in dataflow order, at the earliest time its predecessors and resources allow."""
    end: dict[str, int] = {}
    free: dict[str, int] = defaultdict(int)
    start: dict[str, int] = {}
    for t in work:  # tasks() lists every task after its predecessors
        s = max([end[a] for a in t.after] + [free[r] for r in t.resources] + [0])
        start[t.id], end[t.id] = s, s + dur[t.id]
        for r in t.resources:
            free[r] = end[t.id]
    return start
