"""Shared by bench_rnnt.py and bench_compile_vgg19.py: the floor, a compile in a child process (its own
time and peak memory), the program directory's size and how long it takes to load.

The child's peak is its own VmHWM, read at its exit. Every figure is printed as a ratio against a
baseline measured in the same run: the floor (onnx.load plus one numpy pass over every weight, in this
process) for compile time, the model file for peak memory and program size, onnx.load for loading the
program. Compile time is given three ways, each against the floor measured the same way: the command
in a child process against the floor in this process (the issue's measure, which charges the compile
with the interpreter's start and its imports but not the floor); the same command against the floor
run as a child process of its own (interpreter start, ``import onnx, numpy``, then the floor); and the
same command run in this process (``anac.cli.main``, imports already loaded) against the in-process
floor: the compile's own work.

anac's bytecode is compiled first (``compileall``, as ``pip install`` does): with PYTHONDONTWRITEBYTECODE
set, as in some development shells, every child would otherwise compile anac's sources anew.
"""

from __future__ import annotations

import compileall
import contextlib
import importlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

# The child reports its own peak (VmHWM of its address space) at exit: wait4's ru_maxrss would also count
# the parent's resident set that the fork copied, which the kernel carries across exec.
_CHILD = """
import atexit, os
def _peak():
    kib = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
    open(os.environ["ANAC_BENCH_PEAK"], "w").write(kib)
atexit.register(_peak)
from anac.cli import main
main()
"""
CLI = [sys.executable, "-c", _CHILD]
_FLOOR_CHILD = """
import sys, numpy as np, onnx
from onnx import numpy_helper
m = onnx.load(sys.argv[1])
assert np.isfinite(sum(float(numpy_helper.to_array(i).sum(dtype=np.float64)) for i in m.graph.initializer))
"""


def compile_bytecode() -> None:
    """Compile anac's modules to bytecode, as pip install does (quietly; a no-op when already compiled)."""
    for package in ("anac", "anac.core", "anac.passes", "anac.backends"):
        compileall.compile_dir(Path(str(importlib.import_module(package).__file__)).parent, quiet=1)


def floor_child_s(model: Path) -> float:
    """Wall seconds of the floor run as a process of its own: interpreter start, imports, load, one pass."""
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", _FLOOR_CHILD, str(model)], check=True)
    return time.perf_counter() - t


def floor_s(model: Path) -> tuple[float, float]:
    """Seconds of onnx.load alone, and of onnx.load plus one numpy pass (a sum) over every weight."""
    t = time.perf_counter()
    m = onnx.load(str(model))
    loaded = time.perf_counter() - t
    total = sum(float(numpy_helper.to_array(i).sum(dtype=np.float64)) for i in m.graph.initializer)
    floor = time.perf_counter() - t
    del m
    assert np.isfinite(total)
    return loaded, floor


def run_child(args: Sequence[str]) -> tuple[float, int, dict[str, Any]]:
    """Wall seconds, peak resident bytes (of the child's own address space) and the JSON it prints."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r") as peak:
        t = time.perf_counter()
        res = subprocess.run([*CLI, *args], stdout=out, stderr=err, env={**os.environ, "ANAC_BENCH_PEAK": peak.name})
        seconds = time.perf_counter() - t
        out.seek(0)
        err.seek(0)
        if res.returncode != 0:
            sys.exit(f"anac {' '.join(args)} failed:\n{err.read().decode()}")
        return seconds, int(peak.read()) * 1024, json.loads(out.read())


def run_in_process(args: Sequence[str]) -> float:
    """Wall seconds of the same command run in this process (imports already loaded), output discarded."""
    from anac.cli import main

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        main(list(args), standalone_mode=False)
    return time.perf_counter() - t


def dir_bytes(path: Path) -> tuple[int, int]:
    """Bytes of weights.npz, and of everything else in the program directory."""
    files = [p for p in path.rglob("*") if p.is_file()]
    npz = sum(p.stat().st_size for p in files if p.name == "weights.npz")
    return npz, sum(p.stat().st_size for p in files) - npz


def report(model: Path, compile_args: Sequence[str], repeats: int) -> None:
    """Measure and print the table: floor, compile, peak memory, program size, load."""
    from anac.api import load_program

    compile_bytecode()
    size = model.stat().st_size
    with tempfile.TemporaryDirectory() as tmp:
        floors, child_floors, compiles, warm, peaks, loads, onnx_loads = [], [], [], [], [], [], []
        rep: dict[str, Any] = {}
        for i in range(repeats):
            out = Path(tmp) / f"model{i}.anac"  # a new directory each time: no earlier program to remove
            if i:
                shutil.rmtree(Path(tmp) / f"model{i - 1}.anac")
            floors.append(floor_s(model)[1])
            child_floors.append(floor_child_s(model))
            seconds, peak, rep = run_child(["compile", str(model), *compile_args, "-o", str(out), "--json", "-q"])
            compiles.append(seconds)
            peaks.append(peak)
            warm_out = Path(tmp) / f"warm{i}.anac"
            warm.append(run_in_process(["compile", str(model), *compile_args, "-o", str(warm_out), "--json", "-q"]))
            shutil.rmtree(warm_out)
            onnx_loads.append(floor_s(model)[0])  # right before the program's load: the same cache state
            t = time.perf_counter()
            load_program(out)
            loads.append(time.perf_counter() - t)
        npz, other = dir_bytes(out)
        timings = json.loads((out / "report.json").read_text())["timings_s"]
    floor, comp, peak = statistics.median(floors), statistics.median(compiles), statistics.median(peaks)
    child_floor, warm_s = statistics.median(child_floors), statistics.median(warm)
    load, oload = statistics.median(loads), statistics.median(onnx_loads)
    weight_bytes = 4 * rep["weights"]
    print(f"model: {model.name}, {size / 2**20:.1f} MiB file, {rep['weights']:,} weights on crossbars "
          f"(medians of {repeats})")
    print("| figure | value | baseline | ratio |")
    print("|---|---|---|---|")
    print(f"| compile `anac compile {' '.join(compile_args)}` | {comp:.2f} s | floor {floor:.2f} s | "
          f"{comp / floor:.2f}x |")
    print(f"| the same compile against the floor run as a process of its own (start + import onnx + floor) | "
          f"{comp:.2f} s | floor in a child {child_floor:.2f} s | {comp / child_floor:.2f}x |")
    print(f"| the same command run in this process, imports loaded (the compile's own work) | {warm_s:.2f} s | "
          f"floor {floor:.2f} s | {warm_s / floor:.2f}x |")
    print(f"| peak resident memory of the compile | {peak / 2**20:.0f} MiB | file {size / 2**20:.0f} MiB | "
          f"{peak / size:.2f}x |")
    print(f"| weights.npz | {npz / 2**20:.1f} MiB | weight bytes {weight_bytes / 2**20:.1f} MiB | "
          f"{npz / weight_bytes:.3f}x |")
    print(f"| other files of the program | {other / 2**20:.2f} MiB | | |")
    print(f"| load_program | {load:.2f} s | onnx.load {oload:.2f} s | {load / oload:.2f}x |")
    print("pass timings of the last compile (s): " + ", ".join(f"{k} {v:.2f}" for k, v in timings.items()))
    print(f"result: {rep['tiles']} tiles on {rep['chips']} chips, {rep['pcm_per_weight']} PCM per weight")
