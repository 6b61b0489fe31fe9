"""Depthwise-separable nets: groups packed block-diagonally against one matrix per group, in one run.

EfficientNet-B0 and MobileNetV3-small (benchmarks/cnn_zoo.py: torchvision's
shapes, seeded random weights, exported with torch's TorchScript exporter)
are compiled twice: ``--pack off`` is the old scheme (every conv group its own
matrix), ``on`` packs each grouped conv's groups side by side on the block
diagonal of tile-sized matrices. Per model and scheme it prints slices, tiles
against the lower bound (passes/place.py lower_bound_tiles), the share of the
crossbar weight cells the zero blocks take, compile and place time, the
estimated latency of one inference, the busiest tile's share of it and the
schedule's bottleneck, and the ideal simulation of one image; then new/old ratios.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_depthwise.py [--models NAME,...]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from anac.api import compile_model
from anac.backends.simulator import Simulator
from cnn_zoo import MODELS, export


def measure(path: Path, pack: bool) -> dict[str, Any]:
    t = time.perf_counter()
    prog = compile_model(path, options={"pack_groups": pack}, progress=lambda _m: None)
    compile_s = time.perf_counter() - t
    info, sched = prog.placement_info or {}, prog.schedule or {}
    busy = sched.get("busy_ns", {})
    tile_busy = max((v for r, v in busy.items() if r.startswith("tile:")), default=0)
    zeros = prog.zero_block_weights()
    sim = Simulator(prog, "ideal")
    x = {prog.inputs[0].name: np.random.default_rng(0).standard_normal(prog.inputs[0].shape).astype(np.float32)}
    t = time.perf_counter()
    sim.run(x)
    return {"slices": len(prog.slices or []), "tiles": info["tiles"], "bound": info["lower_bound_tiles"],
            "zero_share": zeros / (prog.analog_weights + zeros), "compile_s": compile_s,
            "place_s": prog.timings["place"], "latency_ms": sched["latency_ns"] / 1e6,
            "tile_share": tile_busy / sched["latency_ns"], "bottleneck": sched["bottleneck"],
            "sim_s": time.perf_counter() - t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    args = ap.parse_args()
    print(f"{'model':<18} {'pack':<4} {'slices':>6} {'tiles':>5} {'bound':>5} {'zeros':>6} {'compile':>8} "
          f"{'place':>7} {'latency':>10} {'tile':>5} {'bottleneck':<11} {'sim':>6}")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = export(name, Path(tmp) / f"{name}.onnx")
            rows = {}
            for pack in (False, True):
                r = rows[pack] = measure(path, pack)
                print(f"{name:<18} {'on' if pack else 'off':<4} {r['slices']:>6} {r['tiles']:>5} {r['bound']:>5} "
                      f"{r['zero_share']:>6.1%} {r['compile_s']:>7.2f}s {r['place_s']:>6.2f}s "
                      f"{r['latency_ms']:>8.2f}ms {r['tile_share']:>5.0%} {r['bottleneck']:<11} {r['sim_s']:>5.2f}s",
                      flush=True)
            new, old = rows[True], rows[False]
            print(f"{name:<18} on/off: slices {new['slices'] / old['slices']:.3f}, compile "
                  f"{new['compile_s'] / old['compile_s']:.3f}, place {new['place_s'] / old['place_s']:.4f}, latency "
                  f"{new['latency_ms'] / old['latency_ms']:.3f}, simulation {new['sim_s'] / old['sim_s']:.3f}")


if __name__ == "__main__":
    main()
