"""Compile time at the scale of the graph: a 1,000-layer chain, ResNet-18, a 200+-chip MatMul stack.

For each model, in one process: the compile time (``compile_model``), the
floor (``onnx.load`` of the same file plus one numpy pass over its weights),
their ratio, the time of the frontend, partition, place and schedule_links
passes, and the placement's and the schedule's status and gap. The models
are built from code (tests/scale_models.py, seeded): a chain of 1,000 x
(MatMul by an 8 x 8 constant, Sigmoid); the ResNet-18 architecture with
random weights (and with ``--vit`` ViT-B/16's); and 20 x (4096 x 11008,
11008 x 4096) MatMuls as a Program with shapes only (6,880 tiles, 203 chips
of the IBM preset), run through split_matrices, place and schedule_links
(no file, so no floor). Times are medians of ``--repeat`` runs. For each
model file, ``anac compile`` also runs once in a child process, which
reports its own peak resident memory (as benchmarks/compile_measure.py
measures it): the peak column, and its ratio to the file's size.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_compile_scale.py [--repeat 3] [--pairs 20] [--vit]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx
from anac.api import compile_model
from anac.core.program import Program
from anac.passes.place import Place
from anac.passes.schedule_links import ScheduleLinks
from anac.passes.split_matrices import SplitMatrices
from onnx import numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from compile_measure import compile_bytecode, run_child  # noqa: E402
from scale_models import matmul_stack, resnet18, sigmoid_chain, vit_b16  # noqa: E402


def floor_s(path: Path) -> float:
    """Seconds to onnx.load the file and touch every weight once."""
    t = time.perf_counter()
    model = onnx.load(str(path))
    checksum = 0.0
    for init in model.graph.initializer:
        checksum += float(numpy_helper.to_array(init).sum())
    return time.perf_counter() - t


def _median(f: Callable[[], float], repeat: int) -> float:
    return statistics.median(f() for _ in range(repeat))


def _stack(pairs: int) -> Program:
    prog = matmul_stack([4096] + [11008, 4096] * pairs)
    for p in (SplitMatrices(), Place(), ScheduleLinks()):
        t = time.perf_counter()
        p.run(prog)
        prog.verify()
        prog.produced.update(p.produces)
        prog.timings[p.name] = time.perf_counter() - t
    return prog


def _peak(path: Path) -> tuple[float, float]:
    """``anac compile`` of the file in a child process: its peak resident MiB, and that over the file's size."""
    _, peak, _ = run_child(["compile", str(path), "-o", str(path.with_suffix(".anac")), "--json", "-q"])
    return peak / 2**20, peak / path.stat().st_size


def _row(name: str, total: float, floor: float | None, prog: Program, peak: tuple[float, float] | None) -> None:
    p, s = prog.placement_info or {}, prog.schedule or {}
    ratio = f"{total / floor:6.1f}x" if floor else "     -"
    fl = f"{floor:7.2f}s" if floor else "       -"
    mem = f"{peak[0]:6.0f}M {peak[1]:5.2f}x" if peak else f"{'-':>7} {'-':>6}"
    t = prog.timings
    front = f"{t['frontend']:7.2f}s {t['partition']:7.2f}s" if "frontend" in t else f"{'-':>8} {'-':>8}"
    print(f"{name:<22} {total:7.2f}s {fl} {ratio} {mem} {front} {t['place']:7.2f}s {t['schedule_links']:7.2f}s "
          f"{prog.chips_used:>5} {p.get('status', '')[:34]:<34} {p.get('gap', 0.0):>6.3f} "
          f"{s.get('status', '')[:34]:<34} {s.get('gap', 0.0):>6.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    ap.add_argument("--pairs", type=int, default=20, help="MatMul pairs of the stack (20: 203 chips)")
    ap.add_argument("--vit", action="store_true", help="also ViT-B/16's shapes (86 M weights, 346 MB file)")
    args = ap.parse_args()
    compile_bytecode()
    print(f"{'model':<22} {'compile':>8} {'floor':>8} {'ratio':>7} {'peak':>7} {'/file':>6} {'frontend':>8} "
          f"{'partitn':>8} {'place':>8} "
          f"{'sched':>8} {'chips':>5} "
          f"{'placement status':<34} {'gap':>6} {'schedule status':<34} {'gap':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        models = [("chain 1000 x MatMul", sigmoid_chain), ("ResNet-18 (random)", resnet18)]
        models += [("ViT-B/16 (random)", vit_b16)] if args.vit else []
        for name, make in models:
            path = Path(tmp) / f"{make.__name__}.onnx"
            onnx.save(make(), path)
            progs: list[Program] = []

            def run(path: Path = path, progs: list[Program] = progs) -> float:
                t = time.perf_counter()
                progs[:] = [compile_model(path, progress=lambda _m: None)]
                return time.perf_counter() - t

            floor = _median(lambda path=path: floor_s(path), args.repeat)
            total = _median(run, args.repeat)
            _row(name, total, floor, progs[0], _peak(path))
    t = time.perf_counter()
    prog = _stack(args.pairs)
    _row(f"stack {args.pairs}x2 MatMul", time.perf_counter() - t, None, prog, None)
    print(f"(stack: {prog.placement_info['tiles']:,} tiles, {len(prog.slices or []):,} slices, "
          f"{prog.schedule['tasks']:,} tasks; shapes only, so no file and no floor)")


if __name__ == "__main__":
    main()
