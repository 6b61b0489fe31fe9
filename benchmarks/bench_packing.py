"""Tiles used against the lower bound, per model and split strategy.

The lower bound is ceil(PCM devices needed / PCM devices per tile): no
placement can use fewer tiles. For each model (every models/*.onnx, and the
ONNX suite's light ResNet-50 and VGG-19) and each split strategy it prints
tiles, the bound, their ratio, the slices after packing, and how many tiles
time-multiplex slices that share rows or columns.

    python benchmarks/bench_packing.py [--encoding 4-PCM]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import onnx
from anac.api import compile_model, model_inputs
from anac.core.frontend import load_onnx

ROOT = Path(__file__).resolve().parent.parent
LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--encoding", default=None, help="encoding for every layer (default: the hardware's)")
    args = ap.parse_args()
    models = sorted((ROOT / "models").glob("*.onnx")) + [LIGHT / "light_resnet50.onnx", LIGHT / "light_vgg19.onnx"]
    print(f"{'model':<18} {'split':<5} {'tiles':>6} {'bound':>6} {'ratio':>6} {'slices':>7} {'muxed':>6} {'time':>6}")
    for path in models:
        # Symbolic dims (batch, sequence lengths) bound to 4: even, for the RNN-T's time stacking.
        shapes = {t.name: tuple(d if isinstance(d, int) else 4 for d in t.shape or ())
                  for t in model_inputs(load_onnx(path))}
        for strategy in ("fill", "even"):
            t = time.perf_counter()
            prog = compile_model(path, input_shapes=shapes, options={"strategy": strategy, "encoding": args.encoding},
                                 progress=lambda _m: None)
            info = prog.placement_info or {}
            tiles, bound = info["tiles"], info["lower_bound_tiles"]
            print(f"{path.stem:<18} {strategy:<5} {tiles:>6} {bound:>6} {tiles / max(bound, 1):>6.3f} "
                  f"{len(prog.slices or []):>7} {info['time_multiplexed_tiles']:>6} {time.perf_counter() - t:>5.1f}s")


if __name__ == "__main__":
    main()
