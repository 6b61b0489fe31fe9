"""schedule_links: a timeline per inference for MVMs, host stages and transfers (OR-tools CP-SAT).

Every task of compiler/dataflow.py becomes an interval: MVMs on their tile,
host stages and digital partial sums on the host, transfers on every link
of their route. One NoOverlap per resource (a tile runs its time-multiplexed
slices one after another; a link carries one transfer at a time), precedence
from the dataflow, and the makespan (the latency of one inference)
minimised.

List schedules come first (dataflow order, and two critical-path
priorities: longest tail first, smallest head minus tail first), with a
lower bound on any schedule's makespan: the longest dataflow path, and per
resource the makespan of Jackson's preemptive schedule of its tasks with
their heads and tails (at least the earliest head plus all its work plus
the shortest tail after it). When the best list
schedule meets the bound (a chain, or no contention that delays the
critical path) it is optimal and CP-SAT is not run; nor is it when the list
schedule is within ``gap_limit`` (2 %) of the bound. Otherwise CP-SAT starts
from it with every start bounded by its head and the list schedule's
makespan minus its tail, a deterministic time limit proportional to the
number of tasks (capped by ``time_limit_s``), and stops at a proven optimum
or within ``gap_limit`` of its bound; above ``max_tasks`` the list schedule
stands. The bound and the gap (makespan - bound) / makespan are recorded
either way. Steady-state throughput with inferences pipelined is bounded by
the busiest resource: 1 / (its busy time per inference).
"""

from __future__ import annotations

import heapq
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
    time_limit_s: float = 5.0  # cap on CP-SAT's deterministic time limit
    seconds_per_task: float = 0.0001  # CP-SAT's deterministic budget per task, up to the cap
    gap_limit: float = 0.02  # a schedule within this fraction of the lower bound is good enough (CP-SAT not run)
    max_tasks: int = 5000  # beyond this, the best list schedule alone (with its bound and gap)
    seed: int = 0

    def run(self, prog: Program) -> None:
        work = tasks(prog)
        dur = {t.id: max(1, math.ceil(t.duration_ns)) for t in work}
        head, tail, bound = lower_bound(work, dur)
        # Dataflow order, then two critical-path priorities (longest tail first; smallest head - tail first):
        # the shortest of the three is the warm start (and the answer when it meets the bound).
        greedy, greedy_latency = _best([list_schedule(work, dur)], dur)
        if greedy_latency > bound:
            greedy, greedy_latency = _best([greedy] + [
                list_schedule(work, dur, prio) for prio in ({k: -v for k, v in tail.items()},
                                                            {k: head[k] - tail[k] for k in dur})], dur)
        starts, latency, solve_s, limit = greedy, greedy_latency, 0.0, 0.0
        if greedy_latency <= bound:
            status = "optimal (list schedule meets the lower bound)"
        elif greedy_latency - bound <= self.gap_limit * greedy_latency:
            status = f"within {self.gap_limit:.1%} of the lower bound (list schedule; CP-SAT not needed)"
        elif len(work) > self.max_tasks:
            status = f"heuristic (list schedule; {len(work)} tasks, over the {self.max_tasks} CP-SAT handles here)"
        else:
            limit = min(self.time_limit_s, max(0.02, self.seconds_per_task * len(work)))
            starts, status, solve_s, cp_bound = self._solve(work, dur, greedy, greedy_latency, head, tail, bound, limit)
            bound = max(bound, cp_bound)
            latency = max(starts[t.id] + dur[t.id] for t in work)
        busy: dict[str, int] = defaultdict(int)
        for t in work:
            for r in t.resources:
                busy[r] += dur[t.id]
        bottleneck = max(busy, key=lambda r: (busy[r], r)) if busy else None
        prog.schedule = {
            "status": status, "solve_time_s": round(solve_s, 3), "time_limit_s": round(limit, 3),
            "latency_ns": latency, "greedy_latency_ns": greedy_latency, "bound_ns": bound,
            "gap": round((latency - bound) / latency, 4) if latency else 0.0, "tasks": len(work),
            "throughput_per_s": round(1e9 / busy[bottleneck], 3) if bottleneck else None,
            "bottleneck": bottleneck, "busy_ns": dict(sorted(busy.items())),
            "timeline": [{"id": t.id, "kind": t.kind, "resources": t.resources, "start_ns": starts[t.id],
                          "end_ns": starts[t.id] + dur[t.id], "bytes": t.nbytes, "src": t.src, "dst": t.dst,
                          "after": t.after} for t in sorted(work, key=lambda t: (starts[t.id], t.id))],
        }

    def _solve(self, work: list[Task], dur: dict[str, int], hint: dict[str, int], upper: int,
               head: dict[str, int], tail: dict[str, int], lower: int,
               limit: float) -> tuple[dict[str, int], str, float, int]:
        """CP-SAT from the list schedule; (starts, status, seconds, proven lower bound on the makespan)."""
        from ortools.sat.python import cp_model

        m = cp_model.CpModel()
        # A schedule of makespan ``upper`` exists (the hint), so no start needs to be later than upper - tail.
        start = {t.id: m.new_int_var(head[t.id], upper - tail[t.id], f"s{i}") for i, t in enumerate(work)}
        per_resource: dict[str, list[Any]] = defaultdict(list)
        has_successor: set[str] = set()
        for i, t in enumerate(work):
            iv = m.new_fixed_size_interval_var(start[t.id], dur[t.id], f"i{i}")
            for r in t.resources:
                per_resource[r].append(iv)
            for a in t.after:
                m.add(start[t.id] >= start[a] + dur[a])
                has_successor.add(a)
            m.add_hint(start[t.id], hint[t.id])
        for ivs in per_resource.values():
            if len(ivs) > 1:
                m.add_no_overlap(ivs)
        makespan = m.new_int_var(lower, upper, "makespan")
        for t in work:
            if t.id not in has_successor:  # only the sinks of the dataflow can end last
                m.add(makespan >= start[t.id] + dur[t.id])
        m.add_hint(makespan, upper)
        m.minimize(makespan)
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = limit
        solver.parameters.relative_gap_limit = self.gap_limit
        # No LP relaxation: building it for hundreds of intervals takes seconds and its bound is no better than
        # what the scheduling propagators (precedences, NoOverlap) prove here.
        solver.parameters.linearization_level = 0
        solver.parameters.random_seed = self.seed
        solver.parameters.num_workers = 1  # one worker and a deterministic limit: the same answer on every run
        t0 = time.perf_counter()
        status = solver.solve(m)
        elapsed = time.perf_counter() - t0
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return hint, "fallback (list schedule; no CP-SAT solution in the time limit)", elapsed, lower
        got = {t.id: int(solver.value(start[t.id])) for t in work}
        bound = int(math.ceil(solver.best_objective_bound))
        if max(got[t.id] + dur[t.id] for t in work) > upper:
            return hint, "fallback (list schedule was better)", elapsed, bound
        if status == cp_model.OPTIMAL and solver.best_objective_bound >= solver.objective_value:
            return got, "optimal", elapsed, int(solver.objective_value)
        if status == cp_model.OPTIMAL:  # stopped within gap_limit of its bound
            return got, f"within {self.gap_limit:.1%} of the lower bound (CP-SAT)", elapsed, bound
        return got, "feasible (CP-SAT time limit; see gap)", elapsed, bound


