"""The reference simulator's speed against onnxruntime, on models of small and large layers.

Each model is built here with onnx.helper from seeded weights, compiled with
anac.api.compile_model (hardware mode calibrated on the benchmark input), and
timed in this process: onnxruntime on the original model, the simulator in
ideal mode and in hardware mode (one chip programmed with seed 0, read a day
later). Each time is the median CPU time of ``--runs`` rounds after one warm-up run,
the three run one after another in each round. Both
sides use one thread (run with OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1;
onnxruntime sessions get intra_op_num_threads=1). Then the cost of a
Monte-Carlo verify (10 chip instances x 4 times) against one run, and the
peak memory of the hardware-mode simulator on the largest model.

    python benchmarks/bench_sim.py [--runs 7] [--only NAME] [--account NAME]
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort
from anac.api import compile_model
from anac.backends import host, simulator
from anac.backends.simulator import Simulator
from anac.backends.verify import parse_times, verify_hardware
from anac.core.program import MVM, Program
from onnx import TensorProto, helper, numpy_helper

Inputs = dict[str, np.ndarray]


class _Builder:
    """Nodes and seeded initializers of one graph."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.n = 0

    def const(self, value: np.ndarray) -> str:
        self.n += 1
        name = f"c{self.n}"
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def w(self, *shape: int, fan_in: int | None = None) -> str:
        fan = fan_in or shape[0]
        return self.const((self.rng.standard_normal(shape) / np.sqrt(fan)).astype(np.float32))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, **attrs: object) -> str:
        self.n += 1
        outs = [f"t{self.n}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type.lower()}{self.n}", **attrs))
        return outs[0]

    def model(self, inputs: list[onnx.ValueInfoProto], out: str, shape: list[int]) -> onnx.ModelProto:
        outputs = [helper.make_tensor_value_info(out, TensorProto.FLOAT, shape)]
        g = helper.make_graph(self.nodes, "bench", inputs, outputs, self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 9
        return m

    def gemm(self, x: str, k: int, n: int) -> str:
        return self.op("Gemm", [x, self.w(k, n), self.const(np.zeros(n, np.float32))])

    def conv(self, x: str, cin: int, cout: int, kernel: tuple[int, ...], **attrs: object) -> str:
        fan = cin * int(np.prod(kernel))
        return self.op("Conv", [x, self.w(cout, cin, *kernel, fan_in=fan), self.const(np.zeros(cout, np.float32))],
                       **attrs)

    def bn(self, x: str, c: int) -> str:
        r = self.rng
        return self.op("BatchNormalization", [x, self.const((1 + 0.1 * r.standard_normal(c)).astype(np.float32)),
                                              self.const((0.1 * r.standard_normal(c)).astype(np.float32)),
                                              self.const((0.1 * r.standard_normal(c)).astype(np.float32)),
                                              self.const((1 + 0.1 * r.random(c)).astype(np.float32))])


def _fin(name: str, shape: list[int], elem: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def mlp(dims: tuple[int, ...], batch: int) -> tuple[onnx.ModelProto, Inputs]:
    b = _Builder(0)
    x = "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        x = b.gemm(x, k, n)
        if i < len(dims) - 2:
            x = b.op("Relu", [x])
    data = np.random.default_rng(1).standard_normal((batch, dims[0])).astype(np.float32)
    return b.model([_fin("x", [batch, dims[0]])], x, [batch, dims[-1]]), {"x": data}


def lenet(batch: int) -> tuple[onnx.ModelProto, Inputs]:
    b = _Builder(0)
    x = b.op("Relu", [b.conv("x", 1, 6, (5, 5))])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Relu", [b.conv(x, 6, 16, (5, 5))])
    x = b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
    x = b.op("Flatten", [x])
    x = b.op("Relu", [b.gemm(x, 400, 120)])
    x = b.op("Relu", [b.gemm(x, 120, 84)])
    x = b.gemm(x, 84, 10)
    data = np.random.default_rng(1).standard_normal((batch, 1, 32, 32)).astype(np.float32)
    return b.model([_fin("x", [batch, 1, 32, 32])], x, [batch, 10]), {"x": data}


def resnet_block(batch: int) -> tuple[onnx.ModelProto, Inputs]:
    b = _Builder(0)
    c = 16
    h = b.op("Relu", [b.bn(b.conv("x", c, c, (3, 3), pads=[1, 1, 1, 1]), c)])
    h = b.bn(b.conv(h, c, c, (3, 3), pads=[1, 1, 1, 1]), c)
    y = b.op("Relu", [b.op("Add", [h, "x"])])
    data = np.random.default_rng(1).standard_normal((batch, c, 32, 32)).astype(np.float32)
    return b.model([_fin("x", [batch, c, 32, 32])], y, [batch, c, 32, 32]), {"x": data}


def audio(batch: int) -> tuple[onnx.ModelProto, Inputs]:
    """1-D convs over 40 filterbank channels x 101 frames, global average pool, 12 keywords."""
    b = _Builder(0)
    x = b.op("Relu", [b.conv("x", 40, 64, (3,), pads=[1, 1])])
    x = b.op("Relu", [b.conv(x, 64, 64, (3,), strides=[2], pads=[1, 1])])
    x = b.op("Relu", [b.conv(x, 64, 96, (3,), strides=[2], pads=[1, 1])])
    x = b.op("Flatten", [b.op("GlobalAveragePool", [x])])
    x = b.gemm(x, 96, 12)
    data = np.random.default_rng(1).standard_normal((batch, 40, 101)).astype(np.float32)
    return b.model([_fin("x", [batch, 40, 101])], x, [batch, 12]), {"x": data}


def lstm_lm(batch: int, steps: int, vocab: int = 1000, emb: int = 128, hidden: int = 256) -> tuple[
        onnx.ModelProto, Inputs]:
    """Embedding, one LSTM layer, a projection to the vocabulary; tokens are (steps, batch)."""
    b = _Builder(0)
    e = b.op("Gather", [b.const((0.5 * b.rng.standard_normal((vocab, emb))).astype(np.float32)), "tokens"])
    w = b.w(1, 4 * hidden, emb, fan_in=emb)
    r = b.w(1, 4 * hidden, hidden, fan_in=hidden)
    bias = b.const(np.zeros((1, 8 * hidden), np.float32))
    y = b.op("LSTM", [e, w, r, bias], n_out=1, hidden_size=hidden)
    y = b.op("Squeeze", [y, b.const(np.array([1], np.int64))])
    logits = b.op("MatMul", [y, b.w(hidden, vocab)])
    data = np.random.default_rng(1).integers(0, vocab, (steps, batch)).astype(np.int64)
    return (b.model([_fin("tokens", [steps, batch], TensorProto.INT64)], logits, [steps, batch, vocab]),
            {"tokens": data})


def transformer(seq: int, layers: int = 2, d: int = 128, heads: int = 4, ffn: int = 512) -> tuple[
        onnx.ModelProto, Inputs]:
    """Post-norm encoder layers: multi-head self-attention and a ReLU feed-forward, LayerNorm after each."""
    b = _Builder(0)
    hd = d // heads
    x = "x"
    split = b.const(np.array([1, seq, heads, hd], np.int64))
    merge = b.const(np.array([1, seq, d], np.int64))
    for _ in range(layers):
        q, k, v = (b.op("Transpose", [b.op("Reshape", [b.op("MatMul", [x, b.w(d, d)]), split])], perm=[0, 2, 1, 3])
                   for _ in range(3))
        s = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]),
                         b.const(np.float32(1 / np.sqrt(hd)))])
        a = b.op("MatMul", [b.op("Softmax", [s], axis=-1), v])
        a = b.op("MatMul", [b.op("Reshape", [b.op("Transpose", [a], perm=[0, 2, 1, 3]), merge]), b.w(d, d)])
        x = b.op("LayerNormalization", [b.op("Add", [x, a]), b.const(np.ones(d, np.float32)),
                                        b.const(np.zeros(d, np.float32))], axis=-1)
        f = b.op("MatMul", [b.op("Relu", [b.op("MatMul", [x, b.w(d, ffn)])]), b.w(ffn, d)])
        x = b.op("LayerNormalization", [b.op("Add", [x, f]), b.const(np.ones(d, np.float32)),
                                        b.const(np.zeros(d, np.float32))], axis=-1)
    data = np.random.default_rng(1).standard_normal((1, seq, d)).astype(np.float32)
    return b.model([_fin("x", [1, seq, d])], x, [1, seq, d]), {"x": data}


