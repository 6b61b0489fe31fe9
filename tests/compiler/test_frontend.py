"""Frontend: folding, naming, dead-node removal, shape binding, and the errors it raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.core.errors import ModelLoadError, ShapeError, UnsupportedModelError
from anac.core.frontend import check_supported, find_unsupported, import_model, load_onnx
from anac.core.lowering import lower
from helpers import const, make_model, node, tensor, weights


def _i64(*v: int) -> np.ndarray:
    return np.array(v, dtype=np.int64)


def test_constant_of_shape_and_shape_subgraphs_fold_into_weights(rng: np.random.Generator) -> None:
    # W = ConstantOfShape(Concat(Shape(x)[1:], [5])) * scale, as exporters sometimes write it.
    m = make_model([
        node("Shape", ["x"], ["xs"], start=1),
        node("Constant", [], ["five"], value=onnx.numpy_helper.from_array(_i64(5))),
        node("Concat", ["xs", "five"], ["wshape"], axis=0),
        node("ConstantOfShape", ["wshape"], ["w0"], value=onnx.numpy_helper.from_array(np.array([0.5], np.float32))),
        node("Mul", ["w0", "scale"], ["w"]),
        node("MatMul", ["x", "w"], ["y"], name="mm"),
    ], [tensor("x", [2, 3])], [tensor("y", [2, 5])], [const("scale", np.float32(2.0))])
    g = import_model(load_onnx(m))
    assert [n.op_type for n in g.nodes] == ["MatMul"]
    np.testing.assert_array_equal(g.constants["w"], np.ones((3, 5), np.float32))
    assert not isinstance(lower(g.nodes[0], g), str)


def test_unnamed_nodes_get_op_index_names_and_duplicates_are_made_unique(rng: np.random.Generator) -> None:
    m = make_model([
        onnx.helper.make_node("Relu", ["x"], ["a"]),
        onnx.helper.make_node("Relu", ["a"], ["b"], name="r"),
        onnx.helper.make_node("Relu", ["b"], ["y"], name="r"),
    ], [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    names = [n.name for n in import_model(m).nodes]
    assert names == ["Relu_0", "r", "r_1"]


def test_dead_nodes_and_unused_weights_are_dropped(rng: np.random.Generator) -> None:
    m = make_model([
        node("MatMul", ["x", "w"], ["y"], name="used"),
        node("MatMul", ["x", "w2"], ["dead"], name="unused"),
    ], [tensor("x", [1, 4])], [tensor("y", [1, 3])], [const("w", weights(rng, 4, 3)), const("w2", weights(rng, 4, 6))])
    g = import_model(m)
    assert [n.name for n in g.nodes] == ["used"] and set(g.constants) == {"w"}


def test_initializers_listed_as_inputs_are_constants(rng: np.random.Generator) -> None:
    # IR 3 models list every initializer as a graph input too.
    m = make_model([node("Gemm", ["x", "w"], ["y"])], [tensor("x", [1, 4]), tensor("w", [4, 2])],
                   [tensor("y", [1, 2])], [const("w", weights(rng, 4, 2))])
    g = import_model(m)
    assert [t.name for t in g.inputs] == ["x"] and "w" in g.constants


def test_symbolic_dims_bind_by_input_and_by_dim_name(rng: np.random.Generator) -> None:
    m = make_model([node("Add", ["a", "b"], ["s"]), node("MatMul", ["s", "w"], ["y"])],
                   [tensor("a", ["N", 4]), tensor("b", ["N", 4])], [tensor("y", ["N", 2])],
                   [const("w", weights(rng, 4, 2))])
    g = import_model(m, {"a": [3, 4]})
    assert [t.shape for t in g.inputs] == [(3, 4), (3, 4)]
    assert g.info("y").shape == (3, 2)  # type: ignore[union-attr]
    assert [t.shape for t in import_model(m).inputs] == [(1, 4), (1, 4)]  # the batch defaults to 1
    assert [t.shape for t in import_model(m, batch=5).inputs] == [(5, 4), (5, 4)]
    assert import_model(m, default_dim=1).inputs[1].shape == (1, 4)
    inner = make_model([node("MatMul", ["a", "w"], ["y"])], [tensor("a", ["N", "T", 4])],
                       [tensor("y", ["N", "T", 2])], [const("w", weights(rng, 4, 2))])
    with pytest.raises(ShapeError, match=r"input 'a' \[N, T, 4\]: dim 1 is symbolic \('T'\).*--input-shape a=1,1,4"):
        import_model(inner)


@pytest.mark.parametrize("shapes,match", [
    ({"a": [3]}, "has rank 2"),
    ({"a": [3, 5]}, "dim 1 is fixed to 4"),
    ({"a": [0, 4]}, "must be positive"),
    ({"zz": [1, 4]}, r"unknown input\(s\) zz"),
])
def test_bad_input_shapes(shapes: dict[str, list[int]], match: str) -> None:
    m = make_model([node("Relu", ["a"], ["y"])], [tensor("a", ["N", 4])], [tensor("y", ["N", 4])])
    with pytest.raises(ShapeError, match=match):
        import_model(m, shapes)


def test_unknown_dim_without_name_is_reported(rng: np.random.Generator) -> None:
    m = make_model([node("Relu", ["a"], ["y"])], [tensor("a", [None, 4])], [tensor("y", [None, 4])])
    assert import_model(m).inputs[0].shape == (1, 4)  # an unnamed leading dim is the batch too
    m = make_model([node("Relu", ["a"], ["y"])], [tensor("a", [2, None])], [tensor("y", [2, None])])
    with pytest.raises(ShapeError, match=r"dim 1 is unknown"):
        import_model(m)


def test_all_unsupported_nodes_are_reported_at_once(rng: np.random.Generator) -> None:
    graph = onnx.helper.make_graph(
        [node("Relu", ["x"], ["a"]), node("NoSuchOp", ["a"], ["b"], name="n1"),
         node("AlsoMissing", ["b"], ["y"], name="n2")],
        "g", [tensor("x", [1, 4])], [tensor("y", [1, 4])])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    g = import_model(m)
    assert [(n.name, n.op_type) for n, _ in find_unsupported(g)] == [("n1", "NoSuchOp"), ("n2", "AlsoMissing")]
    with pytest.raises(UnsupportedModelError, match=r"2 node\(s\).*'n1' \(NoSuchOp\).*'n2' \(AlsoMissing\)"):
        check_supported(g)


def test_op_version_without_an_onnxruntime_kernel_is_caught() -> None:
    # onnxruntime has Gemm kernels from version 7 on; a Gemm-6 between two activations
    # cannot go to crossbars either, so it cannot be compiled.
    graph = onnx.helper.make_graph([node("Gemm", ["a", "b"], ["y"], name="g6")], "g",
                                   [tensor("a", [2, 3]), tensor("b", [3, 4])], [tensor("y", [2, 4])])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)])
    m.ir_version = 3
    bad = find_unsupported(import_model(m))
    assert [n.name for n, _ in bad] == ["g6"] and "version 6" in bad[0][1]


def test_gemm6_with_constant_weights_compiles_to_crossbars(rng: np.random.Generator) -> None:
    graph = onnx.helper.make_graph([node("Gemm", ["a", "w"], ["y"], name="g6")], "g",
                                   [tensor("a", [2, 3])], [tensor("y", [2, 4])], [const("w", weights(rng, 3, 4))])
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 6)])
    m.ir_version = 3
    g = import_model(m)
    assert find_unsupported(g) == []


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_onnx(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="holds no ONNX graph"):
        load_onnx(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "junk.onnx")
