"""Hardware-mode relative error of ResNet-18-, MobileNetV3-small- and EfficientNet-B0-shaped CNNs at 1 s.

The nets are built with torch.nn (benchmarks/hw_zoo.py: seeded random weights, BatchNorm
statistics measured on smooth random images, BN folded by the exporter); test and calibration
images are drawn from different seeds (calibration held apart), except in the first column.
Each cell is the mean relative error ||y - y_ref|| / ||y_ref|| of the logits over ``--seeds``
programmed chips, read 1 s after programming; the columns are an ablation:

- ``ideal-dev 16b test``: no programming/read noise, no drift, 16-bit I/O, calibrated on the test input;
- ``ideal-dev 16b``: the same, calibrated on held-apart images;
- ``ideal-dev 8b``: 8-bit I/O (the chip's);
- ``noise 8b``: PCM programming and read noise, no drift;
- ``PCM 8b``: the full PCM model with global drift compensation (the default; the headline);
- ``no comp``: the same without drift compensation;
- ``p99.99``: the same with the old calibration rule (99.99th percentile of |x|) instead of MSE;
- ``dw exact``: the same as ``PCM 8b`` with the weights of grouped (depthwise) convolutions read exactly,
  as aihwkit keeps those convolutions digital (their I/O is still converted);
- ``stem exact``: the same with the first layer's weights read exactly (the layer ``--attribute`` finds costs
  most on the mobile nets);
- ``PCM 16b``: ``PCM 8b`` with 16-bit I/O (what any better input or output conversion could win at most);
- ``PCM 8b tile``: ``PCM 8b`` compiled with ``scale="tile"`` (one conductance scale per slice) instead of the
  default ``"column"`` (each output column's weights mapped to the full conductance range, as aihwkit's
  figures were taken; every column converted in its own current);
- ``aihwkit-like``: the settings of the aihwkit figures as far as anac has them: one PCM pair per weight
  (2-PCM: aihwkit's single-pair conductance converter), per-column scale, grouped convolutions exact;
- ``averaged (auto)``: ``PCM 8b`` compiled with ``average="auto"`` (passes/average.py): the spare tiles of the
  chips the model occupies hold averaged copies of the layers most sensitive to device noise (sensitivity
  measured on the calibration images' layer inputs), each layer's output the mean of its copies';
- ``averaged 2 chips``: the same with a budget of 2 chips for the copies alone (``average.chips=2``:
  the encodings stay those chosen without a budget).

``--attribute N`` also prints, per model, the N layers whose device noise costs the most (``attribute``).

    python benchmarks/bench_mobile_hw.py [--size 96] [--batch 2] [--seeds 3] [--models resnet18,...] [--columns ...]
        [--attribute N]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from anac.api import compile_model
from anac.backends.calibrate import calibrate, tune_ranges
from anac.backends.simulator import Simulator
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.program import Program

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hw_zoo  # noqa: E402

# aihwkit 1.1.0 on the same three nets (issue 18): PCM-like noise, 25 uS, 8-bit I/O, per-channel weight
# scaling, global drift compensation, depthwise convolutions kept digital; relative error at 1 s.
AIHWKIT = {"resnet18": 0.30, "mobilenet_v3_small": 0.62, "efficientnet_b0": 0.46}
QUIET = {"prog_noise_poly": (0.0, 0.0, 0.0), "read_noise_q": (0.0, 0.65, 1e-3, 0.2),
         "drift_mu": (0.0, 0.0, 0.0, 0.0), "drift_sigma": (0.0, 0.0, 0.0, 0.0)}
NO_DRIFT = {"drift_mu": (0.0, 0.0, 0.0, 0.0), "drift_sigma": (0.0, 0.0, 0.0, 0.0)}
T = 1.0


def _hw(bits: int, device: dict[str, tuple[float, ...]] | None = None) -> HardwareSpec:
    from dataclasses import replace
    hw = load_hardware()
    return replace(hw, input_bits=bits, output_bits=bits, device=replace(hw.device, **(device or {})))


# column: (hardware, calibrate on the test input, drift compensation, calibration percentile, layers read
# exactly ("grouped": the grouped convolutions, "first": the first MVM), scale, encoding (None: the default),
# further compile options as (name, value) pairs (averaged copies and their budget))
COLUMNS: dict[str, tuple[Callable[[], HardwareSpec], bool, bool, float | None, str | None, str, str | None,
                         tuple[tuple[str, Any], ...]]] = {
    "ideal-dev 16b test": (lambda: _hw(16, QUIET), True, True, None, None, "column", None, ()),
    "ideal-dev 16b": (lambda: _hw(16, QUIET), False, True, None, None, "column", None, ()),
    "ideal-dev 8b": (lambda: _hw(8, QUIET), False, True, None, None, "column", None, ()),
    "noise 8b": (lambda: _hw(8, NO_DRIFT), False, True, None, None, "column", None, ()),
    "PCM 8b": (lambda: _hw(8), False, True, None, None, "column", None, ()),
    "no comp": (lambda: _hw(8), False, False, None, None, "column", None, ()),
    "p99.99": (lambda: _hw(8), False, True, 99.99, None, "column", None, ()),
    "dw exact": (lambda: _hw(8), False, True, None, "grouped", "column", None, ()),
    "stem exact": (lambda: _hw(8), False, True, None, "first", "column", None, ()),
    "PCM 16b": (lambda: _hw(16), False, True, None, None, "column", None, ()),
    "PCM 8b tile": (lambda: _hw(8), False, True, None, None, "tile", None, ()),
    "aihwkit-like": (lambda: _hw(8), False, True, None, "grouped", "column", "2-PCM", ()),
    "averaged (auto)": (lambda: _hw(8), False, True, None, None, "column", None, (("average", "auto"),)),
    "averaged 2 chips": (lambda: _hw(8), False, True, None, None, "column", None,
                         (("average", "auto"), ("average.chips", 2))),
    # ("tune", True): not a compile option; the ranges are tuned for the noisy chip after calibrating
    # (backends/calibrate.py tune_ranges, on the calibration images and a chip instance of its own)
    "PCM 8b tuned": (lambda: _hw(8), False, True, None, None, "column", None, (("tune", True),)),
    "averaged tuned": (lambda: _hw(8), False, True, None, None, "column", None,
                       (("average", "auto"), ("tune", True))),
}
HEADLINE = "PCM 8b"


def _exact(prog: Program, nodes: set[str]) -> dict[int, np.ndarray]:
    """The float weights of the slices of the MVMs ``nodes`` (read exactly instead of from the devices)."""
    return {s.id: prog.matrices[s.matrix].weights[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]].astype(np.float32)  # type: ignore[index]
            for s in prog.slices or [] if prog.matrices[s.matrix].node in nodes}  # type: ignore[index]


def rel_err(prog: Program, x: np.ndarray, ref: np.ndarray, seeds: int, comp: bool, exact_layers: str | None) -> float:
    sim = Simulator(prog, "hardware")
    mvms = list((prog.mvms or {}).values())
    # grouped: a matrix per group, or the groups packed block-diagonally
    nodes = {"grouped": {m.node for m in mvms if len(m.matrices) > 1 or m.params.get("block")},
             "first": {mvms[0].node}, None: set()}[exact_layers]
    exact = _exact(prog, nodes)
    errs = []
    for seed in range(seeds):
        chip = sim.program(seed)
        if exact:
            read = chip.read_at
            chip.read_at = lambda t, c=True, read=read: ((i, exact.get(i, w)) for i, w in read(t, c))  # type: ignore[method-assign]
        sim.at(T, comp)
        y = sim.run({"input": x})["logits"]
        errs.append(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)))
    return float(np.mean(errs))


def attribute(prog: Program, x: np.ndarray, ref: np.ndarray, seeds: int) -> tuple[float, list[tuple[float, str]]]:
    """Each layer's share of the device-noise error: the logits' error with that layer alone read from the
    devices (the others exact, I/O converted as everywhere), less in quadrature the error with none; the
    mean over ``seeds`` chips. Returns the error with none and (share, layer), largest first."""
    sim = Simulator(prog, "hardware")
    exact = _exact(prog, set(prog.mvms or {}))
    node_of = {s.id: prog.matrices[s.matrix].node for s in prog.slices or []}  # type: ignore[index]
    noisy: set[str] = set()
    base, shares = [], dict.fromkeys(prog.mvms or {}, 0.0)
    for seed in range(seeds):
        chip = sim.program(seed)
        reads = dict(chip.read_at(T))
        chip.read_at = lambda t, c=True, reads=reads: (  # type: ignore[method-assign]
            (i, w if node_of[i] in noisy else exact[i]) for i, w in reads.items())

        def err() -> float:
            sim.at(T)
            return float(np.linalg.norm(sim.run({"input": x})["logits"] - ref) / np.linalg.norm(ref))

        base.append(err())
        for node in shares:
            noisy.add(node)
            shares[node] += np.sqrt(max(err() ** 2 - base[-1] ** 2, 0.0)) / seeds
            noisy.clear()
    return float(np.mean(base)), sorted(((v, k) for k, v in shares.items()), reverse=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96, help="image side (pixels)")
    ap.add_argument("--batch", type=int, default=2, help="test images (one compiled batch)")
    ap.add_argument("--calib", type=int, default=16, help="held-apart calibration images")
    ap.add_argument("--seeds", type=int, default=3, help="programmed chips per cell")
    ap.add_argument("--models", default=",".join(hw_zoo.MODELS))
    ap.add_argument("--columns", default=",".join(COLUMNS), help="columns to measure (comma-separated)")
    ap.add_argument("--attribute", type=int, default=0, metavar="N",
                    help="also print the N layers with the largest share of the device-noise error (PCM 8b)")
    args = ap.parse_args()
    cols = args.columns.split(",")
    unknown = sorted(set(cols) - set(COLUMNS))
    if unknown:
        ap.error(f"unknown column(s) {', '.join(unknown)}; known: {', '.join(COLUMNS)}")
    logging.basicConfig(level=logging.ERROR)
    x = hw_zoo.images(args.batch, args.size, seed=123)
    calib = {"input": hw_zoo.images(args.calib, args.size, seed=999)}
    names = args.models.split(",")
    table: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path = hw_zoo.export(name, Path(tmp) / f"{name}.onnx", args.size)
            ref = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
            keys = {COLUMNS[c][5:] for c in cols} | ({("column", None, ())} if args.attribute else set())
            bases = {(scale, enc, more): compile_model(path, input_shapes={"input": x.shape},
                                                       progress=lambda _m: None,
                                                       options={"scale": scale, "encoding": enc,
                                                                **{k: v for k, v in more if k != "tune"}},
                                                       calibration_data=calib if more else None)
                     for scale, enc, more in sorted(keys, key=str)}
            row = table.setdefault(name, {})
            for col in cols:
                hw, on_test, comp, pct, exact_layers, scale, enc, more = COLUMNS[col]
                base = bases[(scale, enc, more)]
                prog = copy.copy(base)  # the same mapping; other device model, bits and ranges
                prog.hardware = hw()
                calibrate(prog, {"input": x} if on_test else calib, percentile=pct)
                if dict(more).get("tune"):
                    tune_ranges(prog, calib)
                row[col] = rel_err(prog, x, ref, args.seeds, comp, exact_layers)
            if args.attribute:
                prog = copy.copy(bases[("column", None, ())])
                prog.hardware = _hw(8)
                calibrate(prog, calib)
                none, shares = attribute(prog, x, ref, args.seeds)
                notes.append(f"{name}: exact weights {none:.3f}; each layer alone from the devices (share of the "
                             f"error in quadrature): " + ", ".join(f"{k} {v:.3f}" for v, k in shares[:args.attribute])
                             + f"; all {len(shares)} layers in quadrature {np.sqrt(sum(v * v for v, _ in shares)):.3f}")
            slices = {"/".join([k for k in key[:2] if k] + [f"{o}={v}" for o, v in key[2]]): len(b.slices or [])
                      for key, b in bases.items()}
            for key, b in bases.items():
                if b.averaging:
                    a = b.averaging
                    notes.append(f"{name} ({', '.join(f'{o}={v}' for o, v in key[2])}): averaged copies on "
                                 f"{a['tiles']} of {a['budget_tiles']} tiles "
                                 f"({a['tiles_without_copies']} without): "
                                 + ", ".join(f"{n} x{k}" for n, k in a["copies"].items())
                                 + f"; estimated error {a['estimated_error']['without']:.3f} -> "
                                 f"{a['estimated_error']['with']:.3f}")
            print(f"# {name}: slices {slices}, " + ", ".join(f"{c} {v:.3f}" for c, v in row.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"Relative error of the logits at t = {T:g} s, {args.batch} test images of {args.size} x {args.size}, "
          f"mean over {args.seeds} programmed chips; calibration on {args.calib} held-apart images\n")
    print("| model | " + " | ".join(cols) + " | x ResNet-18 | aihwkit 1.1.0 |")
    print("|---|" + "---|" * (len(cols) + 2))
    base_err = table.get("resnet18", {}).get(HEADLINE)
    for name, row in table.items():
        ratio = f"{row[HEADLINE] / base_err:.2f}" if base_err and HEADLINE in row else "-"
        print(f"| {name} | " + " | ".join(f"{row[c]:.3f}" for c in cols) + f" | {ratio} | {AIHWKIT[name]:.2f} |")
    for note in notes:
        print(f"\n{note}")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