MODELS: dict[str, Callable[[], tuple[onnx.ModelProto, Inputs]]] = {
    "MLP 64-256-128-10, batch 450": lambda: mlp((64, 256, 128, 10), 450),
    "LeNet-5 CNN, batch 1000": lambda: lenet(1000),
    "ResNet block+BN 32x32x16, batch 4": lambda: resnet_block(4),
    "ResNet block+BN 32x32x16, batch 64": lambda: resnet_block(64),
    "1-D conv audio, batch 32": lambda: audio(32),
    "LSTM LM, batch 16, 32 steps": lambda: lstm_lm(16, 32),
    "Transformer 2 layers, seq 64": lambda: transformer(64),
    "MLP 784-1024-10, batch 256": lambda: mlp((784, 1024, 10), 256),
}


def _interleaved(fs: list[Callable[[], object]], runs: int) -> list[float]:
    """Median CPU time of each of ``fs`` (all single-threaded), run one after another in each of ``runs``
    rounds after a warm-up. CPU time, not wall time: on a loaded machine a run longer than a scheduler
    time slice waits for the CPU several times, and wall-clock ratios would penalise the longer run."""
    times: list[list[float]] = [[] for _ in fs]
    for f in fs:
        f()  # warm-up
    for _ in range(runs):
        for f, ts in zip(fs, times, strict=True):
            t = time.process_time()
            f()
            ts.append(time.process_time() - t)
    return [statistics.median(ts) for ts in times]


