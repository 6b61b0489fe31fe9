"""prune_inputs: dead rows always go; requested rows are the most important; the program gathers them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import compile_model, load_program, save_program, simulate, verify
from anac.core.errors import AnacError
from helpers import const, make_model, node, tensor, weights

MODELS = Path(__file__).parents[2] / "models"


def _mlp(rng: np.random.Generator, w0: np.ndarray):  # type: ignore[no-untyped-def]
    return make_model([node("Gemm", ["x", "w0", "b0"], ["h"], name="fc0"), node("Relu", ["h"], ["r"], name="relu"),
                       node("Gemm", ["r", "w1"], ["y"], name="fc1")],
                      [tensor("x", [8, w0.shape[0]])], [tensor("y", [8, 10])],
                      [const("w0", w0), const("b0", weights(rng, w0.shape[1])),
                       const("w1", weights(rng, w0.shape[1], 10))])


def test_all_zero_rows_are_always_removed_and_outputs_unchanged(rng: np.random.Generator) -> None:
    w0 = weights(rng, 300, 40)
    dead = [3, 77, 150, 299]
    w0[dead] = 0
    model = _mlp(rng, w0)
    prog = compile_model(model)
    m = prog.matrices["fc0"]
    assert m.shape == (296, 40) and m.input_rows == 300
    assert sorted(set(range(300)) - set(m.kept_rows.tolist())) == dead
    assert prog.pruning == {"fc0": {"rows": 300, "kept": 296}}
    rep = verify(model, program=prog, batch=None)
    assert rep.passed, rep.to_json()  # removing zero rows changes nothing


def test_pruning_keeps_exactly_the_rows_with_the_largest_norms(rng: np.random.Generator) -> None:
    w0 = weights(rng, 300, 40)
    model = _mlp(rng, w0)
    prog = compile_model(model, options={"prune": "fc0=100"})
    kept = prog.matrices["fc0"].kept_rows
    norms = np.linalg.norm(w0, axis=1)
    assert len(kept) == 100 and list(kept) == sorted(kept)
    assert set(kept) == set(np.argsort(-norms, kind="stable")[:100])
    np.testing.assert_array_equal(prog.matrices["fc0"].weights, w0[kept])


def test_pruned_program_equals_the_model_with_pruned_rows_zeroed(rng: np.random.Generator, tmp_path: Path) -> None:
    w0 = weights(rng, 700, 40)
    model = _mlp(rng, w0)
    prog = load_program(save_program(compile_model(model, options={"prune": "fc0=200"}), tmp_path / "p.anac"))
    zeroed = w0.copy()
    zeroed[np.setdiff1d(np.arange(700), prog.matrices["fc0"].kept_rows)] = 0
    model_zeroed = onnx.ModelProto()
    model_zeroed.CopyFrom(model)
    for init in model_zeroed.graph.initializer:
        if init.name == "w0":
            init.CopyFrom(onnx.numpy_helper.from_array(zeroed, "w0"))
    prog.model_digest = None  # compared on purpose with a model it was not compiled from
    rep = verify(model_zeroed, program=prog)
    assert rep.passed and rep.outputs["y"].rel_err <= 1e-6, rep.to_json()
    # Against the unpruned original the difference is what pruning costs, and verify measures it.
    rep_orig = verify(model, program=prog, tolerance=1.0)
    assert rep_orig.outputs["y"].rel_err > 1e-3


def test_row_scale_from_calibration_changes_the_choice(rng: np.random.Generator) -> None:
    w0 = np.ones((64, 8), np.float32)  # equal norms: only the input scale can decide
    model = _mlp(rng, w0)
    x = rng.standard_normal((32, 64)).astype(np.float32)
    x[:, 40:50] *= 100.0  # these inputs carry the most signal
    prog = compile_model(model, options={"prune": "fc0=10"}, calibration_data={"x": x})
    assert list(prog.matrices["fc0"].kept_rows) == list(range(40, 50))


def test_auto_prunes_the_kws_first_layer_to_one_2pcm_tile() -> None:
    prog = compile_model(MODELS / "kws_mlp.onnx", options={"prune": "auto"})
    assert prog.pruning == {"fc0": {"rows": 1960, "kept": 1024}}
    assert prog.matrices["fc0"].encoding == "2-PCM"
    assert len(prog.tiles_used()) == 4  # the paper's keyword-spotting network ran on 4 tiles
    x = {"input": np.random.default_rng(0).standard_normal((1, 1960)).astype(np.float32)}
    gathered = x["input"][:, prog.matrices["fc0"].kept_rows]
    assert simulate(prog, x)["logits"].shape == (1, 12) and gathered.shape == (1, 1024)


def test_auto_leaves_layers_that_already_fit(rng: np.random.Generator) -> None:
    prog = compile_model(_mlp(rng, weights(rng, 500, 40)), options={"prune": "auto"})
    assert prog.pruning == {} and prog.matrices["fc0"].encoding == "4-PCM"


@pytest.mark.parametrize("spec,match", [("fc9=10", "fc9"), ("fc0", "not LAYER=ROWS"), ("fc0=0", "at least one")])
def test_bad_prune_requests(rng: np.random.Generator, spec: str, match: str) -> None:
    with pytest.raises(AnacError, match=match):
        compile_model(_mlp(rng, weights(rng, 50, 8)), options={"prune": spec})
