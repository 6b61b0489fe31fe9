"""Streamed loading (what compile uses): weights read from the file straight into their arrays, never held by
the parsed model too; the same constants and digest as a whole parse, and clear errors for bad data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.core.errors import ModelLoadError
from anac.core.frontend import _STREAM_MIN_BYTES, import_model, load_onnx
from helpers import const, make_model, node, tensor


def _model(rng: np.random.Generator) -> onnx.ModelProto:
    """Two MatMuls: a large weight (streamed), a small one and a bias (kept in the parse)."""
    big = rng.standard_normal((256, 128)).astype(np.float32)  # 128 KiB, above _STREAM_MIN_BYTES
    assert big.nbytes >= _STREAM_MIN_BYTES
    return make_model([
        node("MatMul", ["x", "w1"], ["h"], name="mm1"),
        node("Add", ["h", "b"], ["hb"]),
        node("MatMul", ["hb", "w2"], ["y"], name="mm2"),
    ], [tensor("x", [2, 256])], [tensor("y", [2, 4])],
        [const("w1", big), const("b", rng.standard_normal(128).astype(np.float32)),
         const("w2", rng.standard_normal((128, 4)).astype(np.float32))])


def _same(a: onnx.ModelProto | Path, b: Path) -> None:
    whole = import_model(load_onnx(a))
    streamed = import_model(load_onnx(b, stream=True))
    assert streamed.digest == whole.digest
    assert sorted(streamed.constants) == sorted(whole.constants)
    for k, v in whole.constants.items():
        np.testing.assert_array_equal(streamed.constants[k], v)
        assert streamed.constants[k].dtype == v.dtype


def test_embedded_weights_stream_with_the_same_constants_and_digest(tmp_path: Path,
                                                                     rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(rng), path)
    proto = load_onnx(path, stream=True)
    by_name = {t.name: t for t in proto.graph.initializer}
    assert not by_name["w1"].HasField("raw_data") and by_name["w1"].data_location == onnx.TensorProto.EXTERNAL
    assert by_name["w2"].HasField("raw_data")  # small: parsed as usual
    _same(path, path)


def test_external_data_streams_with_the_same_constants_and_digest(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(rng), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    _same(path, path)


def test_truncated_external_data_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(_model(rng), path, save_as_external_data=True, all_tensors_to_one_file=True, location="m.onnx.data",
              size_threshold=0)
    data = tmp_path / "m.onnx.data"
    data.write_bytes(data.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="weight '(w1|b|w2)'"):
        import_model(load_onnx(path, stream=True))


def test_embedded_weight_of_the_wrong_length_is_a_clear_error(tmp_path: Path, rng: np.random.Generator) -> None:
    m = _model(rng)
    w1 = next(t for t in m.graph.initializer if t.name == "w1")
    w1.raw_data = w1.raw_data[:-4]
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    with pytest.raises(ModelLoadError, match=r"weight 'w1' has dims \[256, 128\] \(float32, 131072 bytes\) but "
                                             r"holds 131068 bytes"):
        import_model(load_onnx(path, stream=True))


def test_a_file_that_is_not_protobuf_falls_back_to_the_whole_parse_and_its_error(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff" * 100)
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        load_onnx(path, stream=True)


@pytest.mark.parametrize("op", ["Concat", "Max", "Min", "Sum"])
def test_numpy_folds_agree_with_onnx_reference(op: str, rng: np.random.Generator) -> None:
    """Concat and the variadic Max/Min/Sum of constants fold by numpy, to what onnx's reference evaluator gives."""
    from onnx.reference import ReferenceEvaluator

    a, b = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((1, 4)).astype(np.float32)
    attrs = {"axis": 0} if op == "Concat" else {}
    nodes = [node(op, ["a", "b"], ["w"], **attrs), node("MatMul", ["x", "w"], ["y"], name="mm")]
    rows = 4 if op == "Concat" else 3
    m = make_model(nodes, [tensor("x", [2, rows])], [tensor("y", [2, 4])], [const("a", a), const("b", b)])
    folded = import_model(load_onnx(m)).constants["w"]
    want = ReferenceEvaluator(make_model(nodes[:1], [], [tensor("w", [rows, 4])],
                                         [const("a", a), const("b", b)])).run(None, {})[0]
    assert folded.dtype == want.dtype and folded.shape == want.shape
    np.testing.assert_array_equal(folded, want)