def _ort(model: onnx.ModelProto) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1  # as the simulator's host stages
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def _compile(model: onnx.ModelProto, x: Inputs) -> Program:
    return compile_model(model, calibration_data=x, progress=lambda _m: None)


def bench(name: str, runs: int) -> str:
    model, x = MODELS[name]()
    try:
        prog = _compile(model, x)
    except Exception as e:  # noqa: BLE001 - a benchmark row reports the failure and the table goes on
        return f"{name:36s} compile failed: {type(e).__name__}: {str(e).splitlines()[0][:80]}"
    sess = _ort(model)
    ideal = Simulator(prog, "ideal")
    hard = Simulator(prog, "hardware")
    hard.program(0)
    hard.at(86400.0)
    t_ort, t_ideal, t_hard = _interleaved([lambda: sess.run(None, x), lambda: ideal.run(x), lambda: hard.run(x)], runs)
    return (f"{name:36s} {1e3 * t_ort:9.3f} {1e3 * t_ideal:9.3f} {1e3 * t_hard:9.3f} "
            f"{t_ideal / t_ort:7.2f}x {t_hard / t_ort:7.2f}x")


def monte_carlo(name: str, repeats: int = 10, times: str = "1s,1h,1d,1y") -> str:
    """verify in hardware mode with ``repeats`` chip instances read at each of ``times``, against one run
    (CPU time), and where the time of the Monte-Carlo run goes."""
    model, x = MODELS[name]()
    prog = _compile(model, x)
    at = parse_times(times)
    verify_hardware(prog, model, x, at[:1])  # warm-up
    t = time.process_time()
    verify_hardware(prog, model, x, at[:1])
    one = time.process_time() - t
    t = time.process_time()
    verify_hardware(prog, model, x, at, repeats=repeats)
    many = time.process_time() - t
    spent = {"program": 0.0, "read": 0.0, "run": 0.0}
    sim = Simulator(prog, "hardware")
    for seed in range(repeats):
        t = time.process_time()
        sim.program(seed)
        spent["program"] += time.process_time() - t
        for _, secs in at:
            t = time.process_time()
            sim.at(secs)
            spent["read"] += time.process_time() - t
            t = time.process_time()
            sim.run(x)
            spent["run"] += time.process_time() - t
    n = repeats * len(at)
    parts = ", ".join(f"{k} {v:.2f} s" for k, v in spent.items())
    return (f"Monte-Carlo on {name}: verify --mode hardware --repeats {repeats} --t {times} takes "
            f"{many:.2f} s CPU, one run (--repeats 1 --t 1s) {one:.2f} s: {many / one:.1f}x one run for {n} runs "
            f"({many / (n * one):.2f} of {n} separate runs); of it {repeats} programmings, {n} reads and "
            f"{n} runs: {parts}")


def memory(name: str) -> str:
    """Peak traced memory (numpy and Python) of a hardware-mode simulator: made, programmed, read, run."""
    model, x = MODELS[name]()
    prog = _compile(model, x)
    for s in prog.slices or []:
        prog.targets(s)  # the program's target conductances: part of the program, not of the simulator
    file_mb = model.ByteSize() / 2**20
    weights_mb = sum(m.weights.nbytes for m in (prog.matrices or {}).values()) / 2**20
    tracemalloc.start()
    sim = Simulator(prog, "hardware")
    for seed in range(2):
        sim.program(seed)
        for t in (1.0, 86400.0):
            sim.at(t)
            sim.run(x)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert sim.chip is not None
    read_mb, state_mb = sim.read_weight_bytes() / 2**20, sim.chip.state_bytes() / 2**20
    return (f"Memory on {name} (model file {file_mb:.1f} MB, float32 weights {weights_mb:.1f} MB): "
            f"read weights held {read_mb:.1f} MB, device state of one chip instance (conductances, drift "
            f"exponents: 2 x float32 per device) {state_mb:.1f} MB; traced peak {peak / 2**20:.1f} MB "
            f"({peak / 2**20 / file_mb:.1f}x the file) over 2 chip instances x 2 times")


