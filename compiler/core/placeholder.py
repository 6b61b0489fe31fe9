"""Weights without bytes: shape-only stand-ins for the tensors a plan does not read.

``anac plan`` reads a model's graph and shapes but not its weights. Each
weight it does not read becomes a placeholder: a read-only, zero-stride view
of one zero of the tensor's dtype (``np.broadcast_to``), so it has the shape,
dtype and size of the real tensor and takes 1 element of memory; transposes,
slices and reshapes of it stay placeholders. Passes that only look at shapes
run on it unchanged; code that reads weight values checks ``is_placeholder``
and skips the values (no pruning of zero rows, no finiteness check, no
conductances).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

_ZEROS: dict[np.dtype, np.ndarray] = {}

# Set as the external-data location of a placeholder written into an ONNX model (a plan's host stages).
NOT_LOADED = "(not loaded: planned without weights)"


def placeholder(shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """A read-only view of ``shape`` and ``dtype`` over a single zero."""
    dt = np.dtype(dtype)
    if dt not in _ZEROS:
        _ZEROS[dt] = np.zeros((), dt)
    return np.broadcast_to(_ZEROS[dt], tuple(int(d) for d in shape))


def is_placeholder(a: object) -> bool:
    """Whether ``a`` is (a view of) a placeholder: it has no values of its own."""
    if not isinstance(a, np.ndarray) or a.size <= 1 or any(a.strides):
        return False
    zero = _ZEROS.get(a.dtype)
    return zero is not None and np.may_share_memory(a, zero)


def tensor_proto(a: np.ndarray, name: str) -> onnx.TensorProto:
    """``numpy_helper.from_array``, except that a placeholder becomes a header whose data is marked not loaded."""
    if not is_placeholder(a):
        return onnx.numpy_helper.from_array(a, name)
    t = onnx.TensorProto(name=name, data_type=onnx.helper.np_dtype_to_tensor_dtype(a.dtype), dims=list(a.shape),
                         data_location=onnx.TensorProto.EXTERNAL)
    t.external_data.add(key="location", value=NOT_LOADED)
    return t
