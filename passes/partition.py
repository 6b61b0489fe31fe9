"""partition: decide what runs on crossbars and what on the host.

Every node that lowers to an MVM (compiler/lowering.py) is analog; the rest
run on the host. Nodes are levelled by their analog depth (the most analog
ops on any path from the inputs); host nodes of one level form one host
stage (an ONNX subgraph), analog nodes of one level one analog stage, and
the stages alternate host, analog, host, ... Two host nodes at the same level
never have an analog op between them, so every host stage is convex and
maximal along the critical path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import onnx

from compiler.errors import ShapeError
from compiler.ir import Graph, Node, node_reads
from compiler.lowering import lower
from compiler.program import MVM, Matrix, Program, Stage

# Host stage models never go below this IR version: initializers need not be graph inputs from IR 4 on.
_MIN_HOST_IR = 7


@dataclass(frozen=True)
class Partition:
    """Split the graph into analog stages (MVMs) and host stages (ONNX subgraphs)."""

    name: ClassVar[str] = "partition"
    requires: ClassVar[tuple[str, ...]] = ("graph",)
    produces: ClassVar[tuple[str, ...]] = ("partition",)

    def run(self, prog: Program) -> None:
        graph = prog.graph
        mvms: dict[str, MVM] = {}
        matrices: dict[str, Matrix] = {}
        level: dict[str, int] = {}  # tensor -> analog depth of its producer
        node_level: list[tuple[Node, int, bool]] = []
        for node in graph.nodes:
            lowered = lower(node, graph)
            analog = not isinstance(lowered, str)
            d = max((level.get(t, 0) for t in node_reads(node)), default=0) + int(analog)
            for out in node.outputs:
                level[out] = d
            node_level.append((node, d, analog))
            if analog:
                mvm, mats = lowered  # type: ignore[misc]
                mvms[node.name] = mvm
                matrices.update((m.id, m) for m in mats)
        depth = max((d for _, d, _ in node_level), default=0)
        groups: list[tuple[str, list[Node]]] = []
        for d in range(depth + 1):
            if d > 0:
                groups.append(("analog", [n for n, lv, a in node_level if lv == d and a]))
            groups.append(("host", [n for n, lv, a in node_level if lv == d and not a]))
        groups = [(k, ns) for k, ns in groups if ns]
        prog.stages = _make_stages(graph, groups, [t.name for t in prog.outputs])
        prog.mvms, prog.matrices = mvms, matrices


def _make_stages(graph: Graph, groups: list[tuple[str, list[Node]]], graph_outputs: list[str]) -> list[Stage]:
    read_after: list[set[str]] = []  # tensors read by stages after index i, plus graph outputs
    later = set(graph_outputs)
    for _, nodes in reversed(groups):
        read_after.append(set(later))
        for n in nodes:
            later.update(node_reads(n))
    read_after.reverse()
    stages = []
    counts = {"host": 0, "analog": 0}
    for (kind, nodes), needed in zip(groups, read_after, strict=True):
        produced = {o for n in nodes for o in n.outputs if o}
        reads = list(dict.fromkeys(t for n in nodes for t in node_reads(n)))
        inputs = [t for t in reads if t not in produced and t not in graph.constants]
        outputs = [o for n in nodes for o in n.outputs if o and o in needed]
        name = f"{kind}{counts[kind]}"
        counts[kind] += 1
        stage = Stage(name, kind, inputs, outputs, [n.name for n in nodes])
        if kind == "host":
            consts = [t for t in reads if t in graph.constants]
            stage.model = _host_model(graph, stage, nodes, consts)
        stages.append(stage)
    return stages


def _host_model(graph: Graph, stage: Stage, nodes: list[Node], consts: list[str]) -> onnx.ModelProto:
    """The host stage as a self-contained ONNX model that onnxruntime can run."""
    def info(name: str) -> onnx.ValueInfoProto:
        t = graph.info(name)
        if t is None or (t.elem_type == 0 and t.raw_type is None):
            users = [n.label for n in nodes if name in node_reads(n)]
            raise ShapeError(f"the type of tensor '{name}' (read by {', '.join(users) or 'a graph output'}) "
                             f"could not be inferred, so host stage {stage.name} cannot be built; "
                             f"check that the model passes onnx shape inference")
        return t.to_onnx()

    inits = [onnx.numpy_helper.from_array(graph.constants[c], c) for c in consts]
    g = onnx.helper.make_graph([n.to_onnx() for n in nodes], stage.name,
                               [info(t) for t in stage.inputs], [info(t) for t in stage.outputs], inits)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in sorted(graph.opset.items())]
    model = onnx.helper.make_model(g, opset_imports=opsets, functions=list(graph.functions), producer_name="anac")
    model.ir_version = max(graph.ir_version, _MIN_HOST_IR)
    return model

