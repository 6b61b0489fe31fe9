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

import onnx


def model_digest(model: onnx.ModelProto) -> str:
    """``blake2b-crc32:<hex>`` of the model's graph and weights (see the module docstring)."""
    h = hashlib.blake2b(digest_size=16)
    g = model.graph
    for part in (*g.input, *g.output, *g.node):
        h.update(part.SerializeToString(deterministic=True))
    for t in (*g.initializer, *(s.values for s in g.sparse_initializer)):
        h.update(f"{t.name}\0{t.data_type}\0{list(t.dims)}\0".encode())
        if t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data"):
            h.update(repr([(e.key, e.value) for e in t.external_data]).encode())
        elif t.HasField("raw_data"):
            h.update(f"{len(t.raw_data)}:{zlib.crc32(t.raw_data)}".encode())
        else:
            h.update(onnx.TensorProto(data_type=t.data_type, dims=t.dims, float_data=t.float_data,
                                      int32_data=t.int32_data, int64_data=t.int64_data,
                                      double_data=t.double_data, uint64_data=t.uint64_data,
                                      string_data=t.string_data).SerializeToString(deterministic=True))
    return "blake2b-crc32:" + h.hexdigest()
