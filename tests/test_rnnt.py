"""The small RNN-T-shaped model (MLPerf layer structure, widths / 32): ideal and hardware mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from anac.api import compile_model, verify

MODEL = Path(__file__).parents[1] / "models" / "rnnt_small.onnx"
SHAPES = {"features": (8, 2, 8), "tokens": (3, 2)}


def _inputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {"features": rng.standard_normal(SHAPES["features"]).astype(np.float32),
            "tokens": rng.integers(0, 28, SHAPES["tokens"]).astype(np.int64)}


def test_rnnt_small_maps_every_lstm_and_the_joint_to_crossbars() -> None:
    prog = compile_model(MODEL, input_shapes=SHAPES)
    assert sorted(prog.recurrent) == ["enc1", "enc2", "enc3", "enc4", "enc5", "pred1", "pred2"]
    assert {m for m in prog.mvms if not m.endswith("/WR")} == {"joint.fc1", "joint.fc2"}
    assert [s.kind for s in prog.stages].count("recurrent") == 7
    # The embedding lookup (Gather on a constant table) stays on the host.
    assert any(prog.graph.node(n).op_type == "Gather" for s in prog.stages if s.kind == "host" for n in s.nodes)
    # [W; R] stacked: enc3 reads the time-stacked 2 x 32 features plus its 32 hidden units.
    assert prog.matrices["enc3/d0/WR"].shape == (64 + 32, 4 * 32)


def test_rnnt_small_ideal_matches_onnxruntime() -> None:
    report = verify(MODEL, inputs=_inputs())
    assert report.passed and report.outputs["logits"].rel_err <= 1e-5, report.to_json()


def test_rnnt_small_hardware_mode_at_1s_and_1d() -> None:
    rep = verify(MODEL, inputs=_inputs(), mode="hardware", times="1s,1d", repeats=2,
                 calibration_data={k: np.concatenate([v] * 4)  # four batches of the compiled shape
                                   for k, v in _inputs().items()})
    errs = [t.outputs["logits"]["rel_err"].mean for t in rep.times]
    assert [t.label for t in rep.times] == ["1s", "1d"]
    assert all(0 < e < 0.1 for e in errs), errs  # seven LSTM layers of PCM noise and 8-bit I/O
    assert rep.passed


def _make_rnnt(**size: int):  # type: ignore[no-untyped-def]
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_rnnt", MODEL.parent / "make_rnnt.py")
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod.build({**mod.SMALL, **size})


def test_embedding_is_absorbed_when_it_saves_devices(tmp_path: Path) -> None:
    import json

    from anac.api import save_program

    model = _make_rnnt(pred=40)  # 28 tokens < 40 inputs: Emb @ W^T replaces 40 crossbar rows
    prog = compile_model(model, input_shapes=SHAPES)
    assert prog.recurrent["pred1"].absorbed == {"gather": "pred.emb", "vocab": 28, "input": 40, "rows_saved": 40}
    assert prog.matrices["pred1/d0/R"].shape == (40, 160) and "pred1/d0/WR" not in prog.matrices
    assert all("pred.emb" not in s.nodes for s in prog.stages)
    report = verify(model, program=prog, inputs=_inputs())
    assert report.passed, report.to_json()
    saved = json.loads((save_program(prog, tmp_path / "r.anac") / "report.json").read_text())
    assert saved["absorbed_embeddings"]["pred1"]["rows_saved"] == 40
    # The small model's 28-token table is wider than its 10 inputs: absorbing would cost devices.
    assert compile_model(MODEL, input_shapes=SHAPES).recurrent["pred1"].absorbed is None
