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


def vit_b16(seed: int = 0, classes: int = 1000, image: int = 224, layers: int = 12) -> onnx.ModelProto:
    """ViT-B/16's shapes (patch 16, width 768, 12 heads, MLP 3072), as the torch exporter writes it: MatMul + Add
    per linear layer, LayerNormalization, Erf GELU; random weights; input [1, 3, H, W]."""
    rng = np.random.default_rng(seed)
    d, heads, mlp, patches = 768, 12, 3072, (image // 16) ** 2
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(kind: str, inputs: list[str], name: str, **attrs: object) -> str:
        nodes.append(helper.make_node(kind, inputs, [name], name=name, **attrs))
        return name

    def linear(x: str, k: int, n: int, name: str) -> str:
        w = const(f"{name}.w", (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32))
        return op("Add", [op("MatMul", [x, w], f"{name}.mm"), const(f"{name}.b", np.zeros(n, np.float32))], name)

    def norm(x: str, name: str) -> str:
        return op("LayerNormalization", [x, const(f"{name}.g", np.ones(d, np.float32)),
                                         const(f"{name}.b", np.zeros(d, np.float32))], name, axis=-1)

    w = const("patch.w", (rng.standard_normal((d, 3, 16, 16)) / np.sqrt(768)).astype(np.float32))
    x = op("Conv", ["x", w, const("patch.b", np.zeros(d, np.float32))], "patch", kernel_shape=[16, 16],
           strides=[16, 16])
    x = op("Transpose", [op("Reshape", [x, const("shape.tokens", np.array([1, d, patches]))], "flat")], "tokens",
           perm=[0, 2, 1])
    x = op("Concat", [const("cls", (0.02 * rng.standard_normal((1, 1, d))).astype(np.float32)), x], "with_cls", axis=1)
    x = op("Add", [x, const("pos", (0.02 * rng.standard_normal((1, patches + 1, d))).astype(np.float32))], "embed")
    split = const("shape.heads", np.array([1, patches + 1, heads, d // heads]))
    merge = const("shape.merge", np.array([1, patches + 1, d]))
    scale = const("scale", np.array(1 / np.sqrt(d // heads), np.float32))
    for i in range(layers):
        h = norm(x, f"l{i}.ln1")
        q, k, v = (op("Reshape", [linear(h, d, d, f"l{i}.{n}"), split], f"l{i}.{n}.heads") for n in "qkv")
        q = op("Transpose", [q], f"l{i}.qT", perm=[0, 2, 1, 3])
        k = op("Transpose", [k], f"l{i}.kT", perm=[0, 2, 3, 1])
        v = op("Transpose", [v], f"l{i}.vT", perm=[0, 2, 1, 3])
        att = op("Softmax", [op("Mul", [op("MatMul", [q, k], f"l{i}.qk"), scale], f"l{i}.scaled")], f"l{i}.att",
                 axis=-1)
        o = op("Transpose", [op("MatMul", [att, v], f"l{i}.av")], f"l{i}.oT", perm=[0, 2, 1, 3])
        x = op("Add", [x, linear(op("Reshape", [o, merge], f"l{i}.o"), d, d, f"l{i}.proj")], f"l{i}.res1")
        h = linear(norm(x, f"l{i}.ln2"), d, mlp, f"l{i}.fc1")
        gelu = op("Mul", [op("Mul", [h, op("Add", [op("Erf", [op("Div", [h, const(f"l{i}.sqrt2", np.array(
            np.sqrt(2), np.float32))], f"l{i}.div")], f"l{i}.erf"), const(f"l{i}.one", np.array(1, np.float32))],
            f"l{i}.erf1")], f"l{i}.gelu0"), const(f"l{i}.half", np.array(0.5, np.float32))], f"l{i}.gelu")
        x = op("Add", [x, linear(gelu, mlp, d, f"l{i}.fc2")], f"l{i}.res2")
    cls = op("Gather", [norm(x, "ln"), const("zero", np.array(0))], "cls_token", axis=1)
    op("Gemm", [cls, const("head.w", (rng.standard_normal((classes, d)) / np.sqrt(d)).astype(np.float32)),
                const("head.b", np.zeros(classes, np.float32))], "logits", transB=1)
    return _model(nodes, "x", [1, 3, image, image], "logits", [1, classes], inits, "vit_b16")
