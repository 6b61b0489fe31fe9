"""anac: compile ONNX models to analog in-memory-computing chips.

    import anac
    sess = anac.InferenceSession("model.onnx")          # compile, then run like onnxruntime
    [y] = sess.run(None, {"x": x})

The package maps the project's folders: ``anac.core`` (compiler/core/: IR,
hardware spec, program, frontend, artifact) is what ``anac.passes`` (passes/)
and ``anac.backends`` (backends/) import; the front here (``anac.driver``,
``anac.api``, ``anac.session``, ``anac.backend``, ``anac.cli``, the reports)
drives them. Importing ``anac`` imports nothing else: the names below load on
first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "InferenceSession": "anac.session",
    "compile_model": "anac.api",
    "load_program": "anac.api",
    "save_program": "anac.api",
    "simulate": "anac.api",
    "verify": "anac.api",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anac' has no attribute '{name}'")
