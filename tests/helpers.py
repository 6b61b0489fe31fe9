"""Importable test helpers: ONNX graph builders and program inspection.

Test files import these (``from helpers import make_model``); the fixtures
live in conftest.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
IR_VERSION = 9


def tensor(name: str, shape: Sequence[int | str | None] | None, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    """A tensor ValueInfo; str dims are symbolic, None dims unknown, ``shape=None`` leaves the rank unknown."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    """An initializer from a numpy array."""
    return numpy_helper.from_array(np.asarray(value), name)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
         domain: str | None = None, **attrs: object) -> onnx.NodeProto:
    """A NodeProto named ``name`` (default: its first output) with keyword attributes."""
    return helper.make_node(op_type, list(inputs), list(outputs), name=name or outputs[0], domain=domain, **attrs)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[onnx.TensorProto] = (),
               opset: int = 17, name: str = "test") -> onnx.ModelProto:
    """A checked ModelProto (IR version 9) with one default-domain opset."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="anac-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    """Write ``model`` under ``tmp_path``; return the file's path."""
    path = Path(tmp_path) / name
    onnx.save(model, str(path))
    return path


def weights(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    """Random float32 weights, scaled by 1/sqrt(fan-in) (the first dim) unless ``scale`` is given."""
    s = scale if scale is not None else 1.0 / np.sqrt(shape[0] if shape else 1)
    return (rng.standard_normal(shape) * s).astype(np.float32)


def analog_nodes(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the nodes that run on crossbars."""
    return set(prog.mvms or {})


def host_nodes(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the nodes in host stages."""
    return {n for st in prog.stages or [] if st.kind == "host" for n in st.nodes}


def fused_activations(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the activation nodes fused into an MVM (run at its tile outputs, in no host stage)."""
    return {m.activation["node"] for m in (prog.mvms or {}).values() if m.activation is not None}


def stage_kinds(prog) -> list[str]:  # type: ignore[no-untyped-def]
    """The kinds of the stages in execution order, e.g. ["analog", "host", "analog"]."""
    return [st.kind for st in prog.stages or []]


def stage_of(prog, node_name: str) -> int:  # type: ignore[no-untyped-def]
    """Index of the stage that runs ``node_name``."""
    for i, st in enumerate(prog.stages or []):
        if node_name in st.nodes:
            return i
    raise KeyError(f"node {node_name} is in no stage")


def assert_verified(report, tol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    """Every output of a VerifyReport within ``tol`` relative error, with a readable failure message."""
    errs = {k: (v.rel_err, v.max_abs_err) for k, v in report.outputs.items()}
    assert report.outputs, "the report has no outputs"
    assert report.passed and all(e <= tol for e, _ in errs.values()), f"rel/max-abs errors: {errs}"


def batch_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Input shapes with every non-numeric dim bound to ``batch`` (for compile_model's input_shapes)."""
    inits = {t.name for t in model.graph.initializer}
    return {v.name: [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in inits}
