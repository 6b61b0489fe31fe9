"""Top-1 accuracy on the simulated chip against time after programming: 2-PCM vs 4-PCM, with and
without global drift compensation, beside the float accuracy of onnxruntime.

Each cell is the mean +- standard deviation over ``--repeats`` programmed instances (seeds 0, 1, ...),
with the mean relative output error ||y - y_ref|| / ||y_ref|| after it. Prints a Markdown table.

    python benchmarks/accuracy_vs_time.py [--model mnist_mlp] [--repeats 20] [--times 1s,1h,1d,1y]

With ``--presets`` it prints instead one table over every hardware preset (each with its default
encoding and drift compensation) on the digits MLP and CNN, 5 instances by default:

    python benchmarks/accuracy_vs_time.py --presets [--repeats 5]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
from anac.api import compile_model, load_inputs, verify
from anac.core.hardware import PRESETS, load_hardware

MODELS = Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist_mlp", help="a models/NAME.onnx with NAME_test.npz and NAME_calib.npz "
                                                          "(the prefix before the first '_' names the data)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--times", default="1s,1h,1d,1y")
    ap.add_argument("--presets", action="store_true", help="every preset on digits_mlp and digits_cnn")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.presets:
        presets_table(args.times, args.repeats if args.repeats != 20 else 5)
        return
    data = args.model.split("_")[0]
    model = MODELS / f"{args.model}.onnx"
    test = load_inputs(MODELS / f"{data}_test.npz")
    calib = load_inputs(MODELS / f"{data}_calib.npz")
    shapes = {k: v.shape for k, v in test.items() if k != "labels"}
    labels = args.times.split(",")
    rows, ref_acc = [], None
    t0 = time.perf_counter()
    for enc in ("4-PCM", "2-PCM"):
        prog = compile_model(model, input_shapes=shapes, options={"encoding": enc}, calibration_data=calib,
                             progress=lambda _m: None)
        for comp in (True, False):
            rep = verify(model, program=prog, inputs=test, mode="hardware", times=args.times, repeats=args.repeats,
                         drift_compensation=comp)
            ref_acc = rep.reference_accuracy
            cells = []
            for t in rep.times:
                err = np.mean([o["rel_err"].mean for o in t.outputs.values() if o["rel_err"] is not None])
                cells.append(f"{100 * t.accuracy.mean:.2f} +- {100 * t.accuracy.std:.2f} ({err:.3f})")
            rows.append((f"{enc}, {'with' if comp else 'no'} drift compensation", cells))
    print(f"{args.model}: top-1 accuracy (%) on {len(test['labels'])} test samples, mean +- std over "
          f"{args.repeats} programmed instances (mean relative output error)\n")
    print("| | " + " | ".join(labels) + " |")
    print("|---|" + "---|" * len(labels))
    print("| float (onnxruntime) | " + " | ".join(f"{100 * ref_acc:.2f}" for _ in labels) + " |")
    for name, cells in rows:
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


def _cell(t) -> str:  # type: ignore[no-untyped-def]
    err = np.mean([o["rel_err"].mean for o in t.outputs.values() if o["rel_err"] is not None])
    return f"{100 * t.accuracy.mean:.2f} +- {100 * t.accuracy.std:.2f} ({err:.3f})"


def _batched_cnn(path: Path) -> onnx.ModelProto:
    """digits_cnn with a symbolic batch: dim 0 of input and output free, the flatten Reshape to (-1, 128)."""
    m = onnx.load(path)
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.shape.dim[0].dim_param = "N"
    for init in m.graph.initializer:
        if init.name == "val_4":
            init.CopyFrom(onnx.numpy_helper.from_array(np.array([-1, 128], np.int64), "val_4"))
    return m


def presets_table(times: str, repeats: int) -> None:
    """One row per (model, preset): accuracy at each time, mean +- std over ``repeats`` instances."""
    test = load_inputs(MODELS / "digits_test.npz")
    calib = load_inputs(MODELS / "digits_calib.npz")
    shapes = {k: v.shape for k, v in test.items() if k != "labels"}
    labels = times.split(",")
    t0 = time.perf_counter()
    print(f"digits: top-1 accuracy (%) on {len(test['labels'])} test samples, mean +- std over {repeats} "
          "programmed instances (mean relative output error), default encoding, drift compensation on\n")
    print("| model | preset | family | float | " + " | ".join(labels) + " |")
    print("|---|---|---|---|" + "---|" * len(labels))
    for name in ("digits_mlp", "digits_cnn"):
        model = MODELS / f"{name}.onnx"
        if name == "digits_cnn":  # the CNN reads the 8 x 8 images as (N, 1, 8, 8), exported for a batch of 1
            model = _batched_cnn(model)
            test = {k: v.reshape(-1, 1, 8, 8) if k == "input" else v for k, v in test.items()}
            calib = {k: v.reshape(-1, 1, 8, 8) if k == "input" else v for k, v in calib.items()}
            shapes = {k: v.shape for k, v in test.items() if k != "labels"}
        for preset in PRESETS:
            hw = load_hardware(preset=preset)
            prog = compile_model(model, hardware=hw, input_shapes=shapes, calibration_data=calib,
                                 progress=lambda _m: None)
            rep = verify(model, program=prog, inputs=test, mode="hardware", times=times, repeats=repeats)
            cells = " | ".join(_cell(t) for t in rep.times)
            print(f"| {name} | {preset} | {hw.device.family} | {100 * rep.reference_accuracy:.2f} | {cells} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
