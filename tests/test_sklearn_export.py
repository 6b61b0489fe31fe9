"""End to end on models exported by skl2onnx (a scaler + MLP pipeline, with and without ZipMap;
a logistic regression that stays on the host), verified against onnxruntime at 1e-5."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from anac.api import compile_model, verify
from helpers import analog_nodes, assert_verified, host_nodes, host_ops
from threadpoolctl import threadpool_limits

TOL = 1e-5


# ---------------------------------------------------------------- skl2onnx


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def mlp_pipeline(digits):  # type: ignore[no-untyped-def]
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = digits
    clf = MLPClassifier(hidden_layer_sizes=(600,), max_iter=20, random_state=0)
    # one BLAS thread: on a loaded 2-core machine oversubscribed threads make this fit 50x slower
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipe = make_pipeline(StandardScaler(), clf).fit(x, y)
    return pipe, clf


def _ml_nodes(model: onnx.ModelProto) -> set[str]:
    return {n.name for n in model.graph.node if n.domain == "ai.onnx.ml"}


@pytest.mark.parametrize("zipmap", [False, True], ids=["no_zipmap", "zipmap"])
def test_skl2onnx_scaler_mlp_pipeline(digits, mlp_pipeline, zipmap):
    from skl2onnx import to_onnx

    x, _ = digits
    pipe, clf = mlp_pipeline
    model = to_onnx(pipe, x[:1], options=None if zipmap else {id(clf): {"zipmap": False}})
    ml = _ml_nodes(model)
    assert ("ZipMap" in {n.op_type for n in model.graph.node}) == zipmap
    in_name = model.graph.input[0].name
    prog = compile_model(model, input_shapes={in_name: [20, 64]})
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert len(matmuls) == 2
    assert ml and ml <= host_nodes(prog)
    assert analog_nodes(prog) == matmuls, f"analog: {sorted(analog_nodes(prog))}, host: {sorted(host_nodes(prog))}"
    assert sorted(m.shape for m in prog.matrices.values()) == [(64, 600), (600, 10)]
    report = verify(model, inputs={in_name: x[:20]})
    assert_verified(report, TOL)
    for out in report.outputs.values():
        assert out.argmax_agreement == 1.0


def test_skl2onnx_logistic_regression_runs_on_host(digits):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    x, y = digits
    with threadpool_limits(1):
        lr = LogisticRegression(max_iter=300).fit(x / 16, y)
    model = to_onnx(lr, x[:1])
    in_name = model.graph.input[0].name
    prog = compile_model(model, input_shapes={in_name: [7, 64]})
    ops = host_ops(prog)
    assert ops["LinearClassifier"] == 1 and _ml_nodes(model) <= host_nodes(prog)
    assert prog.mvms == {} and prog.slices == [] and [st.kind for st in prog.stages] == ["host"]
    report = verify(model, inputs={in_name: x[:7] / 16})
    assert_verified(report, TOL)
    report = verify(model, batch=4)
    assert_verified(report, TOL)
