"""Compile time of the ONNX suite's light VGG-19 (143.7 M weights) against the floor.

The floor is what any tool must do: ``onnx.load`` the file and touch every
weight once (here: materialise the ConstantOfShape weights and sum them).
Prints both times, their ratio, and the compiled program's figures; all in
one process, so the ratio is meaningful on a shared, noisy machine.

    python benchmarks/bench_compile_vgg19.py [--model light_resnet50] [--save]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from anac.api import compile_model, save_program, summary
from onnx import numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def floor_time(path: Path) -> tuple[float, int]:
    """Seconds to load the model and touch every weight once; number of weight values."""
    t = time.perf_counter()
    model = onnx.load(str(path))
    total, checksum = 0, 0.0
    shapes = {}
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        shapes[init.name] = arr
        if arr.dtype.kind == "f":
            total += arr.size
            checksum += float(arr.sum())
    for node in model.graph.node:  # the light models make their weights with ConstantOfShape
        if node.op_type == "ConstantOfShape":
            shape = tuple(int(d) for d in shapes[node.input[0]])
            value = numpy_helper.to_array(node.attribute[0].t).reshape(-1)[0]
            arr = np.full(shape, value, dtype=np.float32)
            total += arr.size
            checksum += float(arr.sum())
    return time.perf_counter() - t, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="light_vgg19", help="a light_* model of the ONNX suite")
    ap.add_argument("--save", action="store_true", help="also time writing the program directory")
    args = ap.parse_args()
    path = LIGHT / f"{args.model}.onnx"
    t_floor, weights = floor_time(path)
    t = time.perf_counter()
    prog = compile_model(path, progress=lambda _msg: None)
    t_compile = time.perf_counter() - t
    s = summary(prog)
    print(f"model: {args.model}  ({weights:,} weight values; {s['weights']:,} on crossbars)")
    print(f"floor (onnx.load + touch every weight): {t_floor:8.2f} s")
    print(f"anac compile:                           {t_compile:8.2f} s   ratio {t_compile / t_floor:6.2f}x")
    for name, secs in prog.timings.items():
        print(f"  {name:<16} {secs:8.2f} s")
    if args.save:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            save_program(prog, Path(d) / "model.anac")
            print(f"save program:                           {time.perf_counter() - t:8.2f} s")
    print(f"tiles {s['tiles']}, chips {s['chips']}, slices {s['slices']}, PCM devices {s['pcm_devices']:,}")
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")


if __name__ == "__main__":
    main()
