"""Make a decoder-only language model with the shapes of a 7-billion-parameter LLaMA, weights as empty external data.

Usage::

    python models/make_decoder.py --out DIR                 # DIR/decoder7b.onnx + a 27 GB sparse .data file
    python models/make_decoder.py --out DIR --layers 2      # two layers, the same widths

The graph is what an exporter writes for one decoder step without a KV cache:
``input_ids`` [batch, sequence] int64 -> embedding Gather [32000, 4096] ->
32 x (RMSNorm, q/k/v projections 4096 x 4096, 32 heads of 128, softmax
attention, o projection, residual; RMSNorm, gate and up 4096 x 11008, SiLU,
down 11008 x 4096, residual) -> RMSNorm -> lm_head 4096 x 32000 -> ``logits``.
Rotary position embeddings are left out: they add elementwise host ops and no
weights. Every float tensor larger than 1024 bytes is external data in
``NAME.onnx.data`` (as onnx.save writes a model over 2 GB); that file is made
sparse with truncate, so it takes seconds and no disk: the model is for
``anac plan``, which reads the headers only. Its 6,738,415,616 parameters match
LLaMA-7B's count.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

LLAMA_7B = {"layers": 32, "width": 4096, "mlp": 11008, "vocab": 32000, "heads": 32}
_EXTERNAL_BYTES = 1024  # onnx.save's default size_threshold for external data


class _Graph:
    def __init__(self, data_name: str) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.data_name, self.offset = data_name, 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(value, name))
        return name

    def weight(self, name: str, shape: tuple[int, ...]) -> str:
        """A float32 initializer of ``shape`` kept in the external data file (no bytes are written)."""
        nbytes = int(np.prod(shape)) * 4
        if nbytes <= _EXTERNAL_BYTES:
            return self.const(name, np.ones(shape, np.float32))
        t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(shape),
                        data_location=TensorProto.EXTERNAL)
        for k, v in (("location", self.data_name), ("offset", str(self.offset)), ("length", str(nbytes))):
            t.external_data.add(key=k, value=v)
        self.offset += -(-nbytes // 4096) * 4096  # page-aligned, like onnx's writer with align
        self.inits.append(t)
        return name

    def node(self, op: str, ins: list[str], out: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    def rms_norm(self, name: str, x: str, width: int) -> str:
        sq = self.node("Pow", [x, self.const(f"{name}.two", np.array(2.0, np.float32))], f"{name}.sq")
        ms = self.node("ReduceMean", [sq], f"{name}.ms", axes=[-1], keepdims=1)
        eps = self.node("Add", [ms, self.const(f"{name}.eps", np.array(1e-6, np.float32))], f"{name}.eps_add")
        rms = self.node("Sqrt", [eps], f"{name}.rms")
        normed = self.node("Div", [x, rms], f"{name}.div")
        return self.node("Mul", [normed, self.weight(f"{name}.weight", (width,))], f"{name}.out")


def build(data_name: str, layers: int = 32, width: int = 4096, mlp: int = 11008, vocab: int = 32000,
          heads: int = 32) -> tuple[onnx.ModelProto, int]:
    """The decoder graph, its float weights pointing into ``data_name`` (a file that need not hold them), and
    the length that file must have."""
    g = _Graph(data_name)
    head = width // heads
    split = g.const("heads.shape", np.array([0, 0, heads, head], np.int64))
    merge = g.const("merge.shape", np.array([0, 0, width], np.int64))
    scale = g.const("attn.scale", np.array(1 / np.sqrt(head), np.float32))
    h = g.node("Gather", [g.weight("embed_tokens.weight", (vocab, width)), "input_ids"], "embed")
    for i in range(layers):
        p = f"layers.{i}"
        x = g.rms_norm(f"{p}.input_norm", h, width)
        q, k, v = (g.node("MatMul", [x, g.weight(f"{p}.attn.{n}.weight", (width, width))], f"{p}.attn.{n}")
                   for n in ("q_proj", "k_proj", "v_proj"))
        q = g.node("Transpose", [g.node("Reshape", [q, split], f"{p}.attn.q4")], f"{p}.attn.qt", perm=[0, 2, 1, 3])
        k = g.node("Transpose", [g.node("Reshape", [k, split], f"{p}.attn.k4")], f"{p}.attn.kt", perm=[0, 2, 3, 1])
        v = g.node("Transpose", [g.node("Reshape", [v, split], f"{p}.attn.v4")], f"{p}.attn.vt", perm=[0, 2, 1, 3])
        s = g.node("Mul", [g.node("MatMul", [q, k], f"{p}.attn.qk"), scale], f"{p}.attn.scores")
        ctx = g.node("MatMul", [g.node("Softmax", [s], f"{p}.attn.probs", axis=-1), v], f"{p}.attn.ctx")
        ctx = g.node("Reshape", [g.node("Transpose", [ctx], f"{p}.attn.ct", perm=[0, 2, 1, 3]), merge],
                     f"{p}.attn.merged")
        o = g.node("MatMul", [ctx, g.weight(f"{p}.attn.o_proj.weight", (width, width))], f"{p}.attn.o_proj")
        h = g.node("Add", [h, o], f"{p}.attn.residual")
        x = g.rms_norm(f"{p}.post_norm", h, width)
        gate = g.node("MatMul", [x, g.weight(f"{p}.mlp.gate_proj.weight", (width, mlp))], f"{p}.mlp.gate_proj")
        up = g.node("MatMul", [x, g.weight(f"{p}.mlp.up_proj.weight", (width, mlp))], f"{p}.mlp.up_proj")
        silu = g.node("Mul", [gate, g.node("Sigmoid", [gate], f"{p}.mlp.sigmoid")], f"{p}.mlp.silu")
        down = g.node("MatMul", [g.node("Mul", [silu, up], f"{p}.mlp.gated"),
                                 g.weight(f"{p}.mlp.down_proj.weight", (mlp, width))], f"{p}.mlp.down_proj")
        h = g.node("Add", [h, down], f"{p}.mlp.residual")
    x = g.rms_norm("norm", h, width)
    g.node("MatMul", [x, g.weight("lm_head.weight", (width, vocab))], "logits")
    graph = helper.make_graph(
        g.nodes, "decoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "sequence", vocab])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="anac-models")
    model.ir_version = 9
    return model, g.offset


def write(out: Path, name: str = "decoder7b", **size: int) -> Path:
    """Write ``out/NAME.onnx`` and its external data as a sparse file of the right length; return the model path."""
    path = Path(out) / f"{name}.onnx"
    data = path.with_name(path.name + ".data")
    model, length = build(data.name, **{**LLAMA_7B, **size})
    onnx.save(model, str(path))
    with open(data, "wb") as f:
        f.truncate(length)  # a hole: no bytes written, none read back by a plan
    return path


def parameters(model: onnx.ModelProto) -> int:
    """The number of parameters: elements of the float initializers that are not scalars."""
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == TensorProto.FLOAT and t.dims)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=LLAMA_7B["layers"])
    ap.add_argument("--name", default="decoder7b")
    args = ap.parse_args()
    path = write(args.out, args.name, layers=args.layers)
    model = onnx.load(str(path), load_external_data=False)
    print(f"{path}: {parameters(model):,} parameters, {path.stat().st_size / 2**10:.0f} KiB of graph, "
          f"{path.with_name(path.name + '.data').stat().st_size / 2**30:.1f} GiB of (sparse) external data")


if __name__ == "__main__":
    main()
