"""How much each net amplifies weight noise, with no analog simulation at all: onnxruntime on the model
with Gaussian noise added to every Conv/Gemm/MatMul weight.

The question it answers: is the mobile nets' larger hardware-mode error (bench_mobile_hw.py) something
anac's mapping or simulation adds, or the nets' own sensitivity to the device noise? Here there is no
crossbar, no conversion, no drift, no calibration: each weight tensor W gets noise of a stated size and
onnxruntime runs the model. Two noise shapes, both at a relative error ``sigma`` = ||noise|| / ||W|| per
layer (PCM's read weights at 1 s are 5-6 % off in every layer bench_mobile_hw.py checked):

- ``uniform``: i.i.d. noise, the same spread for every weight of a layer;
- ``column``: each output channel's noise proportional to that channel's largest |weight|, as
  conductance noise is when each column is mapped to the full conductance range (anac's default).

The nets are benchmarks/hw_zoo.py's (the same as bench_mobile_hw.py: seeded weights, BatchNorm folded by
the exporter, 96 px), the same test images; errors are ||y - y_exact|| / ||y_exact|| of the logits,
averaged over ``--seeds`` noise draws.

    python benchmarks/noise_sensitivity.py [--sigmas 0.02,0.055,0.1] [--seeds 5]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import hw_zoo
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

WEIGHTED = {"Conv": 1, "Gemm": 1, "MatMul": 1}  # op -> input index of the weight


def weight_names(model: onnx.ModelProto) -> list[str]:
    """Initializers used as the weight operand of a Conv, Gemm or MatMul."""
    inits = {i.name for i in model.graph.initializer}
    return [n.input[WEIGHTED[n.op_type]] for n in model.graph.node
            if n.op_type in WEIGHTED and len(n.input) > WEIGHTED[n.op_type] and n.input[WEIGHTED[n.op_type]] in inits]


def noisy(model: onnx.ModelProto, names: list[str], sigma: float, shape: str, rng: np.random.Generator,
          transposed: set[str]) -> onnx.ModelProto:
    """A copy of ``model`` with noise of relative size ``sigma`` on each named weight."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    by_name = {i.name: i for i in out.graph.initializer}
    for name in names:
        w = numpy_helper.to_array(by_name[name]).astype(np.float32)
        if shape == "uniform":
            noise = rng.standard_normal(w.shape).astype(np.float32)
        else:  # per output channel: Conv (out, ...) axis 0; Gemm/MatMul (in, out) axis 1 unless transposed
            axis = 0 if name in transposed or w.ndim != 2 else 1
            other = tuple(a for a in range(w.ndim) if a != axis)
            peak = np.abs(w).max(axis=other, keepdims=True)
            noise = (rng.standard_normal(w.shape) * peak).astype(np.float32)
        noise *= sigma * np.linalg.norm(w) / max(float(np.linalg.norm(noise)), 1e-30)
        by_name[name].CopyFrom(numpy_helper.from_array(w + noise, name))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--sigmas", default="0.02,0.055,0.1")
    ap.add_argument("--models", default=",".join(hw_zoo.MODELS))
    args = ap.parse_args()
    sigmas = [float(s) for s in args.sigmas.split(",")]
    x = hw_zoo.images(args.batch, args.size, seed=123)  # bench_mobile_hw.py's test images
    rows: dict[str, dict[tuple[str, float], float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path = hw_zoo.export(name, Path(tmp) / f"{name}.onnx", args.size)
            model = onnx.load(str(path))
            names = weight_names(model)
            transposed = {n.input[1] for n in model.graph.node if n.op_type == "Gemm"
                          and any(a.name == "transB" and a.i for a in n.attribute)}
            ref = ort.InferenceSession(model.SerializeToString()).run(None, {"input": x})[0]
            row = rows.setdefault(name, {})
            for shape in ("uniform", "column"):
                for sigma in sigmas:
                    errs = []
                    for seed in range(args.seeds):
                        m = noisy(model, names, sigma, shape, np.random.default_rng(seed), transposed)
                        y = ort.InferenceSession(m.SerializeToString()).run(None, {"input": x})[0]
                        errs.append(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)))
                    row[(shape, sigma)] = float(np.mean(errs))
    base = rows.get("resnet18")
    keys = [(s, g) for s in ("uniform", "column") for g in sigmas]
    print(f"relative logit error, onnxruntime with weight noise ({args.seeds} draws, {args.batch} images of "
          f"{args.size} px); in brackets: x ResNet-18")
    print("| model | " + " | ".join(f"{s} {g:g}" for s, g in keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, row in rows.items():
        cells = [f"{row[k]:.3f}" + (f" ({row[k] / base[k]:.2f}x)" if base and name != "resnet18" else "")
                 for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
