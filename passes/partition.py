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
from typing import Any, ClassVar

import numpy as np
import onnx
from anac.core.errors import ShapeError
from anac.core.ir import Graph, Node, node_reads
from anac.core.lowering import check_finite, groups_that_fit, lower, pack_groups, pack_sizes
from anac.core.placeholder import is_placeholder, placeholder, tensor_proto
from anac.core.program import MVM, Matrix, Program, Stage
from anac.core.recurrent import RECURRENT_OPS, Recurrent, absorbable_embedding, lower_recurrent

# Host stage models never go below this IR version: initializers need not be graph inputs from IR 4 on.
_MIN_HOST_IR = 7
# Packed groups may fill this share of the devices of the chips a model's weights need (the rest is slack
# for the packer: tiles are rarely filled to the last row).
_PACK_FILL = 0.9


@dataclass(frozen=True)
class Partition:
    """Split the graph into analog stages (MVMs) and host stages (ONNX subgraphs)."""

    name: ClassVar[str] = "partition"
    requires: ClassVar[tuple[str, ...]] = ("graph",)
    produces: ClassVar[tuple[str, ...]] = ("partition",)
    pack_groups: bool = True  # grouped convs: groups block-diagonal in tile-sized matrices (else one per group)

    def run(self, prog: Program) -> None:
        graph = prog.graph
        mvms: dict[str, MVM] = {}
        matrices: dict[str, Matrix] = {}
        recurrent: dict[str, Recurrent] = {}
        absorbed: dict[str, str] = {}  # embedding Gather -> the recurrent layer that absorbed it
        readers: dict[str, set[str]] = {}
        for node in graph.nodes:
            for t in node_reads(node):
                if t in graph.constants:
                    readers.setdefault(t, set()).add(node.name)
        for node in graph.nodes:
            if node.op_type in RECURRENT_OPS:
                embedding = absorbable_embedding(node, graph)
                cell = lower_recurrent(node, graph, embedding)
                if not isinstance(cell, str):
                    rec, rec_mvms, mats = cell
                    recurrent[node.name] = rec
                    if embedding is not None:
                        absorbed[embedding.name] = node.name
                    mvms.update((m.node, m) for m in rec_mvms)
                    matrices.update((m.id, m) for m in mats)
                    _drop_copied_weights(graph, node, readers)
                continue
            lowered = lower(node, graph)
            if not isinstance(lowered, str):
                mvm, mats = lowered
                mvms[node.name] = mvm
                matrices.update((m.id, m) for m in mats)
        graph_outputs = {t.name for t in prog.outputs}
        folded = _fold_batchnorms(graph, mvms, matrices, graph_outputs)  # before packing: per-group columns
        if self.pack_groups:
            matrices = _pack_grouped(prog, mvms, matrices)
        fused = folded | _fuse_activations(graph, mvms, prog.hardware.analog_activations, graph_outputs)
        level: dict[str, int] = {}  # tensor -> analog depth of its producer
        node_level: list[tuple[Node, int, bool]] = []
        for node in graph.nodes:
            if node.name in fused:  # runs at its MVM's tile outputs, in the same analog stage
                level[node.outputs[0]] = level[fused[node.name]]
                continue
            if node.name in absorbed:  # its premultiplied table is looked up inside the recurrent stage
                level[node.outputs[0]] = max((level.get(t, 0) for t in node_reads(node)), default=0)
                continue
            analog = node.name in mvms or node.name in recurrent
            d = max((level.get(t, 0) for t in node_reads(node)), default=0) + int(analog)
            for out in node.outputs:
                level[out] = d
            node_level.append((node, d, analog))
        depth = max((d for _, d, _ in node_level), default=0)
        at_level: list[list[tuple[Node, bool]]] = [[] for _ in range(depth + 1)]
        for n, lv, a in node_level:
            at_level[lv].append((n, a))
        groups: list[tuple[str, list[Node]]] = []
        for d in range(depth + 1):
            if d > 0:
                groups.append(("analog", [n for n, a in at_level[d] if a and n.name in mvms]))
                groups += [("recurrent", [n]) for n, a in at_level[d] if a and n.name in recurrent]
            groups.append(("host", [n for n, a in at_level[d] if not a]))
        groups = [(k, ns) for k, ns in groups if ns]
        prog.stages = _make_stages(graph, groups, [t.name for t in prog.outputs], mvms, recurrent)
        prog.mvms, prog.matrices, prog.recurrent = mvms, matrices, recurrent
        for mvm in mvms.values():
            if "recurrent" in mvm.params:
                mvm.params["traffic"] = _recurrent_traffic(graph, recurrent[mvm.params["recurrent"]],
                                                           matrices[mvm.matrices[0]].shape)
            else:
                mvm.params["traffic"] = _traffic(graph, mvm, matrices[mvm.matrices[0]].shape[0])
        prog.tensor_elements = {t: _elements(graph, t) for st in prog.stages for t in st.inputs + st.outputs}


