"""Wall time of one sweep grid run serially (in this process) and in the local process pool; the ratio.

The grid: 2 models (digits_mlp on its 540 test samples, mnist_mlp on its 1,000) x 2 presets (ibm-pcm-14nm,
neurram) x 8 chip instances x 4 times (1s, 1h, 1d, 1y), drift compensation on: 4 builds, 32 cells, 128 rows.
It also prints what a distributed run ships: bytes per build (program + reference outputs), per model (test
data), per cell task (arguments) and per cell result, which bound the scaling on a cluster.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_sweep.py [--workers 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import resource
import tempfile
import time
from pathlib import Path

from anac.sweep import load_data, load_grid, plan, run_sweep

MODELS = Path(__file__).resolve().parent.parent / "models"

GRID = f"""
seed = 0
repeats = 8
times = ["1s", "1h", "1d", "1y"]
drift_compensation = true

[[model]]
path = "{MODELS / 'digits_mlp.onnx'}"
test_data = "{MODELS / 'digits_test.npz'}"
calibration_data = "{MODELS / 'digits_calib.npz'}"

[[model]]
path = "{MODELS / 'mnist_mlp.onnx'}"
test_data = "{MODELS / 'mnist_test.npz'}"
calibration_data = "{MODELS / 'mnist_calib.npz'}"

[[hardware]]
preset = "ibm-pcm-14nm"

[[hardware]]
preset = "neurram"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        g = Path(tmp) / "grid.toml"
        g.write_text(GRID)
        load = os.getloadavg()[0]
        t0, c0 = time.perf_counter(), _cpu()
        serial = run_sweep(g, Path(tmp) / "serial", workers=1)
        t_serial, c_serial = time.perf_counter() - t0, _cpu() - c0
        t0, c0 = time.perf_counter(), _cpu()
        pool = run_sweep(g, Path(tmp) / "pool", workers=args.workers)
        t_pool, c_pool = time.perf_counter() - t0, _cpu() - c0
        same = [{k: v for k, v in r.items() if k not in ("wall_s", "program_s")} for r in serial.rows] == \
            [{k: v for k, v in r.items() if k not in ("wall_s", "program_s")} for r in pool.rows]
        grid = load_grid(g)
        builds, cells = plan(grid)
        bundle = sum((Path(tmp) / "serial" / "programs" / f"{b.key}.zip").stat().st_size for b in builds) / len(builds)
        data = sum(len(pickle.dumps(load_data(m), protocol=5)) for m in grid.models) / len(grid.models)
        task = max(len(pickle.dumps(c, protocol=5)) for c in cells)
        result = max((Path(tmp) / "serial" / "cells" / f"{c.key}.json").stat().st_size for c in cells)
        compute = sum(r["wall_s"] for r in serial.rows) + sum(r["program_s"] for r in serial.rows[::4])
    print(f"grid: {len(grid.models)} models x {len(grid.hardware)} presets x {grid.repeats} instances x "
          f"{len(grid.times)} times = {len(builds)} builds, {len(cells)} cells, {len(serial.rows)} rows")
    print(f"load average before the runs: {load:.1f} on {os.cpu_count()} CPUs (other work shares them)")
    print("| run | wall s | CPU s (driver + workers) | wall ratio to serial |")
    print("|---|---|---|---|")
    print(f"| serial (this process) | {t_serial:.1f} | {c_serial:.1f} | 1.00 |")
    print(f"| local pool, {args.workers} workers | {t_pool:.1f} | {c_pool:.1f} | {t_serial / t_pool:.2f}x faster |")
    print(f"same table both ways: {same}")
    print(f"cell compute (program + reads, serial): {compute:.1f} s of {t_serial:.1f} s; "
          f"mean per cell {compute / len(cells):.2f} s")
    print(f"shipped: {bundle / 1e6:.2f} MB per build (program + reference outputs), {data / 1e6:.2f} MB per model "
          f"(test + calibration data), {task / 1e3:.1f} kB per cell task, {result / 1e3:.1f} kB per cell result")


def _cpu() -> float:
    """CPU seconds of this process and of its finished children (the pool's workers, once shut down)."""
    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


if __name__ == "__main__":
    main()
