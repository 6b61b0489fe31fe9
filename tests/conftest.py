"""Shared fixtures; the importable ONNX builders are in tests/helpers.py."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every test draws the same weights on every run."""
    return np.random.default_rng(0)

# The builders, re-exported so `from conftest import make_model` also works; prefer `from helpers import ...`.
from helpers import make_model, save  # noqa: E402, F401
