"""Make an RNN-T-shaped ONNX model (MLPerf layer sizes), with seeded weights.

Usage::

    python models/make_rnnt.py --size small            # models/rnnt_small.onnx (committed; tests use it)
    python models/make_rnnt.py --size full --out DIR   # DIR/rnnt.onnx, ~181 MB, 45,276,416 weights: not committed

The full size follows the MLPerf RNN-T reference (HARDWARE.md): encoder LSTMs
240->1024, 1024->1024, time-stacking x2 (2048), 2048->1024, 1024->1024,
1024->1024; prediction network: embedding 28 x 320, LSTMs 320->320 x2;
joint: FC 1344 -> 512, ReLU, FC 512 -> 29. The small size keeps the same
graph with every width divided by 32 (embedding 28 x 10). Inputs: ``features``
[T, batch, 240] float32 and ``tokens`` [U, batch] int64; output ``logits``
[batch, T/2, U, 29], the joint network over every (frame, token) pair, as
used for training and for greedy decoding step by step. Weights are drawn
uniformly in +-1/sqrt(hidden) (PyTorch's LSTM initialisation) from
np.random.default_rng(0); biases are included (the 45,276,416 count of the
paper leaves them out).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FULL = {"features": 240, "enc": 1024, "stack": 2, "pred": 320, "vocab": 28, "joint": 512, "classes": 29}
SMALL = {"features": 240 // 32 + 1, "enc": 32, "stack": 2, "pred": 10, "vocab": 28, "joint": 16, "classes": 29}


class _Graph:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.nodes, self.inits = rng, [], []

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def uniform(self, name: str, shape: tuple[int, ...], bound: float) -> str:
        return self.const(name, self.rng.uniform(-bound, bound, shape).astype(np.float32))

    def node(self, op: str, ins: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def lstm(self, name: str, x: str, n_in: int, hidden: int) -> str:
        k = 1 / np.sqrt(hidden)
        w = self.uniform(f"{name}.W", (1, 4 * hidden, n_in), k)
        r = self.uniform(f"{name}.R", (1, 4 * hidden, hidden), k)
        b = self.uniform(f"{name}.B", (1, 8 * hidden), k)
        self.nodes.append(helper.make_node("LSTM", [x, w, r, b], [f"{name}.Y"], name=name, hidden_size=hidden))
        return self.node("Squeeze", [f"{name}.Y", self.const(f"{name}.axis", np.array([1], np.int64))], f"{name}.out")


def build(size: dict[str, int], seed: int = 0) -> onnx.ModelProto:
    g = _Graph(np.random.default_rng(seed))
    e, p = size["enc"], size["pred"]
    x = g.lstm("enc1", "features", size["features"], e)
    x = g.lstm("enc2", x, e, e)
    # Time stacking x2: [T, B, E] -> [B, T, E] -> [B, T/2, 2E] -> [T/2, B, 2E].
    x = g.node("Transpose", [x], "stack.t", perm=[1, 0, 2])
    x = g.node("Reshape", [x, g.const("stack.shape", np.array([0, -1, size["stack"] * e], np.int64))], "stack.r")
    x = g.node("Transpose", [x], "stack.out", perm=[1, 0, 2])
    x = g.lstm("enc3", x, size["stack"] * e, e)
    x = g.lstm("enc4", x, e, e)
    enc = g.lstm("enc5", x, e, e)
    emb = g.uniform("pred.embedding", (size["vocab"], p), 1.0)
    y = g.node("Gather", [emb, "tokens"], "pred.emb")
    y = g.lstm("pred1", y, p, p)
    pred = g.lstm("pred2", y, p, p)
    # Joint network over every (frame, token) pair: [B, T', U, E + P] -> 512 -> ReLU -> 29.
    enc4 = g.node("Unsqueeze", [g.node("Transpose", [enc], "joint.et", perm=[1, 0, 2]),
                                g.const("joint.ax2", np.array([2], np.int64))], "joint.e")
    pred4 = g.node("Unsqueeze", [g.node("Transpose", [pred], "joint.pt", perm=[1, 0, 2]),
                                 g.const("joint.ax1", np.array([1], np.int64))], "joint.p")
    shape = g.node("Max", [g.node("Shape", [enc4], "joint.se", end=3), g.node("Shape", [pred4], "joint.sp", end=3)],
                   "joint.shape")
    enc_shape = g.node("Concat", [shape, g.const("joint.ne", np.array([e], np.int64))], "joint.fe", axis=0)
    pred_shape = g.node("Concat", [shape, g.const("joint.np", np.array([p], np.int64))], "joint.fp", axis=0)
    cat = g.node("Concat", [g.node("Expand", [enc4, enc_shape], "joint.ee"),
                            g.node("Expand", [pred4, pred_shape], "joint.pe")], "joint.cat", axis=3)
    j = size["joint"]
    h = g.node("Add", [g.node("MatMul", [cat, g.uniform("joint.W1", (e + p, j), 1 / np.sqrt(e + p))], "joint.fc1"),
                       g.uniform("joint.b1", (j,), 1 / np.sqrt(e + p))], "joint.h")
    h = g.node("Relu", [h], "joint.relu")
    g.node("Add", [g.node("MatMul", [h, g.uniform("joint.W2", (j, size["classes"]), 1 / np.sqrt(j))], "joint.fc2"),
                   g.uniform("joint.b2", (size["classes"],), 1 / np.sqrt(j))], "logits")
    graph = helper.make_graph(
        g.nodes, "rnnt",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["T", "batch", size["features"]]),
         helper.make_tensor_value_info("tokens", TensorProto.INT64, ["U", "batch"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "T2", "U", size["classes"]])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="anac-models")
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["small", "full"], default="small")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = ap.parse_args()
    model = build(FULL if args.size == "full" else SMALL)
    path = args.out / ("rnnt.onnx" if args.size == "full" else "rnnt_small.onnx")
    onnx.save(model, str(path))
    weights = sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT)
    print(f"{path}: {weights:,} float values, {path.stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