def _pack_grouped(prog: Program, mvms: dict[str, MVM], matrices: dict[str, Matrix]) -> dict[str, Matrix]:
    """Pack the groups of grouped convs block-diagonally (anac.core.lowering.pack_groups).

    Each layer starts with as many groups per matrix as fit the smallest weight grid of any
    encoding (so a pack fits a tile whatever encoding the layer gets), which runs the most
    groups per MVM. The zero blocks cost devices (p groups per matrix store p times their
    weights), so while the model's devices exceed 90 % of the chips its weights need anyway, or
    fill its last tile beyond 90 % (too tight for the packer to meet the lower bound of tiles), the
    layer with the fewest input vectors per inference (the least time at stake) halves its groups
    per matrix.
    """
    hw = prog.hardware
    grids = [hw.weight_grid(e.name) for e in hw.encodings]
    grid = (min(r for r, _ in grids), min(c for _, c in grids))
    grouped = {n: [matrices[m] for m in mv.matrices] for n, mv in mvms.items()
               if mv.kind == "conv" and len(mv.matrices) > 1}
    per = {n: groups_that_fit(mats, grid) for n, mats in grouped.items()}
    if not grouped or max(per.values()) == 1:
        return matrices
    dpw = hw.encoding(hw.default_encoding).devices_per_weight
    weights = sum(m.weights.size for m in matrices.values())
    tiles = -(-weights * dpw // hw.devices_per_tile)
    chips = -(-tiles // hw.tiles_per_chip) * hw.tiles_per_chip * hw.devices_per_tile * _PACK_FILL

    def devices() -> int:
        waste = sum(mats[0].weights.size * sum(k * (k - 1) for k in pack_sizes(len(mats), per[n]))
                    for n, mats in grouped.items())
        return (weights + waste) * dpw

    def budget() -> float:
        # Within the chips the weights need, and leaving the packer slack in the last tile.
        return min(chips, (-(-devices() // hw.devices_per_tile) - 1 + _PACK_FILL) * hw.devices_per_tile)

    vectors = {n: _elements(prog.graph, mvms[n].output) // max(1, int(mvms[n].params["out_channels_per_group"])
                                                               * len(mats)) for n, mats in grouped.items()}
    while devices() > budget():
        shrinkable = [n for n in grouped if per[n] > 1]
        if not shrinkable:
            break
        least = min(shrinkable, key=lambda n: (vectors[n], -len(grouped[n]) * per[n], n))
        per[least] //= 2
    out = {mid: m for mid, m in matrices.items() if m.node not in grouped}
    for n, mats in grouped.items():
        out.update((m.id, m) for m in pack_groups(mvms[n], mats, per[n]))
    order = {n: i for i, n in enumerate(mvms)}
    return dict(sorted(out.items(), key=lambda kv: order[kv[1].node]))


def _drop_copied_weights(graph: Graph, node: Node, readers: dict[str, set[str]]) -> None:
    """Drop a lowered recurrent node's weights (W, R, B) when no other node reads them: they now live in its
    stacked matrices and cell models, so the compile holds them once (dropped as each layer is lowered, the
    copies never pile up)."""
    for t in node.inputs[1:4]:
        if t and readers.get(t) == {node.name}:
            graph.constants.pop(t, None)


def _elements(graph: Graph, name: str) -> int:
    info = graph.info(name)
    if info is None or not info.is_static:
        return 0
    return int(np.prod(info.shape, dtype=np.int64))  # type: ignore[arg-type]


def _recurrent_traffic(graph: Graph, rec: Recurrent, shape: tuple[int, int]) -> dict[str, int]:
    """A recurrent matrix runs once per time step for the whole batch."""
    info = graph.info(rec.x)
    dims = info.shape if info is not None and info.is_static else (1, 1, 1)
    vectors = int(dims[0]) * int(dims[1])  # type: ignore[index, arg-type]
    return {"in_elements": vectors * shape[0], "out_elements": vectors * shape[1], "vectors": vectors,
            "steps": int(dims[1] if rec.layout else dims[0])}  # type: ignore[index, arg-type]


def _traffic(graph: Graph, mvm: MVM, k: int) -> dict[str, int]:
    """Per inference: input elements, output elements, and input vectors (MVMs each tile runs)."""
    x, y = _elements(graph, mvm.input), _elements(graph, mvm.output)
    if mvm.kind == "conv":
        n_out = int(mvm.params["out_channels_per_group"]) * int(mvm.params["group"])
        vectors = y // n_out if n_out else 0  # batch x output positions
    else:
        vectors = x // k if k else 0
    return {"in_elements": x, "out_elements": y, "vectors": vectors}


def _fold_batchnorms(graph: Graph, mvms: dict[str, MVM], matrices: dict[str, Matrix],
                     graph_outputs: set[str]) -> dict[str, str]:
    """Fold an inference-mode BatchNormalization that is the only reader of an MVM's output into it.

    With s = scale / sqrt(var + eps) per output channel, column c of the weights becomes W[:, c] * s[c]
    and the bias (b[c] - mean[c]) * s[c] + B[c] (computed in float64, stored float32). Only when the
    BN's parameters are constants and its channel axis (1) is the MVM's output column axis. A plan's
    placeholders keep their shapes (no values to fold). Returns {BN node: the MVM's pre-BN tensor}.
    """
    users = graph.consumers()
    folded: dict[str, str] = {}
    for mvm in mvms.values():
        readers = users.get(mvm.output, [])
        if len(readers) != 1 or mvm.output in graph_outputs or "recurrent" in mvm.params:
            continue
        bn = readers[0]
        params = _batchnorm_params(bn, graph)
        channels = _output_channels(mvm, graph, matrices)
        if params is None or channels is None or bn.inputs[0] != mvm.output \
                or any(p.shape != (channels,) for p in params):
            continue
        # The bias broadcasts against the output: channels on its second-to-last axis when the MVM transposes
        # it (a MatMul, so no bias of its own); else on the last, where a Gemm's C may add rows.
        y_t = mvm.kind == "dense" and mvm.params["y_transpose"]
        bias_shape = (channels, 1) if y_t else np.broadcast_shapes((channels,), np.shape(mvm.bias))
        mats = [matrices[m] for m in mvm.matrices]
        if any(is_placeholder(a) for a in [*params, *(m.weights for m in mats), mvm.bias] if a is not None):
            mvm.bias = placeholder(bias_shape, np.float32)
        else:
            scale, shift, mean, var = (p.astype(np.float64) for p in params)
            s = scale / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))
            for m in mats:
                n = m.shape[1]
                m.weights = np.ascontiguousarray(m.weights.astype(np.float64) * s[m.group * n:(m.group + 1) * n],
                                                 dtype=np.float32)
            b = 0.0 if mvm.bias is None else mvm.bias.astype(np.float64)
            mvm.bias = ((b - mean) * s + shift).reshape(bias_shape).astype(np.float32)
            for m in mats:
                check_finite(bn, f"weight folded into {mvm.node}", m.weights)
            check_finite(bn, f"bias folded into {mvm.node}", mvm.bias)
        folded[bn.name] = mvm.output
        mvm.norm = bn.name
        mvm.output = bn.outputs[0]
    return folded


def _batchnorm_params(node: Node, graph: Graph) -> list[np.ndarray] | None:
    """Scale, B, mean and var of an inference-mode BatchNormalization whose parameters are constants, or None."""
    if node.domain not in ("", "ai.onnx") or node.op_type != "BatchNormalization" or len(node.inputs) != 5:
        return None
    if int(node.attrs.get("training_mode", 0)) or len([o for o in node.outputs if o]) != 1 \
            or not int(node.attrs.get("spatial", 1)):  # opset < 9 spatial=0: per element, not per channel
        return None
    params = [graph.constants.get(t) for t in node.inputs[1:]]
    return None if any(p is None or p.dtype.kind != "f" for p in params) else params  # type: ignore[return-value]


def _output_channels(mvm: MVM, graph: Graph, matrices: dict[str, Matrix]) -> int | None:
    """The MVM's output columns when they lie on axis 1 of its output (BatchNormalization's channel axis)."""
    cols = sum(matrices[m].shape[1] for m in mvm.matrices)
    if mvm.kind == "conv":
        return cols
    info = graph.info(mvm.output)
    if mvm.params["squeeze"] or info is None or info.shape is None:
        return None
    rank = len(info.shape)
    return cols if rank - 1 - int(mvm.params["y_transpose"]) == 1 else None


def _fuse_activations(graph: Graph, mvms: dict[str, MVM], allowed: tuple[str, ...],
                      graph_outputs: set[str]) -> dict[str, str]:
    """Fuse an activation that is the only reader of an MVM's output into the MVM.

    Returns {activation node: the MVM's pre-activation tensor}. The spec's
    ``analog_activations`` says which forms the tile periphery has (ReLU,
    hard-sigmoid and hard-tanh by gating the ramp; ONNX Clip is the hard-tanh form).
    """
    users = graph.consumers()
    fused: dict[str, str] = {}
    for mvm in mvms.values():
        readers = users.get(mvm.output, [])
        if len(readers) != 1 or mvm.output in graph_outputs:
            continue
        act = readers[0]
        form = _activation(act, graph)
        if form is None or form["form"] not in allowed or act.inputs[0] != mvm.output:
            continue
        fused[act.name] = mvm.output
        mvm.activation = {"node": act.name, **form}
        mvm.output = act.outputs[0]
    return fused


def _activation(node: Node, graph: Graph) -> dict[str, Any] | None:
    """The tile-output activation a node computes, or None."""
    if node.domain not in ("", "ai.onnx") or len([o for o in node.outputs if o]) != 1:
        return None
    if node.op_type == "Relu":
        return {"form": "Relu", "op": "Relu"}
    if node.op_type == "HardSigmoid":
        return {"form": "HardSigmoid", "op": "HardSigmoid", "alpha": float(node.attrs.get("alpha", 0.2)),
                "beta": float(node.attrs.get("beta", 0.5))}
    if node.op_type == "Clip":
        if "min" in node.attrs or "max" in node.attrs:  # opset < 11: bounds are attributes
            lo, hi = node.attrs.get("min"), node.attrs.get("max")
        else:
            bounds = [graph.constants.get(t) if t else None for t in node.inputs[1:3]]
            if any(t and b is None for t, b in zip(node.inputs[1:3], bounds, strict=False)):
                return None  # bounds computed at run time
            lo, hi = (None if b is None else float(b) for b in (bounds + [None, None])[:2])
        return {"form": "HardTanh", "op": "Clip", "min": lo, "max": hi}
    return None


def _make_stages(graph: Graph, groups: list[tuple[str, list[Node]]], graph_outputs: list[str],
                 mvms: dict[str, MVM], recurrent: dict[str, Recurrent]) -> list[Stage]:
    last_read = dict.fromkeys(graph_outputs, len(groups))  # tensor -> index of the last group reading it
    for i, (_, nodes) in enumerate(groups):
        for n in nodes:
            for t in node_reads(n):
                last_read[t] = max(last_read.get(t, -1), i)
    stages = []
    counts = {"host": 0, "analog": 0, "recurrent": 0}
    for i, (kind, nodes) in enumerate(groups):
        writes = [o for n in nodes for o in ([mvms[n.name].output] if kind == "analog" else n.outputs) if o]
        if kind == "recurrent":
            writes = [o for o in recurrent[nodes[0].name].outputs if o]
        produced = set(writes)
        reads = list(dict.fromkeys(t for n in nodes for t in node_reads(n)))
        if kind == "recurrent":
            rec = recurrent[nodes[0].name]
            reads = [t for t in (rec.x, rec.sequence_lens, rec.initial_h, rec.initial_c) if t]
        inputs = [t for t in reads if t not in produced and t not in graph.constants]
        outputs = [o for o in writes if last_read.get(o, -1) > i]  # read by a later stage or a graph output
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

    inits = [tensor_proto(graph.constants[c], c) for c in consts]  # a plan's placeholders stay headers
    g = onnx.helper.make_graph([n.to_onnx() for n in nodes], stage.name,
                               [info(t) for t in stage.inputs], [info(t) for t in stage.outputs], inits)
    opsets = [onnx.helper.make_opsetid(d, v) for d, v in sorted(graph.opset.items())]
    model = onnx.helper.make_model(g, opset_imports=opsets, functions=list(graph.functions), producer_name="anac")
    model.ir_version = max(graph.ir_version, _MIN_HOST_IR)
    return model

