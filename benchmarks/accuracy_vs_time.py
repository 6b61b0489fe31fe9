"""Top-1 accuracy on the simulated chip against time after programming: 2-PCM vs 4-PCM, with and
without global drift compensation, beside the float accuracy of onnxruntime.

Each cell is the mean +- standard deviation over ``--repeats`` programmed instances (seeds 0, 1, ...),
with the mean relative output error ||y - y_ref|| / ||y_ref|| after it. Prints a Markdown table.

    python benchmarks/accuracy_vs_time.py [--model mnist_mlp] [--repeats 20] [--times 1s,1h,1d,1y]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
from anac.api import compile_model, load_inputs, verify

MODELS = Path(__file__).resolve().parent.parent / "models"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="mnist_mlp", help="a models/NAME.onnx with NAME_test.npz and NAME_calib.npz "
                                                          "(the prefix before the first '_' names the data)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--times", default="1s,1h,1d,1y")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
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


if __name__ == "__main__":
    main()
