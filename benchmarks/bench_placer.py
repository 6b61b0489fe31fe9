"""CP-SAT placement against the greedy baseline, side by side, with solve time and the schedule.

For every models/*.onnx and the ONNX suite's light ResNet-50 and VGG-19
(and any extra model paths given), prints chips used and bytes on links per
inference for greedy (tiles to chips in packing order) and CP-SAT, the
solver's status, gap to its bound and time, and the scheduled latency (with
its gap to the schedule's lower bound) and throughput.

    python benchmarks/bench_placer.py [--tiles-per-chip 34] [extra.onnx ...]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import onnx
from anac.api import compile_model, model_inputs
from anac.core.frontend import load_onnx
from anac.core.hardware import load_hardware

ROOT = Path(__file__).resolve().parent.parent
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles-per-chip", type=int, default=None, help="override the chip size (more chips)")
    ap.add_argument("models", nargs="*", type=Path)
    args = ap.parse_args()
    hw = load_hardware()
    if args.tiles_per_chip:
        hw = replace(hw, tiles_per_chip=args.tiles_per_chip)
    paths = sorted((ROOT / "models").glob("*.onnx")) + [LIGHT / "light_resnet50.onnx", LIGHT / "light_vgg19.onnx"]
    paths += args.models
    print(f"{'model':<16} {'tiles':>5} {'chips':>5} {'greedy bytes':>13} {'CP-SAT bytes':>13} {'saved':>7} "
          f"{'status':<22} {'gap':>6} {'solve':>6} {'latency':>11} {'sched gap':>9} {'inf/s':>9}")
    for path in paths:
        # Symbolic dims (batch, sequence lengths) bound to 4: even, for the RNN-T's time stacking.
        shapes = {t.name: tuple(d if isinstance(d, int) else 4 for d in t.shape or ())
                  for t in model_inputs(load_onnx(path))}
        t = time.perf_counter()
        prog = compile_model(path, input_shapes=shapes, hardware=hw, progress=lambda _m: None)
        p, s = prog.placement_info or {}, prog.schedule or {}
        g = p["greedy"]["link_bytes"]
        saved = 1 - p["link_bytes"] / g if g else 0.0
        print(f"{path.stem:<16} {p['tiles']:>5} {prog.chips_used:>5} {g:>13,} {p['link_bytes']:>13,} {saved:>7.2%} "
              f"{p['status'][:22]:<22} {p.get('gap', 0.0):>6.3f} {p.get('solve_time_s', 0.0):>5.1f}s "
              f"{s['latency_ns'] / 1e3:>9.1f}us {s['gap']:>9.3f} {s['throughput_per_s']:>9,.0f}   "
              f"({time.perf_counter() - t:.1f} s)")


if __name__ == "__main__":
    main()
