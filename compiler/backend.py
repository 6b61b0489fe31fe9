"""``anac.backend``: anac as an ``onnx.backend.base.Backend``.

    import anac.backend
    rep = anac.backend.prepare(model)            # onnx.checker; nothing compiled yet
    outputs = rep.run([x, w])                    # binds weight operands, compiles, simulates

A weight-stationary compiler needs its weights before it can place them, while
the ONNX backend protocol hands over every operand (weights too, in the node
tests) only at ``run``: so ``run`` binds the weight operands as initializers,
compiles, and runs the program in anac's simulator (ideal mode by default;
``prepare(model, mode="hardware", t=..., seed=...)`` for the device model).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from anac.core.program import Program
from anac.session import InferenceSession
from onnx import numpy_helper
from onnx.backend.base import Backend, BackendRep, namedtupledict


def weight_inputs(model: onnx.ModelProto) -> list[str]:
    """Graph inputs that are weight operands, to be bound as constants once their values are known.

    The rule: a graph input (one without an initializer) is a weight operand when
    every node that reads it reads it at an operand position >= 1 (never as
    operand 0, the data operand by ONNX convention: MatMul/Gemm A, Conv X,
    BatchNormalization X, ...), and each of those nodes has a data operand
    that is not itself a constant (an initializer). It must also have at least
    one reader and not be a graph output.

    So Gemm B and C, the right MatMul operand and Conv W and B are bound, while
    the activation that enters the network stays an input. The second condition
    keeps indices fed to a table that is already an initializer (Embedding's
    ``Gather(table, indices)``) as inputs: binding them would leave the node
    with no runtime operand at all. Reads from inside subgraphs (If/Loop
    bodies) are not considered; none of the cases here has subgraphs.
    """
    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in g.node:
        for pos, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, pos))
    bound = []
    for v in g.input:
        if v.name in inits or v.name in outputs or v.name not in uses:
            continue
        if all(pos >= 1 and node.input[0] and node.input[0] not in inits and node.input[0] != v.name
               for node, pos in uses[v.name]):
            bound.append(v.name)
    return bound


def runtime_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs without an initializer, in graph order: what ``BackendRep.run`` receives."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def bind_weights(model: onnx.ModelProto, values: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` with the given inputs turned into initializers.

    From IR 4 on the bound inputs leave the graph's input list (so onnxruntime
    and anac both see constants); IR 3 requires every initializer to be listed
    as an input too, so there they stay listed.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for name, arr in values.items():
        g.initializer.append(numpy_helper.from_array(np.asarray(arr), name))
    if out.ir_version >= 4:
        kept = [v for v in g.input if v.name not in values]
        del g.input[:]
        g.input.extend(kept)
    return out


def _is_static(v: onnx.ValueInfoProto) -> bool:
    t = v.type.tensor_type
    return t.HasField("shape") and all(d.HasField("dim_value") for d in t.shape.dim)




class AnacBackendRep(BackendRep):
    """A model waiting for its input values; ``run`` binds the weights, compiles with anac, simulates."""

    def __init__(self, model: onnx.ModelProto, **session_options: Any) -> None:
        self.model = model
        self.inputs = runtime_inputs(model)
        self.weights = set(weight_inputs(model))
        self.session_options = session_options  # mode, t, seed, hardware, calibration_data, ...
        self.program: Program | None = None  # the last compiled program, for inspection

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        if isinstance(inputs, Mapping):
            values = {k: np.asarray(v) for k, v in inputs.items()}
        else:
            if isinstance(inputs, np.ndarray):
                inputs = [inputs]
            if len(inputs) != len(self.inputs):
                raise ValueError(f"the model takes {len(self.inputs)} inputs "
                                 f"({', '.join(v.name for v in self.inputs)}), got {len(inputs)}")
            values = {v.name: np.asarray(x) for v, x in zip(self.inputs, inputs, strict=True)}
        bound = {k: v for k, v in values.items() if k in self.weights}
        feeds = {k: v for k, v in values.items() if k not in self.weights}
        model = bind_weights(self.model, bound)
        symbolic = any(not _is_static(v) for v in self.inputs if v.name in feeds)
        shapes = {k: v.shape for k, v in feeds.items()} if symbolic else None
        session = InferenceSession(model, input_shapes=shapes, **self.session_options)
        self.program = session.program
        names = [o.name for o in self.model.graph.output]
        return namedtupledict("Outputs", names)(*session.run(names, feeds))


class AnacBackend(Backend):
    """anac as an ONNX backend: compile to crossbars, run in anac's simulator (CPU only)."""

    @classmethod
    def prepare(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> AnacBackendRep:
        super().prepare(model, device)  # onnx.checker
        return AnacBackendRep(model, **kwargs)

    @classmethod
    def run_model(cls, model: onnx.ModelProto, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device == "CPU"


prepare = AnacBackend.prepare
run_model = AnacBackend.run_model
run_node = AnacBackend.run_node
supports_device = AnacBackend.supports_device
