"""The graph IR: anac's own dataclasses, with networkx as a read-only view.

The frontend fills a ``Graph`` from ONNX; passes read it and write what they
compute into the ``Program`` beside it. Nodes keep ONNX op types and
attributes so that host regions can be written back out as ONNX subgraphs
without loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import onnx

Dim = int | str | None


@dataclass
class TensorInfo:
    """Name, element type and shape of a tensor (dims: int, symbol, or None)."""

    name: str
    elem_type: int  # onnx.TensorProto data type
    shape: tuple[Dim, ...] | None
    # The ONNX type of a non-tensor value (a sequence or map, e.g. a ZipMap output).
    raw_type: onnx.TypeProto | None = field(default=None, repr=False, compare=False)

    @property
    def dtype(self) -> np.dtype:
        return onnx.helper.tensor_dtype_to_np_dtype(self.elem_type)

    @property
    def is_static(self) -> bool:
        return self.shape is not None and all(isinstance(d, int) for d in self.shape)

    def to_onnx(self) -> onnx.ValueInfoProto:
        if self.raw_type is not None:
            return onnx.helper.make_value_info(self.name, self.raw_type)
        shape = None if self.shape is None else [d if d is not None else "" for d in self.shape]
        return onnx.helper.make_tensor_value_info(self.name, self.elem_type, shape)

    def to_json(self) -> dict[str, Any]:
        dtype = str(self.dtype) if self.elem_type else "non-tensor"
        return {"name": self.name, "dtype": dtype, "elem_type": self.elem_type,
                "shape": None if self.shape is None else list(self.shape)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TensorInfo:
        shape = None if d["shape"] is None else tuple(d["shape"])
        return cls(d["name"], int(d["elem_type"]), shape)


@dataclass
class Node:
    """One ONNX operation; ``name`` is unique and every error message cites it."""

    name: str
    op_type: str
    inputs: list[str]  # order matters: MatMul(a, b) != MatMul(b, a); "" = absent optional
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""
    # The original attribute protos, so host regions are written back losslessly.
    attr_protos: tuple[onnx.AttributeProto, ...] = field(default=(), repr=False)

    @property
    def label(self) -> str:
        """``name (op)`` as used in messages."""
        op = self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}.{self.op_type}"
        return f"'{self.name}' ({op})"

    def to_onnx(self) -> onnx.NodeProto:
        proto = onnx.helper.make_node(self.op_type, self.inputs, self.outputs,
                                      name=self.name, domain=self.domain or None)
        proto.attribute.extend(self.attr_protos)
        return proto


@dataclass
class Graph:
    """A model: nodes in topological order, graph inputs/outputs, constants."""

    name: str
    nodes: list[Node]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    constants: dict[str, np.ndarray]
    value_info: dict[str, TensorInfo]
    opset: dict[str, int]
    ir_version: int
    functions: tuple[onnx.FunctionProto, ...] = ()
    digest: str | None = None  # anac.core.digest of the model it was imported from (None without weights)

    def producers(self) -> dict[str, Node]:
        """Map each tensor name to the node that produces it."""
        return {out: n for n in self.nodes for out in n.outputs if out}

    def consumers(self) -> dict[str, list[Node]]:
        """Map each tensor name to the nodes that read it (subgraph reads included)."""
        users: dict[str, list[Node]] = {}
        for n in self.nodes:
            for name in dict.fromkeys(node_reads(n)):
                users.setdefault(name, []).append(n)
        return users

    def info(self, name: str) -> TensorInfo | None:
        """Type and shape of a tensor, from inputs, outputs, constants or inference."""
        if name in self.constants:
            arr = self.constants[name]
            return TensorInfo(name, onnx.helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)
        for t in self.inputs:
            if t.name == name:
                return t
        if name in self.value_info:
            return self.value_info[name]
        for t in self.outputs:
            if t.name == name:
                return t
        return None

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def to_nx(self) -> nx.DiGraph:
        """A read-only networkx view: node names as vertices, tensors on the edges."""
        g = nx.DiGraph()
        prod = self.producers()
        for n in self.nodes:
            g.add_node(n.name, op_type=n.op_type)
            for t in node_reads(n):
                if t in prod:
                    g.add_edge(prod[t].name, n.name, tensor=t)
        return nx.freeze(g)

    @property
    def weight_count(self) -> int:
        return int(sum(a.size for a in self.constants.values()))


def node_reads(node: Node) -> list[str]:
    """Tensor names a node reads: its inputs plus outer-scope names its subgraphs use."""
    reads = [t for t in node.inputs if t]
    for a in node.attr_protos:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            reads.extend(_outer_scope_reads(g))
    return reads


def _outer_scope_reads(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads that it does not define itself (If/Loop/Scan bodies)."""
    defined = {i.name for i in graph.input} | {i.name for i in graph.initializer}
    reads: list[str] = []
    for n in graph.node:
        for t in n.input:
            if t and t not in defined:
                reads.append(t)
        for a in n.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                reads.extend(t for t in _outer_scope_reads(g) if t not in defined)
        defined.update(n.output)
    return list(dict.fromkeys(reads))
