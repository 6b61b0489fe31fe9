"""Host stages on onnxruntime: one session per host stage, made once per program."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from anac.core.errors import AnacError
from anac.core.program import Stage


def session_options() -> ort.SessionOptions:
    """Session options shared by host stages and the reference run (quiet logs)."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return so


def make_session(model: onnx.ModelProto | str, what: str) -> ort.InferenceSession:
    """An onnxruntime CPU session; failures become AnacErrors naming ``what``."""
    data = model if isinstance(model, str) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, session_options(), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise AnacError(f"onnxruntime cannot load {what}: {_first_line(e)}") from None


def run_session(sess: ort.InferenceSession, feeds: dict[str, Any], what: str) -> list[Any]:
    """Run a session; failures become AnacErrors naming ``what``."""
    try:
        return sess.run(None, feeds)
    except Exception as e:  # noqa: BLE001
        raise AnacError(f"onnxruntime failed running {what}: {_first_line(e)}") from None


class HostStages:
    """The host stages of a program, each with its onnxruntime session."""

    def __init__(self, stages: list[Stage]) -> None:
        self._sessions = {s.name: make_session(s.model, f"host stage {s.name}")  # type: ignore[arg-type]
                          for s in stages if s.kind == "host"}

    def run(self, stage: Stage, env: dict[str, Any]) -> None:
        """Run one host stage, reading its inputs from and writing its outputs to ``env``."""
        sess = self._sessions[stage.name]
        feeds = {i.name: env[i.name] for i in sess.get_inputs()}
        names = [o.name for o in sess.get_outputs()]
        env.update(zip(names, run_session(sess, feeds, f"host stage {stage.name} ({', '.join(stage.nodes[:3])}"
                                          f"{', ...' if len(stage.nodes) > 3 else ''})"), strict=True))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def as_array(value: Any) -> np.ndarray:
    """A tensor, or a sequence of maps (e.g. ZipMap output) as a 2-D array of its values."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value])
    return np.asarray(value)
