"""Host stages on onnxruntime: sessions made when first run, at most a bounded number alive at once.

A host-stage session uses one intra-op thread by default: a session with its
own thread pool costs ~13 ms to make and ~12 MB of address space (thread
stacks), one without ~0.5 ms and ~1 MB, and host stages are mostly light
elementwise work between crossbars. A program with thousands of host stages
(a chain of MatMul/Sigmoid layers) never holds more than MAX_SESSIONS
sessions: the least recently run are dropped and remade when needed. Such a
program's sessions also go without onnxruntime's memory arena (~0.1 MB each
then): arenas keep large buffers for the next run, but reserve address space
per session, and made and dropped they left 2.7 GB of it after 2,000.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from anac.core.errors import AnacError
from anac.core.program import Stage

MAX_SESSIONS = 1024  # sessions alive at once in one simulator
ARENA_SESSIONS = 64  # a simulator with more sessions than this makes them without a memory arena


def session_options(threads: int = 0, arena: bool = True) -> ort.SessionOptions:
    """Session options shared by host stages and the reference run (quiet logs); ``threads`` intra-op
    threads, 0 for onnxruntime's default (one per core); ``arena``: onnxruntime's CPU memory arena."""
    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.enable_cpu_mem_arena = arena
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    return so


def make_session(model: onnx.ModelProto | str, what: str, threads: int = 0, arena: bool = True) -> ort.InferenceSession:
    """An onnxruntime CPU session; failures become AnacErrors naming ``what``."""
    data = model if isinstance(model, str) else model.SerializeToString()
    try:
        return ort.InferenceSession(data, session_options(threads, arena), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise AnacError(f"onnxruntime cannot load {what}: {_first_line(e)}") from None


def run_session(sess: ort.InferenceSession, feeds: dict[str, Any], what: str | Callable[[], str],
                names: list[str] | None = None) -> list[Any]:
    """Run a session (all outputs, or ``names``); failures become AnacErrors naming ``what``."""
    try:
        return sess.run(names, feeds)
    except Exception as e:  # noqa: BLE001
        raise AnacError(f"onnxruntime failed running {what if isinstance(what, str) else what()}: "
                        f"{_first_line(e)}") from None


class Sessions:
    """onnxruntime sessions made on first use and kept least-recently-used, at most ``limit`` at once."""

    def __init__(self, threads: int = 1, limit: int | None = None, arena: bool = True) -> None:
        self.threads, self.limit, self.arena = threads, limit or MAX_SESSIONS, arena
        self._live: OrderedDict[Hashable, tuple[ort.InferenceSession, list[str], list[str]]] = OrderedDict()

    def get(self, key: Hashable, model: onnx.ModelProto | Callable[[], onnx.ModelProto], what: str) -> tuple[
            ort.InferenceSession, list[str], list[str]]:
        """The session of ``model`` (or of the model it makes; made if not alive) with its input and output names."""
        entry = self._live.get(key)
        if entry is None:
            made = model if isinstance(model, onnx.ModelProto) else model()
            sess = make_session(made, what, self.threads, self.arena)
            entry = (sess, [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
            self._live[key] = entry
            if len(self._live) > self.limit:
                self._live.popitem(last=False)
        else:
            self._live.move_to_end(key)
        return entry

    def __len__(self) -> int:
        return len(self._live)


class HostStages:
    """The host stages of a program, run on onnxruntime sessions from a bounded cache."""

    def __init__(self, sessions: Sessions | None = None) -> None:
        self.sessions = Sessions() if sessions is None else sessions

    def run(self, stage: Stage, env: dict[str, Any]) -> None:
        """Run one host stage, reading its inputs from and writing its outputs to ``env``."""
        sess, inputs, outputs = self.sessions.get(stage.name, stage.model, f"host stage {stage.name}")  # type: ignore[arg-type]

        def what() -> str:
            return f"host stage {stage.name} ({', '.join(stage.nodes[:3])}{', ...' if len(stage.nodes) > 3 else ''})"

        env.update(zip(outputs, run_session(sess, {n: env[n] for n in inputs}, what), strict=True))


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def as_array(value: Any) -> np.ndarray:
    """A tensor, or a sequence of maps (e.g. ZipMap output) as a 2-D array of its values."""
    if isinstance(value, list) and value and isinstance(value[0], dict):
        keys = sorted(value[0])
        return np.array([[row[k] for k in keys] for row in value])
    return np.asarray(value)
