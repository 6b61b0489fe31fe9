"""LSTM, GRU and RNN: the ONNX backend node tests (all 18), through anac's cells, and saved programs."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx.backend.test
import pytest
from anac.api import compile_model, load_program, save_program, simulate, verify
from anac.backend import AnacBackend, bind_weights, weight_inputs
from onnx.backend.test.loader import load_model_tests

PATTERN = re.compile(r"^test_(lstm|gru|simple_rnn|rnn)_\w+$")
CASES = {c.name: c for c in load_model_tests(kind="node") if PATTERN.match(c.name) and "expanded" not in c.name}


def test_all_eighteen_recurrent_node_tests_are_selected() -> None:
    kinds = sorted(n.split("_")[1] for n in CASES)
    assert kinds.count("lstm") == 6 and kinds.count("gru") == 6 and len(CASES) == 18


_bt = onnx.backend.test.BackendTest(AnacBackend, __name__)
for _name in CASES:
    _bt.include(f"^{_name}_cpu$")
_cases = _bt.test_cases
for _cls in _cases.values():
    for _attr in [a for a in vars(_cls) if a.startswith("test_") and a[:-4] not in CASES]:
        delattr(_cls, _attr)
globals().update({k: v for k, v in _cases.items() if any(a.startswith("test_") for a in vars(v))})


@pytest.mark.parametrize("name", sorted(CASES))
def test_recurrent_layer_runs_as_a_cell_and_matches_onnxruntime(name: str, tmp_path: Path) -> None:
    case = CASES[name]
    model = case.model
    ins, outs = case.data_sets[0]
    values = dict(zip([i.name for i in model.graph.input], ins, strict=False))
    bound = weight_inputs(model)
    bound_model = bind_weights(model, {k: values[k] for k in bound})
    prog = compile_model(bound_model)
    node = model.graph.node[0]
    assert [s.kind for s in prog.stages] == ["recurrent"]
    directions = 2 if b"bidirectional" in [a.s for a in node.attribute if a.name == "direction"] else 1
    per_direction = 3 if node.op_type == "GRU" else 1  # GRU: [W;R] for z, r; W_h; R_h
    assert len(prog.mvms) == directions * per_direction and prog.tiles_used()
    saved = load_program(save_program(prog, tmp_path / "p.anac"))
    feeds = {k: v for k, v in values.items() if k not in bound}
    got = simulate(saved, feeds)
    for o, ref in zip(model.graph.output, outs, strict=True):  # the suite's own expected outputs
        ref = np.asarray(ref)
        assert got[o.name].shape == ref.shape
        assert np.linalg.norm(got[o.name] - ref) <= 1e-5 * max(np.linalg.norm(ref), 1e-30)
    if "batchwise" in name:
        return  # onnxruntime 1.32 refuses layout=1 ("Batchwise recurrent operations are not supported")
    report = verify(bound_model, program=saved, inputs=feeds)
    # The suite's weights are constants, so an output can be constant: verify fails it as carrying no
    # information; every figure must still match onnxruntime.
    other = [p for p in report.problems if "carries no information" not in p]
    assert not other and all(o.rel_err <= 1e-5 for o in report.outputs.values()), report.to_json()


@pytest.mark.parametrize("op,attrs", [
    ("LSTM", {"activations": ["HardSigmoid", "Tanh", "Relu"], "activation_alpha": [0.3, 1.0, 1.0],
              "activation_beta": [0.4, 1.0, 1.0], "clip": 0.8, "input_forget": 1}),
    ("GRU", {"activations": ["Sigmoid", "LeakyRelu"] * 2, "activation_alpha": [1.0, 0.1] * 2, "clip": 1.5,
             "linear_before_reset": 1, "direction": "bidirectional"}),
    ("RNN", {"activations": ["Relu"], "direction": "reverse"}),
])
def test_activation_clip_and_gate_options_match_onnxruntime(op: str, attrs: dict, rng: np.random.Generator) -> None:  # type: ignore[type-arg]
    from helpers import const, make_model, node, tensor

    hidden, n_in, dirs = 6, 5, 2 if attrs.get("direction") == "bidirectional" else 1
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    w = (rng.standard_normal((dirs, gates * hidden, n_in)) * 0.5).astype(np.float32)
    r = (rng.standard_normal((dirs, gates * hidden, hidden)) * 0.5).astype(np.float32)
    b = (rng.standard_normal((dirs, 2 * gates * hidden)) * 0.1).astype(np.float32)
    lens = np.array([7, 4, 1], np.int32)
    model = make_model([node(op, ["x", "w", "r", "b", "lens"], ["y", "y_h"], name="rec", hidden_size=hidden, **attrs)],
                       [tensor("x", [7, 3, n_in])],
                       [tensor("y", [7, dirs, 3, hidden]), tensor("y_h", [dirs, 3, hidden])],
                       [const("w", w), const("r", r), const("b", b), const("lens", lens)])
    report = verify(model, inputs={"x": rng.standard_normal((7, 3, n_in)).astype(np.float32)})
    assert report.passed and all(o.rel_err <= 1e-5 for o in report.outputs.values()), report.to_json()


def test_nan_recurrent_weights_name_the_node(rng: np.random.Generator) -> None:
    from anac.core.errors import UnsupportedModelError
    from helpers import const, make_model, node, tensor

    w = rng.standard_normal((1, 12, 4)).astype(np.float32)
    r = rng.standard_normal((1, 12, 3)).astype(np.float32)
    r[0, 5, 1] = np.nan
    model = make_model([node("LSTM", ["x", "w", "r"], ["y"], name="enc", hidden_size=3)], [tensor("x", [5, 2, 4])],
                       [tensor("y", [5, 1, 2, 3])], [const("w", w), const("r", r)])
    with pytest.raises(UnsupportedModelError, match=r"'enc' \(LSTM\): its R holds 1 NaN and 0 Inf"):
        compile_model(model)
