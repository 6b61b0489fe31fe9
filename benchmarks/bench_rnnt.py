"""The full-size RNN-T (45 M weights) on five chips: compile time against the floor, peak memory
against the file size.

The floor is onnx.load plus one pass over the weights (numpy_helper.to_array and a sum). The
compile (``anac compile rnnt.onnx --chips 5``: frontend, sensitivity measurement, budgeted
encoding choice, packing, CP-SAT placement and link schedule, writing the program) runs in a
child process so its peak resident memory is its own.

    python benchmarks/bench_rnnt.py [--model rnnt.onnx]   # default: generates it in a temp dir
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import onnx
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["--input-shape", "features=16,1,240", "--input-shape", "tokens=4,1"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            subprocess.run([sys.executable, str(ROOT / "models" / "make_rnnt.py"), "--size", "full", "--out", tmp],
                           check=True, capture_output=True)
            model = Path(tmp) / "rnnt.onnx"
        t = time.perf_counter()
        m = onnx.load(str(model))
        total = sum(float(numpy_helper.to_array(i).sum()) for i in m.graph.initializer)
        floor = time.perf_counter() - t
        del m
        out = Path(tmp) / "rnnt.anac"
        t = time.perf_counter()
        res = subprocess.run(["anac", "compile", str(model), *SHAPES, "--chips", "5", "-o", str(out), "--json", "-q"],
                             capture_output=True, text=True)
        compile_s = time.perf_counter() - t
        if res.returncode != 0:
            sys.exit(res.stderr)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        rep = json.loads(res.stdout)
        size = model.stat().st_size
        print(f"model: {model.name}, {size / 2**20:.1f} MiB (weights checksum {total:.3f})")
        print(f"floor (onnx.load + one pass over the weights): {floor:7.2f} s")
        print(f"anac compile --chips 5:                        {compile_s:7.2f} s   ratio {compile_s / floor:6.1f}x")
        print(f"peak resident memory of the compile:          {peak / 2**30:7.2f} GiB  "
              f"ratio {peak / size:5.1f}x the file")
        print(f"result: {rep['tiles']} tiles on {rep['chips']} chips, {rep['pcm_per_weight']} PCM per weight, "
              f"{rep['weights']:,} weights on crossbars")


if __name__ == "__main__":
    main()
