"""A digest of an ONNX model, stored in a program so verify can tell a program compiled from another model.

It covers the graph's structure (every node, input and output, hashed with
BLAKE2b) and every initializer's name, type, shape and bytes. The bytes are
reduced with CRC-32 where they lie in memory (no serialisation, no copy;
about four times BLAKE2b's speed, which matters on a compile whose floor is
one pass over the weights): it tells a different or retrained model, not one
forged to collide. An initializer whose external data is not loaded
contributes its location, offset and length instead of its bytes.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
from anac.core.placeholder import is_placeholder
from onnx import numpy_helper


def model_digest(model: onnx.ModelProto, values: Mapping[str, np.ndarray] | None = None) -> str:
    """``blake2b-crc32:<hex>`` of the model's graph and weights (see the module docstring).

    ``values``: the initializers already converted to arrays (the frontend's), so that their bytes are
    not copied out of the protobuf once more; the digest is the same either way.
    """
    h = hashlib.blake2b(digest_size=16)
    g = model.graph
    for part in (*g.input, *g.output, *g.node):
        h.update(part.SerializeToString(deterministic=True))
    for t in g.initializer:
        _tensor(h, t, values.get(t.name) if values is not None else None)
    for sp in g.sparse_initializer:  # the frontend's arrays of these are densified: hash the stored values
        _tensor(h, sp.values, None)
        h.update(repr(list(sp.dims)).encode())
        _tensor(h, sp.indices, None)
    return "blake2b-crc32:" + h.hexdigest()


def _tensor(h: Any, t: onnx.TensorProto, a: np.ndarray | None) -> None:
    """Feed one tensor to ``h``: name, type, dims, then its bytes' length and CRC-32 (``a``: its array, if made)."""
    h.update(f"{t.name}\0{t.data_type}\0{list(t.dims)}\0".encode())
    if t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data") and \
            (a is None or is_placeholder(a)):  # an external tensor whose values were not read: its reference
        h.update(repr([(e.key, e.value) for e in t.external_data]).encode())
    elif t.data_type == onnx.TensorProto.STRING:
        h.update(repr(list(t.string_data)).encode())
    else:
        if a is None or is_placeholder(a):
            a = numpy_helper.to_array(t)
        a = np.ascontiguousarray(a)
        h.update(f"{a.nbytes}:{zlib.crc32(a.reshape(-1).view(np.uint8))}".encode())
