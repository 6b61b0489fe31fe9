"""Speed of the hardware-mode simulator against onnxruntime on the same model and batch.

A 784 -> 1024 -> 10 MLP (Gemm, ReLU, Gemm; seeded weights) at batch 256: the
time of one hardware-mode run of the compiled program (quantized inputs, one
matmul per slice with programmed-and-drifted PCM weights, quantized outputs,
digital partial sums) against one onnxruntime run of the original model.
Both are timed in this process, interleaved, in CPU time with one thread each
(run with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1; the onnxruntime session
gets intra_op_num_threads=1, as the simulator's), and the medians compared.

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_hw_sim.py [--batch 256] [--runs 50]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from anac.api import compile_model
from anac.backends.calibrate import calibrate
from anac.backends.simulator import Simulator
from onnx import TensorProto, helper, numpy_helper


def mlp(batch: int, dims: tuple[int, ...] = (784, 1024, 10)) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        inits += [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"], name=f"fc{i}"))
        x = f"h{i}"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, dims[0]])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [batch, dims[-1]])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    model = mlp(args.batch)
    x = {"x": np.random.default_rng(1).standard_normal((args.batch, 784)).astype(np.float32)}
    prog = compile_model(model, progress=lambda _m: None)
    calibrate(prog, {"x": x["x"]})
    sim = Simulator(prog, "hardware")
    sim.program(0)
    sim.at(86400.0)
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    sim.run(x), sess.run(None, x)  # warm up
    t_sim, t_ort = [], []
    for _ in range(args.runs):
        t = time.process_time()
        sim.run(x)
        t_sim.append(time.process_time() - t)
        t = time.process_time()
        sess.run(None, x)
        t_ort.append(time.process_time() - t)
    ms, mo = statistics.median(t_sim), statistics.median(t_ort)
    print(f"784 -> 1024 -> 10 MLP, batch {args.batch}, {len(prog.slices)} slices, median CPU time of {args.runs} runs")
    print(f"onnxruntime (original model):      {1e3 * mo:8.3f} ms")
    print(f"anac hardware-mode simulator:      {1e3 * ms:8.3f} ms   ratio {ms / mo:5.2f}x")


if __name__ == "__main__":
    main()