def account(name: str, runs: int) -> str:
    """Where the hardware-mode time of one model goes: each ``_matmul_hardware`` call (keyed by MVM and rows
    of input) and each onnxruntime session call (keyed by what it runs) timed in CPU time, medians over
    ``runs`` runs after a warm-up (onnxruntime on the model run after each), and the rest (Python and numpy
    glue) against the median run."""
    model, x = MODELS[name]()
    prog = _compile(model, x)
    sim = Simulator(prog, "hardware")
    sim.program(0)
    sim.at(86400.0)
    spent: dict[str, float] = {}
    matmul, split, session = Simulator._matmul_hardware, Simulator._split_step, simulator.run_session

    def timed_matmul(self: Simulator, mvm: MVM, rows: np.ndarray, *args: object, **kw: object) -> np.ndarray:
        t = time.process_time()
        out = matmul(self, mvm, rows, *args, **kw)  # type: ignore[arg-type]
        key = f"_matmul_hardware {mvm.node}, {rows.shape[0]} rows"
        spent[key] = spent.get(key, 0.0) + time.process_time() - t
        return out

    def timed_split(self: Simulator, sp: simulator._SplitProduct, h: np.ndarray, t: int) -> np.ndarray:
        start = time.process_time()
        out = split(self, sp, h, t)
        key = f"_split_step {sp.mvm.node} (h's rows, x rows' sums added), {h.shape[0]} rows"
        spent[key] = spent.get(key, 0.0) + time.process_time() - start
        return out

    def timed_session(sess: ort.InferenceSession, feeds: Inputs, what: object, *args: object) -> list[np.ndarray]:
        t = time.process_time()
        out = session(sess, feeds, what, *args)  # type: ignore[arg-type]
        key = f"session: {what if isinstance(what, str) else what()}"  # type: ignore[operator]
        spent[key] = spent.get(key, 0.0) + time.process_time() - t
        return out

    Simulator._matmul_hardware, Simulator._split_step = timed_matmul, timed_split  # type: ignore[method-assign]
    simulator.run_session, host.run_session = timed_session, timed_session  # type: ignore[assignment]
    sess = _ort(model)
    per_run: list[dict[str, float]] = []
    totals, t_ort = [], []
    try:
        sim.run(x)
        sess.run(None, x)
        for _ in range(runs):
            spent.clear()
            t = time.process_time()
            sim.run(x)
            totals.append(time.process_time() - t)
            per_run.append(dict(spent))
            t = time.process_time()
            sess.run(None, x)
            t_ort.append(time.process_time() - t)
    finally:
        Simulator._matmul_hardware, Simulator._split_step = matmul, split  # type: ignore[method-assign]
        simulator.run_session, host.run_session = session, session
    total, ort_ms = statistics.median(totals), statistics.median(t_ort)
    parts = {k: statistics.median(r[k] for r in per_run) for k in per_run[0]}
    lines = [f"Hardware-mode time of {name}: {1e3 * total:.2f} ms a run (medians of {runs}; onnxruntime "
             f"{1e3 * ort_ms:.2f} ms, {total / ort_ms:.2f}x); of it"]
    lines += [f"  {1e3 * v:7.2f} ms  {k}" for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]
    lines.append(f"  {1e3 * (total - sum(parts.values())):7.2f} ms  the rest (Python and numpy glue)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--only", help="run only the models whose name contains this text")
    ap.add_argument("--account", metavar="TEXT", help="only where the hardware-mode time of the model whose name "
                    "contains this text goes (each conversion and session call timed)")
    args = ap.parse_args()
    if args.account:
        print(account(next(n for n in MODELS if args.account.lower() in n.lower()), args.runs))
        return
    print(f"CPU time, medians of {args.runs} interleaved rounds after a warm-up, one thread each; times in ms")
    print(f"{'model':36s} {'ORT':>9s} {'ideal':>9s} {'hardware':>9s} {'ideal/':>8s} {'hw/ORT':>8s}")
    for name in MODELS:
        if args.only is None or args.only.lower() in name.lower():
            print(bench(name, args.runs), flush=True)
    if args.only is None:
        print(monte_carlo("MLP 784-1024-10, batch 256"), flush=True)
        largest = max(MODELS, key=lambda n: MODELS[n]()[0].ByteSize())
        print(memory(largest), flush=True)


if __name__ == "__main__":
    main()
