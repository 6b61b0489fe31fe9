"""Weight replication: estimated throughput without and with ``--replicate auto``.

For a ResNet-18-shaped CNN (built here with seeded weights; torchvision is not
needed) on one and on two chips, a LeNet-shaped CNN on one chip and the
MLPerf-size RNN-T (models/make_rnnt.py --size full) on five chips, it compiles
each model three times, as ``anac compile --chips N``, ``... --replicate
auto`` (spare tiles to copies, encodings chosen for accuracy first) and
``... --objective throughput`` (encodings and copies chosen for speed first)
do, and prints the estimated steady-state throughput
(anac.core.estimates.performance), the gains, the tiles used, PCM per
weight and the stage that bounds each, under the default IBM spec and under
the paper's timing assumptions. For the RNN-T it also prints the real-time factor (16
encoder steps of 30 ms = 0.48 s of audio per inference) under the default
spec and under the paper's own timing assumptions (PAPER_TIMING below).

    python benchmarks/bench_replicate.py [--rnnt PATH] [--skip-rnnt]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
from anac.api import compile_model
from anac.core.estimates import performance
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.program import Program
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
RNNT_SHAPES = {"features": [16, 1, 240], "tokens": [4, 1]}
AUDIO_S = 16 * 0.030  # audio per RNN-T inference: 16 encoder steps of 30 ms
PAPER_REAL_TIME = 4 * 3600 + 20 * 60  # 4 h 20 min of audio ...
PAPER_SECONDS = 1.29  # ... in 1.29 s on five chips


def paper_timing(hw: HardwareSpec) -> HardwareSpec:
    """The paper's assumptions for its 1.29 s: the 300 ns step per MVM; chip I/O at the landing pads' rate
    (6 ILP/OLP pairs x 512 8-bit words per 300 ns step = 10.24 bytes/ns, one step of latency); the off-chip
    digital work (LSTM gates, pre-processing) not counted; utterances batched, so the pipeline is full."""
    step = 300.0
    pads = hw.io_pads_per_chip * hw.tile_rows  # words per step through a chip's landing pads
    return replace(hw, mvm_time_ns=step, host_stage_ns=0.0, host_ns_per_element=0.0,
                   links=replace(hw.links, bandwidth_bytes_per_ns=pads / step, latency_ns=step))


class _Net:
    """A small ONNX graph builder: conv (+ReLU), add, pools, gemm; seeded He-scaled weights."""

    def __init__(self, seed: int = 0) -> None:
        self.rng, self.nodes, self.inits, self.n = np.random.default_rng(seed), [], [], 0

    def _name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    def conv(self, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
        name = self._name("conv")
        w = (self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}.w"),
                       numpy_helper.from_array(np.zeros(cout, np.float32), f"{name}.b")]
        self.nodes.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name,
                                           kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        return self.relu(f"{name}.y") if relu else f"{name}.y"

    def relu(self, x: str) -> str:
        name = self._name("relu")
        self.nodes.append(helper.make_node("Relu", [x], [f"{name}.y"], name=name))
        return f"{name}.y"

    def add(self, a: str, b: str) -> str:
        name = self._name("add")
        self.nodes.append(helper.make_node("Add", [a, b], [f"{name}.y"], name=name))
        return f"{name}.y"

    def pool(self, x: str, op: str, k: int = 2, stride: int = 2, pad: int = 0) -> str:
        name = self._name("pool")
        self.nodes.append(helper.make_node(op, [x], [f"{name}.y"], name=name, kernel_shape=[k, k],
                                           strides=[stride, stride], pads=[pad] * 4))
        return f"{name}.y"

    def gap_flatten(self, x: str) -> str:
        name = self._name("gap")
        self.nodes += [helper.make_node("GlobalAveragePool", [x], [f"{name}.p"], name=name),
                       helper.make_node("Flatten", [f"{name}.p"], [f"{name}.y"], name=f"{name}.flat")]
        return f"{name}.y"

    def flatten(self, x: str) -> str:
        name = self._name("flat")
        self.nodes.append(helper.make_node("Flatten", [x], [f"{name}.y"], name=name))
        return f"{name}.y"

    def fc(self, x: str, k: int, n: int, relu: bool = False) -> str:
        name = self._name("fc")
        w = (self.rng.standard_normal((k, n)) * np.sqrt(2.0 / k)).astype(np.float32)
        self.inits += [numpy_helper.from_array(w, f"{name}.w"),
                       numpy_helper.from_array(np.zeros(n, np.float32), f"{name}.b")]
        self.nodes.append(helper.make_node("Gemm", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name))
        return self.relu(f"{name}.y") if relu else f"{name}.y"

    def model(self, name: str, x: str, shape: list[int], y: str, classes: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info(y, TensorProto.FLOAT, [shape[0], classes])],
                                  self.inits)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def resnet18(size: int = 224, classes: int = 1000) -> onnx.ModelProto:
    """ResNet-18's shape: 7x7/2 stem and 3x3/2 max pool, four stages of two basic blocks (64..512 channels,
    1x1/2 projection shortcuts), global average pool, FC; batch norm folded into the convs (11.7 M weights)."""
    net = _Net()
    x = net.pool(net.conv("image", 3, 64, 7, 2), "MaxPool", 3, 2, 1)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512)):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            y = net.conv(net.conv(x, cin, cout, 3, stride), cout, cout, 3, relu=False)
            short = net.conv(x, cin, cout, 1, stride, relu=False) if stride != 1 or cin != cout else x
            x, cin = net.relu(net.add(y, short)), cout
    return net.model("resnet18_shaped", "image", [1, 3, size, size], net.fc(net.gap_flatten(x), 512, classes), classes)


def lenet() -> onnx.ModelProto:
    """LeNet-5's shape on 28x28: conv 5x5 6, pool, conv 5x5 16, pool, FC 120, 84, 10."""
    net = _Net()
    x = net.pool(net.conv("image", 1, 6, 5), "MaxPool")
    x = net.pool(net.conv(x, 6, 16, 5), "MaxPool")
    x = net.fc(net.fc(net.flatten(x), 16 * 7 * 7, 120, relu=True), 120, 84, relu=True)
    return net.model("lenet_shaped", "image", [1, 1, 28, 28], net.fc(x, 84, 10), 10)


