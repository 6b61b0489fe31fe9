"""Models for compile-at-scale tests and benchmarks/bench_compile_scale.py, built from code (seeded).

- ``sigmoid_chain``: N x (MatMul by a small constant, Sigmoid), a graph long in nodes and small in weights.
- ``resnet18``: the ResNet-18 architecture (torchvision's layer shapes, BatchNorm folded into
  convolution biases as exporters do in eval mode), random weights.
- ``matmul_stack``: a Program of large MatMuls with shapes only (zero-stride weights, no memory), ready for
  split_matrices, place and schedule_links: hundreds of chips without hundreds of GiB of weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.ir import Graph, TensorInfo
from anac.core.program import MVM, Matrix, Program, Stage
from onnx import TensorProto, helper, numpy_helper


def _model(nodes: list[onnx.NodeProto], x: str, shape_in: list[int], y: str, shape_out: list[int],
           inits: list[onnx.TensorProto], name: str) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape_in)],
                          [helper.make_tensor_value_info(y, TensorProto.FLOAT, shape_out)], inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def sigmoid_chain(layers: int = 1000, width: int = 8, seed: int = 0) -> onnx.ModelProto:
    """``layers`` x (MatMul by a ``width`` x ``width`` constant, then Sigmoid); input [1, width]."""
    rng = np.random.default_rng(seed)
    nodes, inits, x = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"], name=f"mm{i}"))
        nodes.append(helper.make_node("Sigmoid", [f"m{i}"], [f"s{i}"], name=f"sig{i}"))
        x = f"s{i}"
    return _model(nodes, "x", [1, width], x, [1, width], inits, "sigmoid_chain")


def resnet18(seed: int = 0, classes: int = 1000, image: int = 224) -> onnx.ModelProto:
    """ResNet-18 (BasicBlocks [2, 2, 2, 2], widths 64-512), BatchNorm folded into conv biases; input [1,3,H,W]."""
    rng = np.random.default_rng(seed)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, relu: bool) -> str:
        i = len(nodes)
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"conv{i}.w"),
                      numpy_helper.from_array((0.01 * rng.standard_normal(cout)).astype(np.float32), f"conv{i}.b")])
        nodes.append(helper.make_node("Conv", [x, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], name=f"conv{i}",
                                      kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4))
        if not relu:
            return f"conv{i}"
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"], name=f"relu{i}"))
        return f"relu{i}"

    x = conv("x", 3, 64, 7, 2, True)
    nodes.append(helper.make_node("MaxPool", [x], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                                  pads=[1, 1, 1, 1]))
    x, cin = "pool", 64
    for stage, cout in enumerate([64, 128, 256, 512]):
        for block in range(2):
            stride = 2 if stage > 0 and block == 0 else 1
            h = conv(conv(x, cin, cout, 3, stride, True), cout, cout, 3, 1, False)
            skip = conv(x, cin, cout, 1, stride, False) if (stride != 1 or cin != cout) else x
            out = f"block{stage}.{block}"
            nodes += [helper.make_node("Add", [h, skip], [out + ".sum"], name=out + ".add"),
                      helper.make_node("Relu", [out + ".sum"], [out], name=out + ".relu")]
            x, cin = out, cout
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"),
              helper.make_node("Flatten", ["gap"], ["flat"], name="flatten", axis=1),
              helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    inits += [numpy_helper.from_array((rng.standard_normal((classes, 512)) / np.sqrt(512)).astype(np.float32),
                                      "fc.w"),
              numpy_helper.from_array(np.zeros(classes, np.float32), "fc.b")]
    return _model(nodes, "x", [1, 3, image, image], "logits", [1, classes], inits, "resnet18")


def matmul_stack(dims: Sequence[int], batch: int = 1, hardware: HardwareSpec | None = None) -> Program:
    """A Program of MatMuls ``dims[0] x dims[1]``, ``dims[1] x dims[2]``, ... with shapes but no weight memory.

    What partition and assign_devices would produce for the chain (one analog stage per layer, the
    hardware's default encoding); the weights are zero-stride views, so a 200-chip stack takes no memory.
    """
    hw = hardware or load_hardware()
    zero = np.zeros((), np.float32)
    names = [f"h{i}" for i in range(len(dims))]
    stages, mvms, matrices = [], {}, {}
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        node = f"mm{i}"
        matrices[node] = Matrix(node, node, 0, np.broadcast_to(zero, (k, n)), encoding=hw.default_encoding)
        mvms[node] = MVM(node, "MatMul", "dense", names[i], names[i + 1], [node],
                         params={"traffic": {"in_elements": batch * k, "out_elements": batch * n, "vectors": batch}})
        stages.append(Stage(f"analog{i}", "analog", [names[i]], [names[i + 1]], [node]))
    x = TensorInfo(names[0], TensorProto.FLOAT, (batch, dims[0]))
    y = TensorInfo(names[-1], TensorProto.FLOAT, (batch, dims[-1]))
    graph = Graph("matmul_stack", [], [x], [y], {}, {}, {"": 17}, 8)
    prog = Program(graph, hw, [x], [y])
    prog.stages, prog.mvms, prog.matrices = stages, mvms, matrices
    prog.tensor_elements = {t: batch * d for t, d in zip(names, dims, strict=True)}
    prog.pruning = {}
    prog.assignment = {"status": "default encoding"}
    prog.produced.update({"partition", "pruning", "encodings"})
    return prog