def list_schedule(work: list[Task], dur: dict[str, int], priority: dict[str, Any] | None = None) -> dict[str, int]:
    """Each task at the earliest time its predecessors and resources allow, taken in dataflow order or,
    with ``priority``, the ready task of the smallest priority first (ties in dataflow order)."""
    end: dict[str, int] = {}
    free: dict[str, int] = defaultdict(int)
    start: dict[str, int] = {}

    def place(t: Task) -> None:
        s = max([end[a] for a in t.after] + [free[r] for r in t.resources] + [0])
        start[t.id], end[t.id] = s, s + dur[t.id]
        for r in t.resources:
            free[r] = end[t.id]

    if priority is None:
        for t in work:  # tasks() lists every task after its predecessors
            place(t)
        return start
    successors: dict[str, list[int]] = defaultdict(list)
    waiting = [len(t.after) for t in work]
    for i, t in enumerate(work):
        for a in t.after:
            successors[a].append(i)
    ready = [(priority[t.id], i) for i, t in enumerate(work) if not t.after]
    heapq.heapify(ready)
    while ready:
        t = work[heapq.heappop(ready)[1]]
        place(t)
        for j in successors[t.id]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, (priority[work[j].id], j))
    return start


def lower_bound(work: list[Task], dur: dict[str, int]) -> tuple[dict[str, int], dict[str, int], int]:
    """Heads (earliest starts), tails (longest dataflow path from a task's start to the end) and a makespan bound.

    The bound is the larger of the longest dataflow path and, per resource,
    the makespan of Jackson's preemptive schedule of its tasks (each released
    at its head, followed by its tail after it ends): the optimum of that
    resource alone with preemption allowed, so no schedule can be shorter.
    It is at least the resource's smallest head + total work + smallest tail.
    """
    head: dict[str, int] = {}
    for t in work:
        head[t.id] = max((head[a] + dur[a] for a in t.after), default=0)
    after_end: dict[str, int] = dict.fromkeys(dur, 0)  # longest path after a task ends
    for t in reversed(work):
        for a in t.after:
            after_end[a] = max(after_end[a], dur[t.id] + after_end[t.id])
    tail = {k: dur[k] + v for k, v in after_end.items()}
    bound = max((head[k] + tail[k] for k in dur), default=0)
    on: dict[str, list[str]] = defaultdict(list)
    for t in work:
        for r in t.resources:
            on[r].append(t.id)
    for ids in on.values():
        if len(ids) > 1:
            bound = max(bound, _jackson(sorted((head[k], dur[k], after_end[k]) for k in ids)))
    return head, tail, bound


def _jackson(jobs: list[tuple[int, int, int]]) -> int:
    """Makespan of Jackson's preemptive schedule of (release, duration, tail) jobs sorted by release: at every
    moment the released job with the longest tail runs; each job ends at its completion plus its tail."""
    ready: list[tuple[int, int]] = []  # (-tail, remaining)
    t = best = i = 0
    while i < len(jobs) or ready:
        if not ready:
            t = max(t, jobs[i][0])
        while i < len(jobs) and jobs[i][0] <= t:
            heapq.heappush(ready, (-jobs[i][2], jobs[i][1]))
            i += 1
        neg_tail, remaining = heapq.heappop(ready)
        run = remaining if i == len(jobs) else min(remaining, jobs[i][0] - t)
        t += run
        if run < remaining:
            heapq.heappush(ready, (neg_tail, remaining - run))
        else:
            best = max(best, t - neg_tail)
    return best


def _best(schedules: list[dict[str, int]], dur: dict[str, int]) -> tuple[dict[str, int], int]:
    """The schedule of the smallest makespan (the first of equals), and its makespan."""
    spans = [max((st[k] + d for k, d in dur.items()), default=0) for st in schedules]
    i = spans.index(min(spans))
    return schedules[i], spans[i]