def compile_three(model: onnx.ModelProto | Path, chips: int, **kwargs: object) -> list[Program]:
    """The model compiled as ``--chips N``, ``--chips N --replicate auto`` and ``--chips N --objective
    throughput``."""
    extra = ({}, {"replicate": "auto"}, {"objective": "throughput"})
    return [compile_model(model, options={"chips": chips, **e}, **kwargs) for e in extra]  # type: ignore[arg-type]


def ablation(prog: Program, spec: HardwareSpec) -> list[str]:
    """Which of the paper's assumptions makes the difference: each alone on the same placement."""
    paper, saved, lines = paper_timing(spec), prog.hardware, []
    for what, hw in (("links at the landing pads' rate only", replace(spec, links=paper.links)),
                     ("host work not counted only", replace(spec, host_stage_ns=0.0, host_ns_per_element=0.0))):
        prog.hardware = hw
        perf = performance(prog)
        lines.append(f"    {what:<38} {perf['throughput_per_s'] * AUDIO_S:>9,.0f}x  bound by {perf['bottleneck']}")
    prog.hardware = saved
    return lines


def row(name: str, chips: int, progs: list[Program]) -> None:
    perf = [performance(p) for p in progs]
    cells = "".join(f" {p['throughput_per_s']:>10,.0f} {len(g.tiles_used()):>4} {g.assignment['pcm_per_weight']:>4.2f}"
                    for p, g in zip(perf, progs, strict=True))
    print(f"{name:<24} {chips:>2} {cells} {perf[1]['throughput_per_s'] / perf[0]['throughput_per_s']:>6.2f}x "
          f"{perf[2]['throughput_per_s'] / perf[0]['throughput_per_s']:>6.2f}x  {_short(perf[0]['bottleneck'])} | "
          f"{_short(perf[1]['bottleneck'])} | {_short(perf[2]['bottleneck'])}")


def _short(stage: str) -> str:
    return stage if len(stage) <= 28 else stage[:25] + "..."


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rnnt", type=Path, default=None, help="rnnt.onnx (default: generated in a temp dir)")
    ap.add_argument("--skip-rnnt", action="store_true")
    args = ap.parse_args()
    print("inferences/s (inf/s), tiles used and PCM per weight: without copies | --replicate auto | "
          "--objective throughput; gains against without")
    head = "".join(f" {'inf/s':>10} {'tile':>4} {'pcm':>4}" for _ in range(3))
    spec = load_hardware()
    paper = paper_timing(spec)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.rnnt
        if path is None and not args.skip_rnnt:
            subprocess.run([sys.executable, str(ROOT / "models" / "make_rnnt.py"), "--size", "full", "--out", tmp],
                           check=True, capture_output=True)
            path = Path(tmp) / "rnnt.onnx"
        rnnt: dict[str, list[Program]] = {}
        for title, hw in (("default IBM spec", spec), ("paper timing (see paper_timing)", paper)):
            print(f"\n{title}\n{'model':<24} {'ch':>2} {head} {'auto':>7} {'thrpt':>7}  bounding stage "
                  f"(without | auto | throughput)")
            for name, model, chips in (("ResNet-18 224x224", resnet18(), 1), ("ResNet-18 224x224", resnet18(), 2),
                                       ("LeNet-5 28x28", lenet(), 1)):
                row(name, chips, compile_three(model, chips, hardware=hw))
            if path is not None:
                rnnt[title] = compile_three(path, 5, input_shapes=RNNT_SHAPES, hardware=hw)
                row("RNN-T (MLPerf size)", 5, rnnt[title])
    if not rnnt:
        return
    target = PAPER_REAL_TIME / PAPER_SECONDS
    print(f"\nRNN-T real-time factor (0.48 s of audio per inference; paper: {PAPER_REAL_TIME / 3600:.2f} h in "
          f"{PAPER_SECONDS} s = {target:,.0f}x)")
    for title, progs in rnnt.items():
        for what, prog in zip(("without copies", "--replicate auto", "--objective throughput"), progs, strict=True):
            perf = performance(prog)
            rtf = perf["throughput_per_s"] * AUDIO_S
            print(f"  {title.split(' (')[0]:<16} {what:<24} {rtf:>9,.0f}x ({target / rtf:5.2f}x from the paper)  "
                  f"bound by {perf['bottleneck']}")
    print("  each paper assumption alone, on the default spec's placement without copies:")
    print("\n".join(ablation(next(iter(rnnt.values()))[0], spec)))


if __name__ == "__main__":
    main()
