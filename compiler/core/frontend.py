"""ONNX -> Graph: load, bind input shapes, fold constants, infer shapes, check.

What it expects: an ONNX file or ModelProto from any exporter. What it
produces: a ``Graph`` whose weights are numpy constants (Constant,
ConstantOfShape and Shape-derived subgraphs folded), every node named and
shape-inferred, dead nodes removed, and every node either crossbar-mappable
or runnable by onnxruntime; otherwise one error lists all offending nodes.

Without weights (``weights=False``, what ``anac plan`` uses) no weight value
is read: every tensor of more than ``_SMALL_CONSTANT`` elements, and every
external tensor that is not a small integer tensor, becomes a shape-only
placeholder (anac.core.placeholder); a model's external data is never read
beyond the small integer tensors, which may set shapes (Reshape, Expand,
Slice arguments). With weights, a model whose weights do not fit in the
available memory is refused before they are read.
"""

from __future__ import annotations

import logging
import mmap
import os
import sys
from collections.abc import Mapping, Sequence
from functools import lru_cache, reduce
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnx.version_converter
from anac.core.digest import model_digest
from anac.core.errors import (
    InsufficientMemoryError,
    InvalidWeightsError,
    ModelLoadError,
    ShapeError,
    UnsupportedModelError,
)
from anac.core.ir import Dim, Graph, Node, TensorInfo, node_reads
from anac.core.lowering import ANALOG_OPS, lower
from anac.core.placeholder import is_placeholder, placeholder
from anac.core.recurrent import RECURRENT_OPS, lower_recurrent
from google.protobuf.message import DecodeError, Message
from onnx import numpy_helper

log = logging.getLogger(__name__)

# Ops whose output depends on more than their inputs: never folded.
_NO_FOLD = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
            "Bernoulli", "If", "Loop", "Scan", "SequenceMap"}
# Constants this small go to shape inference as initializers, so data propagation sees them.
_SMALL_CONSTANT = 4096
_FOLD_ROUNDS = 4


def load_onnx(source: str | Path | onnx.ModelProto, *, weights: bool = True, stream: bool = False) -> onnx.ModelProto:
    """Read an ONNX file (or take a ModelProto) and check its structure; failures are ModelLoadErrors.

    With ``weights`` the external data is read, after checking that the weights
    fit in memory (``check_memory``); without, only the small integer tensors of
    the external data are (see the module docstring). With ``stream`` (and
    ``weights``, from a file) the graph's initializers are not read into the
    model at all: large embedded ones are left out of the parse and, like the
    external ones, marked as external data at an absolute location (the model
    file itself for embedded bytes), which ``import_model`` reads straight into
    the arrays; so the parsed model and the arrays never both hold the weights.
    Such a model is for ``import_model`` only. onnx.checker is not run:
    its complaints could only be warnings (exporters write models it rejects
    that onnxruntime runs), it parses the file a second time (a third of
    ResNet-18's compile floor), and the frontend's structure check, shape
    inference and onnxruntime refuse what would break a compile.
    """
    if isinstance(source, onnx.ModelProto):
        model, where = source, "the model"
    else:
        path = Path(source)
        where = str(path)
        if not path.exists():
            raise ModelLoadError(f"{path}: no such file")
        if path.is_dir():
            raise ModelLoadError(f"{path} is a directory, not an ONNX file")
        if weights:  # the file's own bytes (embedded weights) are parsed by onnx.load: check them first
            check_memory(path, path.stat().st_size, "its file")
        stripped: dict[int, tuple[int, int]] = {}
        try:
            parsed = _parse_stripped(path) if weights and stream else None
            if parsed is None:
                model = onnx.load(str(path), load_external_data=False)
            else:
                model, stripped = parsed
        except (DecodeError, ValueError, RuntimeWarning) as e:
            raise ModelLoadError(f"{path} is not a readable ONNX model (truncated or not ONNX): {e}") from None
        except OSError as e:
            raise ModelLoadError(f"cannot read {path}: {e}") from None
        if weights:
            check_memory(path, weight_bytes(model, path.stat().st_size), "its weights")
            if stream:  # the graph's external initializers are read by import_model, the rest (rare) here
                top, rest = _external_tensors(model, split=True)
                _load_external_data(path, top + rest, streamed=len(top))
            else:
                _load_external_data(path, _external_tensors(model))
            for i, (offset, length) in stripped.items():
                _mark_external(model.graph.initializer[i], path.resolve(), offset, length)
        else:
            _load_external_data(path, [t for t in _external_tensors(model) if _shape_like(t)])
    if not model.HasField("graph") or (not model.graph.node and not model.graph.output):
        raise ModelLoadError(f"{where} holds no ONNX graph (truncated or not an ONNX file)")
    if model.ir_version <= 0:
        raise ModelLoadError(f"{where} has no IR version; it is not an ONNX model")
    return model


def _external_tensors(model: onnx.ModelProto, split: bool = False) -> Any:
    """The model's tensors kept in external files; with ``split``, (the graph's initializers, the others)."""
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    every = list(_get_all_tensors(model))  # the graph's own initializers come first
    if not split:
        return [t for t in every if uses_external_data(t)]
    n = len(model.graph.initializer)
    return [t for t in every[:n] if uses_external_data(t)], [t for t in every[n:] if uses_external_data(t)]


def _shape_like(t: onnx.TensorProto) -> bool:
    """An integer tensor small enough to be a shape argument: read even when weights are not."""
    integer = t.data_type in (onnx.TensorProto.INT64, onnx.TensorProto.INT32)
    return integer and int(np.prod(t.dims, dtype=np.int64)) <= _SMALL_CONSTANT


def _load_external_data(path: Path, tensors: list[onnx.TensorProto], streamed: int = 0) -> None:
    """Read ``tensors`` of the model loaded from ``path``, kept in external files, each of which must be a
    relative path inside the model's directory that exists: a missing .onnx.data file (the exporter wrote
    model.onnx + model.onnx.data and only the .onnx was copied), an absolute or '../' location or a symlink out
    is a ModelLoadError naming the tensor, the file expected and where it was looked for. The first ``streamed``
    tensors are not read but their location made absolute (import_model reads them into their arrays)."""
    from onnx.external_data_helper import load_external_data_for_tensor

    if not tensors:
        return
    base = path.parent.resolve()
    for t in tensors:
        location = next((e.value for e in t.external_data if e.key == "location"), "")
        looked = base / location
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise ModelLoadError(f"{path}: tensor '{t.name}' keeps its data at {location!r}; an external-data "
                                 f"location must be a file name relative to the model's directory {base}")
        if not looked.resolve().is_relative_to(base):
            raise ModelLoadError(f"{path}: tensor '{t.name}' keeps its data in {location}, which leads outside "
                                 f"the model's directory {base} (to {looked.resolve()})")
        if not looked.is_file():
            raise ModelLoadError(f"{path}: tensor '{t.name}' keeps its data in the external file {location}, "
                                 f"looked for at {looked}: no such file (copy it beside the .onnx file; "
                                 f"exporters write model.onnx and model.onnx.data together)")
    for t in tensors[:streamed]:
        info = {e.key: e.value for e in t.external_data}
        try:
            offset, length = int(info.get("offset") or 0), int(info["length"]) if info.get("length") else None
        except ValueError:
            raise ModelLoadError(f"{path}: tensor '{t.name}' has external-data offset {info.get('offset')!r} and "
                                 f"length {info.get('length')!r}; each must be a whole number of bytes") from None
        _mark_external(t, (base / info["location"]).resolve(), offset, length)
    tensors = tensors[streamed:]
    try:
        for t in tensors:
            load_external_data_for_tensor(t, str(base))
    except (OSError, ValueError, onnx.checker.ValidationError) as e:
        raise ModelLoadError(f"cannot read the external data of {path} (in {base}): {e}") from None


def _mark_external(t: onnx.TensorProto, location: Path, offset: int, length: int | None) -> None:
    """Make ``t`` refer to its bytes at ``offset`` of the file ``location`` (absolute), holding none itself."""
    t.ClearField("raw_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    del t.external_data[:]
    entries = [("location", str(location)), ("offset", str(offset))] + \
        ([("length", str(length))] if length is not None else [])
    for key, value in entries:
        t.external_data.add(key=key, value=value)


def _read_external(t: onnx.TensorProto) -> np.ndarray:
    """An external tensor's values, read from its file straight into the array (np.fromfile: no copy of the
    bytes in the model); its location as the model gives it (absolute after ``load_onnx(stream=True)``)."""
    info = {e.key: e.value for e in t.external_data}
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    n = int(np.prod(t.dims, dtype=np.int64))
    try:
        offset, length = int(info.get("offset") or 0), int(info["length"]) if info.get("length") else None
    except ValueError:
        raise ModelLoadError(f"weight '{t.name}' has external-data offset {info.get('offset')!r} and length "
                             f"{info.get('length')!r}; each must be a whole number of bytes") from None
    _check_raw_length(t, n * dtype.itemsize if length is None else length, "the model")
    try:
        with open(info.get("location", ""), "rb") as f:
            values = np.fromfile(f, dtype=dtype, count=n, offset=offset)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read the data of weight '{t.name}' from {info.get('location')}: {e}") from None
    if values.size != n:
        raise ModelLoadError(f"weight '{t.name}' has dims {list(t.dims)} ({n:,} values) but its data in "
                             f"{info.get('location')} (from byte {offset:,}) ends after {values.size:,}")
    return values.reshape(tuple(t.dims))


def _streamable(t: onnx.TensorProto) -> bool:
    """An external tensor ``_read_external`` reads (plain little-endian values, not packed sub-byte ones)."""
    return t.data_location == onnx.TensorProto.EXTERNAL and not t.HasField("raw_data") and \
        t.data_type not in _PACKED and t.data_type != onnx.TensorProto.STRING and sys.byteorder == "little"


# Embedded weights at least this large are left out of a streamed parse (load_onnx(stream=True)).
_STREAM_MIN_BYTES = 1 << 16


class _Unwalkable(Exception):
    """The file is not in the plain protobuf encoding _strip walks: parse it whole instead."""


def _parse_stripped(path: Path) -> tuple[onnx.ModelProto, dict[int, tuple[int, int]]] | None:
    """Parse the ONNX file without the raw bytes of the graph's large initializers: the model, and per such
    initializer (by index) the offset and length of its bytes in the file. None when the file cannot be
    walked as plain protobuf (then onnx.load parses it whole and reports what is wrong with it)."""
    with open(path, "rb") as f:
        try:
            buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (ValueError, OSError):  # an empty file, or one that cannot be mapped
            return None
        with buf:
            try:
                skeleton, stripped = _strip(buf)
            except _Unwalkable:
                return None
    return onnx.load_model_from_string(skeleton), stripped


def _strip(buf: Any) -> tuple[bytes, dict[int, tuple[int, int]]]:
    """The serialized model with ModelProto.graph's initializers' raw_data (TensorProto field 9) of at least
    _STREAM_MIN_BYTES left out, and where each was; every other byte as it was (fields in their order)."""
    out: list[bytes] = []
    stripped: dict[int, tuple[int, int]] = {}
    index = 0  # the initializer's position in model.graph.initializer
    for field, wire, start, value, end in _fields(buf, 0, len(buf)):
        if (field, wire) != (7, 2):  # ModelProto.graph
            out.append(buf[start:end])
            continue
        graph: list[bytes] = []
        for field2, wire2, start2, value2, end2 in _fields(buf, value, end):
            if (field2, wire2) != (5, 2) or end2 - value2 < _STREAM_MIN_BYTES:  # not a (large) initializer
                index += (field2, wire2) == (5, 2)
                graph.append(buf[start2:end2])
                continue
            kept: list[bytes] = []
            for field3, wire3, start3, value3, end3 in _fields(buf, value2, end2):
                if (field3, wire3) == (9, 2) and end3 - value3 >= _STREAM_MIN_BYTES:
                    stripped[index] = (value3, end3 - value3)
                else:
                    kept.append(buf[start3:end3])
            index += 1
            graph.append(_length_delimited(5, b"".join(kept)) if index - 1 in stripped else buf[start2:end2])
        out.append(_length_delimited(7, b"".join(graph)))
    return b"".join(out), stripped


def _fields(buf: Any, pos: int, end: int) -> Any:
    """(field number, wire type, start of the field, start of its value, end) for each field in buf[pos:end]."""
    while pos < end:
        start = pos
        key, pos = _varint(buf, pos, end)
        wire = key & 7
        if wire == 0:
            _, pos = _varint(buf, pos, end)
            value = start
        elif wire in (1, 5):
            value, pos = pos, pos + (8 if wire == 1 else 4)
        elif wire == 2:
            size, value = _varint(buf, pos, end)
            pos = value + size
        else:  # groups (3, 4) are not used by ONNX; anything else is not protobuf
            raise _Unwalkable
        if pos > end or key >> 3 == 0:
            raise _Unwalkable
        yield key >> 3, wire, start, value, pos


def _varint(buf: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = buf[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _Unwalkable


def _length_delimited(field: int, body: bytes) -> bytes:
    """A length-delimited protobuf field (a field number up to 15: a one-byte key), then the varint length."""
    head, n = bytearray([field << 3 | 2]), len(body)
    while n > 0x7F:
        head.append(n & 0x7F | 0x80)
        n >>= 7
    head.append(n)
    return bytes(head) + body


# Compile's peak memory over the weights' bytes: the bound issue 13 sets (benchmarks/bench_rnnt.py measures it).
COMPILE_MEMORY_FACTOR = 2.5
MEMORY_ENV = "ANAC_MEMORY_LIMIT"  # bytes (suffixes K, M, G, T: powers of 1024) anac may use, for tests and batch jobs


def weight_bytes(model: onnx.ModelProto, file_bytes: int | None = None) -> int:
    """Bytes of the model's initializers, from their headers: an external tensor's length (or dims x item
    size), an embedded one's dims x item size. Embedded data lies in the file, so with ``file_bytes`` their
    sum counts at most the file's size (a tensor whose dims disagree with its data is refused later, by name).
    No tensor's bytes are touched: reading raw_data from a parsed model copies it."""
    embedded = external = 0
    for t in model.graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL:
            embedded += _nbytes(t.data_type, t.dims)
            continue
        length = next((e.value for e in t.external_data if e.key == "length"), None)
        external += int(length) if length is not None and length.isdigit() else _nbytes(t.data_type, t.dims)
    embedded += sum(_nbytes(sp.values.data_type, sp.dims) for sp in model.graph.sparse_initializer)
    return external + (embedded if file_bytes is None else min(embedded, file_bytes))


def _nbytes(data_type: int, dims: Sequence[int]) -> int:
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        size = 1
    return int(np.prod(dims, dtype=np.float64)) * size


def available_memory() -> tuple[int, str]:
    """Bytes of memory anac may use, and where that figure comes from.

    ``ANAC_MEMORY_LIMIT`` when set; else the kernel's MemAvailable, lowered to the
    room left under a cgroup (v2) memory limit when there is one.
    """
    env = os.environ.get(MEMORY_ENV)
    if env is not None:
        return _parse_bytes(env), f"{MEMORY_ENV}={env}"
    avail, source = None, "MemAvailable"
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        avail, source = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "free pages"
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if limit.isdigit() and int(limit) - used < avail:
            avail, source = max(0, int(limit) - used), "the cgroup's memory.max less memory.current"
    except (OSError, ValueError):
        pass
    return avail, source


def _parse_bytes(text: str) -> int:
    units = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = t[-1:] if t[-1:] in units else ""
    try:
        value = float(t[:len(t) - len(unit)])
        if not value >= 0 or value == float("inf"):
            raise ValueError
    except ValueError:
        raise ModelLoadError(f"{MEMORY_ENV}={text!r} is not a size in bytes (for example 512M or 16G)") from None
    return int(value * units[unit])


def check_memory(path: Path, nbytes: int, what: str) -> None:
    """Refuse, before reading them, weights that would not fit: compile needs about COMPILE_MEMORY_FACTOR x
    their bytes and ``available_memory()`` gives less (an InsufficientMemoryError with both figures)."""
    need = int(COMPILE_MEMORY_FACTOR * nbytes)
    avail, source = available_memory()
    hint = "" if source.startswith(MEMORY_ENV) else f"; {MEMORY_ENV} overrides it"
    if need > avail:
        raise InsufficientMemoryError(
            f"{path}: {what} take {_gib(nbytes)} and compiling peaks at about {COMPILE_MEMORY_FACTOR}x that, so it "
            f"needs {_gib(need)}; {_gib(avail)} is available ({source}{hint}). Nothing was "
            f"loaded. `anac plan {path}` reports the tiles, chips, encodings, placement, link traffic and "
            f"estimates from the model's shapes without reading its weights")


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB ({n:,} bytes)"


def import_model(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 default_dim: int | None = None, batch: int | None = None, weights: bool = True) -> Graph:
    """Lower a loaded ModelProto to a Graph with bound shapes and folded constants.

    Symbolic input dims take their value from ``input_shapes`` (by input, and by
    dim name across inputs); a symbolic leading (batch) dim then takes ``batch``
    (default 1, said once on the log); any other dim takes ``default_dim`` when
    given, else it is an error. Without ``weights``, large and unloaded
    tensors are placeholders, and so is what folds from them.
    """
    check_structure(model)
    streamed = {t.name: _read_external(t) for t in model.graph.initializer if weights and _streamable(t)}
    original, model = model, _upgrade_opset(model)
    g = model.graph
    opset = _opsets(model)
    constants = {t.name: streamed.pop(t.name) if t.name in streamed else _constant(t, weights)
                 for t in g.initializer}
    digest = model_digest(original, constants) if weights else None  # from the arrays: no copy of the bytes
    for sp in g.sparse_initializer:
        if not weights and int(np.prod(sp.dims, dtype=np.int64)) > _SMALL_CONSTANT:
            constants[sp.values.name] = placeholder(sp.dims, onnx.helper.tensor_dtype_to_np_dtype(
                sp.values.data_type))
            continue
        constants[sp.values.name] = numpy_helper.to_array(onnx.helper.make_tensor(  # densify
            sp.values.name, sp.values.data_type, list(sp.dims), _densify(sp)))
    inputs = [tensor_info(v) for v in g.input if v.name not in constants]
    outputs = [tensor_info(v) for v in g.output]
    inputs = _bind_shapes(inputs, input_shapes or {}, default_dim, batch)
    nodes = _named_nodes(g.node)
    graph = Graph(g.name or "model", nodes, inputs, outputs, constants, {}, opset, int(model.ir_version),
                  tuple(_detached(f, onnx.FunctionProto) for f in model.functions), digest)
    _eliminate_dead(graph)
    for _ in range(_FOLD_ROUNDS):
        _infer_shapes(graph)
        if not _fold_constants(graph):
            break
        _eliminate_dead(graph)
    _infer_shapes(graph)
    graph.outputs = [graph.value_info.get(t.name, t) if not t.is_static else t for t in graph.outputs]
    return graph


def _constant(t: onnx.TensorProto, weights: bool) -> np.ndarray:
    """The tensor's values; without ``weights``, a placeholder for a large or unloaded numeric tensor."""
    unloaded = t.data_location == onnx.TensorProto.EXTERNAL
    if not weights and t.data_type != onnx.TensorProto.STRING and \
            (unloaded or int(np.prod(t.dims, dtype=np.int64)) > _SMALL_CONSTANT):
        if t.HasField("raw_data"):
            _check_raw_length(t, len(t.raw_data), "the model")
        return placeholder(t.dims, onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
    if t.HasField("raw_data") and t.data_type not in _PACKED and sys.byteorder == "little":
        raw = t.raw_data  # a copy of the proto's bytes: the array is a view of it, not a second copy
        _check_raw_length(t, len(raw), "the model")
        return np.frombuffer(raw, dtype=onnx.helper.tensor_dtype_to_np_dtype(t.data_type)).reshape(tuple(t.dims))
    return numpy_helper.to_array(t)


MAX_ELEMENTS = 2**32  # a tensor (input or weight) of more elements is a malformed model, not a real one


def check_structure(model: onnx.ModelProto, where: str = "the model") -> None:
    """Refuse graphs that are malformed in ways that would crash later passes, each with a clear error: no nodes,
    an output that is directly an input, a weight whose stored bytes do not match its dims, negative or huge dims,
    an opset onnxruntime cannot run, string inputs, a cycle."""
    g = model.graph
    if not g.node:
        raise ModelLoadError(f"{where} has no nodes: there is nothing to compile")
    inits = {t.name for t in g.initializer} | {sp.values.name for sp in g.sparse_initializer}
    real_inputs = {v.name for v in g.input if v.name not in inits}
    direct = [o.name for o in g.output if o.name in real_inputs]
    if direct:
        raise ModelLoadError(f"{where}: output(s) {', '.join(direct)} are graph inputs passed straight through; "
                             f"anac compiles computations, remove them or add an Identity")
    for t in g.initializer:
        _check_initializer(t, where)
    for v in g.input:
        if v.name in inits or not v.type.HasField("tensor_type"):
            continue
        tt = v.type.tensor_type
        if tt.elem_type == onnx.TensorProto.STRING:
            raise UnsupportedModelError(f"{where}: input '{v.name}' is a string tensor; anac compiles numeric "
                                        f"models only (no crossbar or simulator input can be text)")
        dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
        if any(d < 0 for d in dims) or np.prod(dims, dtype=np.float64) > MAX_ELEMENTS:
            raise ShapeError(f"{where}: input '{v.name}' has dims {dims}: each must be >= 0 and the tensor at most "
                             f"{MAX_ELEMENTS:,} elements")
    _check_opset(model, where)
    _check_acyclic(g, where)


def _check_initializer(t: onnx.TensorProto, where: str) -> None:
    dims = list(t.dims)
    if any(d < 0 for d in dims) or np.prod(dims, dtype=np.float64) > MAX_ELEMENTS:
        raise ModelLoadError(f"{where}: weight '{t.name}' has dims {dims}: each must be >= 0 and the tensor at most "
                             f"{MAX_ELEMENTS:,} elements")
    if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type == onnx.TensorProto.STRING:
        return
    try:
        onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    except (KeyError, ValueError):
        raise ModelLoadError(f"{where}: weight '{t.name}' has unknown data type {t.data_type}") from None
    if t.HasField("raw_data"):
        if t.data_type in _PACKED:  # raw_data of other types is checked as it becomes an array (_constant)
            _check_raw_length(t, len(t.raw_data), where)
        return
    try:
        numpy_helper.to_array(t)
    except (ValueError, TypeError) as e:
        raise ModelLoadError(f"{where}: weight '{t.name}' does not match its dims {dims}: {e}") from None


_PACKED_2BIT = {getattr(onnx.TensorProto, n) for n in ("INT2", "UINT2") if hasattr(onnx.TensorProto, n)}
_PACKED_4BIT = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1") if hasattr(onnx.TensorProto, n)}
_PACKED_6BIT = {getattr(onnx.TensorProto, n) for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(onnx.TensorProto, n)}
_PACKED = _PACKED_2BIT | _PACKED_4BIT | _PACKED_6BIT


def _check_raw_length(t: onnx.TensorProto, length: int, where: str) -> None:
    """Refuse a weight whose raw_data holds other than the bytes its dims and type need."""
    dims = list(t.dims)
    dtype = onnx.helper.tensor_dtype_to_np_dtype(t.data_type)
    n = int(np.prod(dims, dtype=np.int64))
    want = (n + 1) // 2 if t.data_type in _PACKED_4BIT else (n + 3) // 4 if t.data_type in _PACKED_2BIT \
        else (6 * n + 7) // 8 if t.data_type in _PACKED_6BIT else n * dtype.itemsize
    if length != want:
        raise ModelLoadError(f"{where}: weight '{t.name}' has dims {dims} ({dtype}, {want} bytes) but holds "
                             f"{length} bytes of raw_data")


def _check_opset(model: onnx.ModelProto, where: str) -> None:
    current = _opsets(model).get("")
    if current is None:
        return
    known = onnx.defs.onnx_opset_version()
    ort = max((lo for (d, _), ranges in _ort_kernels().items() if d == "" for lo, _ in ranges), default=known)
    if current > known or current < 1:
        import onnxruntime

        raise UnsupportedModelError(f"{where} uses opset {current} of the default ONNX domain; onnx "
                                    f"{onnx.__version__} knows opsets 1 to {known} and onnxruntime "
                                    f"{onnxruntime.__version__} runs up to about {ort}: re-export at opset <= {known}")


def _check_acyclic(g: onnx.GraphProto, where: str) -> None:
    """Kahn's algorithm over the top-level nodes; tensors nobody produces count as available."""
    producer: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for o in n.output:
            if o:
                producer[o] = i
    waiting = [sum(1 for x in set(n.input) if x and producer.get(x, i) != i) for i, n in enumerate(g.node)]
    readers: dict[int, list[int]] = {}
    for i, n in enumerate(g.node):
        for x in set(n.input):
            if x and x in producer and producer[x] != i:
                readers.setdefault(producer[x], []).append(i)
    ready = [i for i, w in enumerate(waiting) if w == 0]
    done = 0
    while ready:
        i = ready.pop()
        done += 1
        for r in readers.get(i, []):
            waiting[r] -= 1
            if waiting[r] == 0:
                ready.append(r)
    self_loop = [n for n in g.node if any(x and x in n.output for x in n.input)]
    if done < len(g.node) or self_loop:
        stuck = self_loop or [n for i, n in enumerate(g.node) if waiting[i] > 0]
        names = ", ".join(f"'{n.name or n.output[0]}' ({n.op_type})" for n in stuck[:8])
        raise ModelLoadError(f"{where} has a cycle: node(s) {names}{' ...' if len(stuck) > 8 else ''} "
                             f"are in or behind a loop of nodes reading their own outputs")


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {(o.domain if o.domain != "ai.onnx" else ""): int(o.version) for o in model.opset_import}


def _kernel_covers(domain: str, op: str, opset: int) -> bool | None:
    """Whether onnxruntime runs ``op`` at ``opset`` (a CPU kernel, or a function body it expands);
    None if the op has no ONNX schema."""
    try:
        schema = onnx.defs.get_schema(op, opset, domain)
    except onnx.defs.SchemaError:
        return None
    if schema.has_function or schema.has_context_dependent_function:
        return True
    return any(lo <= schema.since_version <= hi for lo, hi in _ort_kernels().get((domain, op), []))


def _upgrade_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convert an old model to the lowest newer opset where onnxruntime has kernels for all its ops.

    Old exporters (IR 3, opset 6) use op versions onnxruntime dropped (Gemm-6,
    BatchNormalization-6); onnx's version converter rewrites them losslessly.
    """
    current = _opsets(model).get("")
    if current is None:
        return model
    ops = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    stale = sorted(op for op in ops if _kernel_covers("", op, current) is False)
    if not stale:
        return model
    for target in range(current + 1, onnx.defs.onnx_opset_version() + 1):
        if all(_kernel_covers("", op, target) is not False for op in ops):
            try:
                upgraded = onnx.version_converter.convert_version(model, target)
            except Exception as e:  # noqa: BLE001 - the converter raises several types; keep the original
                log.warning("could not convert opset %d to %d for onnxruntime (%s): %s", current, target,
                            ", ".join(stale), str(e).splitlines()[0] if str(e) else type(e).__name__)
                return model
            log.info("converted the model from opset %d to %d: onnxruntime has no kernels for %s at opset %d",
                     current, target, ", ".join(stale), current)
            return upgraded
    return model


def find_unsupported(graph: Graph) -> list[tuple[Node, str]]:
    """Every node that cannot be compiled (neither crossbar-mappable nor runnable by
    onnxruntime, or with NaN/Inf weights), with why."""
    bad = []
    local = {(f.domain, f.name) for f in graph.functions}
    for node in graph.nodes:
        reason = _host_issue(node, graph.opset, local)
        crossbar_op = node.op_type in ANALOG_OPS + RECURRENT_OPS and node.domain in ("", "ai.onnx")
        # Lowering copies the weights into crossbar matrices; do it here only where it can change the
        # answer: a weight that is not finite (its message), or an op onnxruntime cannot run.
        if crossbar_op and (reason or not _finite_constants(node, graph)):
            lowering = lower_recurrent if node.op_type in RECURRENT_OPS else lower
            try:
                if not isinstance(lowering(node, graph), str):
                    continue
            except InvalidWeightsError as e:
                bad.append((node, str(e).split(": ", 1)[1]))
                continue
        if reason:
            bad.append((node, reason))
    return bad


def _finite_constants(node: Node, graph: Graph) -> bool:
    """Whether every floating-point constant the node reads is finite."""
    for name in node.inputs:
        arr = graph.constants.get(name) if name else None
        if arr is not None and arr.dtype.kind == "f" and not is_placeholder(arr) and not np.isfinite(arr).all():
            return False
    return True


def check_supported(graph: Graph) -> None:
    """Raise one UnsupportedModelError listing every node anac cannot compile."""
    bad = find_unsupported(graph)
    if bad:
        lines = "; ".join(f"{n.label}: {why}" for n, why in bad)
        raise UnsupportedModelError(f"{len(bad)} node(s) cannot be compiled: {lines}")


def _densify(sp: onnx.SparseTensorProto) -> np.ndarray:
    dense = np.zeros(int(np.prod(sp.dims)), dtype=onnx.helper.tensor_dtype_to_np_dtype(sp.values.data_type))
    idx = numpy_helper.to_array(sp.indices)
    vals = numpy_helper.to_array(sp.values)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), tuple(sp.dims))
    dense[idx] = vals
    return dense


def tensor_info(v: onnx.ValueInfoProto) -> TensorInfo:
    """TensorInfo of an ONNX value; symbolic dims keep their names, unknown dims are None."""
    t = v.type
    if not t.HasField("tensor_type"):
        return TensorInfo(v.name, 0, None, raw_type=t)  # sequences/maps (e.g. ZipMap outputs): host only
    tt = t.tensor_type
    shape: tuple[Dim, ...] | None = None
    if tt.HasField("shape"):
        shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim)
    return TensorInfo(v.name, int(tt.elem_type), shape)


def _bind_shapes(inputs: list[TensorInfo], given: Mapping[str, Sequence[int]],
                 default_dim: int | None, batch: int | None = None) -> list[TensorInfo]:
    names = [t.name for t in inputs]
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ShapeError(f"--input-shape names unknown input(s) {', '.join(unknown)}; the model's inputs are: "
                         f"{', '.join(names) or '(none)'}")
    symbols: dict[str, int] = {}
    for t in inputs:
        if t.name in given and t.shape is not None:
            shape = [int(d) for d in given[t.name]]
            if len(shape) != len(t.shape):
                raise ShapeError(f"input '{t.name}' has rank {len(t.shape)} {_fmt(t.shape)}; "
                                 f"the shape given for it has rank {len(shape)} ({','.join(map(str, shape))})")
            for i, (d, v) in enumerate(zip(t.shape, shape, strict=True)):
                if v <= 0:
                    raise ShapeError(f"input '{t.name}': dim {i} must be positive, got {v}")
                if isinstance(d, int) and d != v:
                    raise ShapeError(f"input '{t.name}' dim {i} is fixed to {d} by the model; "
                                     f"--input-shape gives {v}")
                if isinstance(d, str):
                    symbols.setdefault(d, v)
    leading = _bind_batch(inputs, given, symbols, batch)
    bound = []
    for t in inputs:
        if t.elem_type == 0 or t.shape is None:
            if t.name in given and t.elem_type != 0:
                bound.append(TensorInfo(t.name, t.elem_type, tuple(int(v) for v in given[t.name])))
                continue
            raise ShapeError(f"input '{t.name}' has no tensor type or shape in the model; "
                             f"give it with --input-shape {t.name}=D0,D1,...")
        dims: list[Dim] = []
        for i, d in enumerate(t.shape):
            if t.name in given:
                dims.append(int(given[t.name][i]))
            elif isinstance(d, int):
                dims.append(d)
            elif isinstance(d, str) and d in symbols:
                dims.append(symbols[d])
            elif i == 0 and t.name in leading:
                dims.append(leading[t.name])
            elif default_dim is not None:
                dims.append(default_dim)
            else:
                what = f"symbolic ('{d}')" if d else "unknown"
                example = ",".join(str(x) if isinstance(x, int) else "1" for x in t.shape)
                raise ShapeError(f"input '{t.name}' {_fmt(t.shape)}: dim {i} is {what} and no value was given; "
                                 f"bind it with --input-shape {t.name}={example}")
        bound.append(TensorInfo(t.name, t.elem_type, tuple(dims)))
    return bound


def batch_inputs(inputs: Sequence[TensorInfo], given: Mapping[str, Sequence[int]], batch: int | None = None,
                 symbols: Mapping[str, int] | None = None) -> list[TensorInfo]:
    """Inputs whose leading (batch) dim is symbolic and not bound otherwise; with ``batch`` there must be one."""
    bound = symbols or {}
    free = [t for t in inputs if t.name not in given and t.elem_type != 0 and t.shape
            and not isinstance(t.shape[0], int) and not (isinstance(t.shape[0], str) and t.shape[0] in bound)]
    if batch is not None and not free:
        shapes = ", ".join(f"{t.name} {_fmt(t.shape or ())}" for t in inputs) or "(none)"
        raise ShapeError(f"--batch {batch}: no input of the model has a symbolic leading (batch) dim to bind "
                         f"(inputs: {shapes}); use --input-shape to set other dims")
    return free


def _bind_batch(inputs: list[TensorInfo], given: Mapping[str, Sequence[int]], symbols: dict[str, int],
                batch: int | None) -> dict[str, int]:
    """Bind every symbolic leading dim not given otherwise to ``batch`` (default 1); inputs -> value.

    Exporters write the batch as a symbolic first dim (skl2onnx always, torch with a dynamic batch);
    the mapping does not depend on it, so it defaults to 1 rather than stopping the user.
    """
    if batch is not None and batch < 1:
        raise ShapeError(f"--batch must be a positive whole number, got {batch}")
    free = batch_inputs(inputs, given, batch, symbols)
    value = 1 if batch is None else batch
    leading: dict[str, int] = {}
    for t in free:
        d = t.shape[0]  # type: ignore[index]
        if isinstance(d, str):
            symbols.setdefault(d, value)
        leading[t.name] = value
    if free and batch is None:
        names = sorted({str(t.shape[0] or "?") for t in free})  # type: ignore[index]
        log.warning("symbolic batch dim %s of input(s) %s bound to 1 (--batch N, or batch=N in the API, binds it to N)",
                    ", ".join(f"'{n}'" for n in names), ", ".join(t.name for t in free))
    return leading


def _fmt(shape: Sequence[Dim]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _named_nodes(protos: Sequence[onnx.NodeProto]) -> list[Node]:
    nodes, seen = [], set()
    for i, p in enumerate(protos):
        name = p.name or f"{p.op_type}_{i}"
        base, k = name, 1
        while name in seen:
            name, k = f"{base}_{k}", k + 1
        seen.add(name)
        # Copies, not references: a reference into the parsed model would keep all of it (weights
        # included) alive for as long as the graph lives.
        protos = tuple(_detached(a, onnx.AttributeProto) for a in p.attribute)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in protos}
        domain = "" if p.domain == "ai.onnx" else p.domain
        nodes.append(Node(name, p.op_type, list(p.input), list(p.output), attrs, domain, protos))
    return nodes


M = TypeVar("M", bound=Message)


def _detached(proto: M, kind: type[M]) -> M:
    """A copy of ``proto`` in a message of its own (not a view into the model it was parsed with)."""
    out = kind()
    out.CopyFrom(proto)
    return out


def _eliminate_dead(graph: Graph) -> None:
    """Drop nodes whose outputs reach no graph output, and constants no one reads."""
    live = {t.name for t in graph.outputs}
    kept: list[Node] = []
    for node in reversed(graph.nodes):
        if any(o in live for o in node.outputs if o):
            kept.append(node)
            live.update(node_reads(node))
    graph.nodes = kept[::-1]
    graph.constants = {k: v for k, v in graph.constants.items() if k in live}


def _infer_shapes(graph: Graph) -> None:
    """ONNX shape inference with data propagation; big constants enter as typed inputs."""
    small = [numpy_helper.from_array(v, k) for k, v in graph.constants.items() if v.size <= _SMALL_CONSTANT]
    big = [onnx.helper.make_tensor_value_info(k, onnx.helper.np_dtype_to_tensor_dtype(v.dtype), v.shape)
           for k, v in graph.constants.items() if v.size > _SMALL_CONSTANT]
    proto = onnx.helper.make_graph([n.to_onnx() for n in graph.nodes], graph.name,
                                   [t.to_onnx() for t in graph.inputs] + big,
                                   [t.to_onnx() for t in graph.outputs], small)
    model = onnx.helper.make_model(proto, opset_imports=[onnx.helper.make_opsetid(d, v)
                                                         for d, v in graph.opset.items()],
                                   functions=list(graph.functions))
    model.ir_version = max(graph.ir_version, 4)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        log.warning("shape inference failed, continuing with partial shapes: %s", e)
        return
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        info = tensor_info(v)
        if info.elem_type:
            graph.value_info[v.name] = info


def _fold_constants(graph: Graph) -> bool:
    """Evaluate nodes whose inputs are all known constants; return whether any folded."""
    keep_outputs = {t.name for t in graph.outputs}
    remaining: list[Node] = []
    folded = False
    for node in graph.nodes:
        value = None
        if not any(o in keep_outputs for o in node.outputs):
            value = _try_fold(node, graph)
        if value is None:
            remaining.append(node)
            continue
        for name, arr in zip(node.outputs, value, strict=False):
            if name:
                graph.constants[name] = arr
        folded = True
    graph.nodes = remaining
    return folded


def _try_fold(node: Node, graph: Graph) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in _NO_FOLD:
        return None
    if node.op_type == "Shape":
        info = graph.info(node.inputs[0])
        if info is None or not info.is_static:
            return None
        shape = np.array(info.shape, dtype=np.int64)
        start, end = node.attrs.get("start", 0), node.attrs.get("end", None)
        return [shape[start:end]]
    if node.op_type == "Size":
        info = graph.info(node.inputs[0])
        if info is None or not info.is_static:
            return None
        return [np.array(int(np.prod(info.shape)), dtype=np.int64)]  # type: ignore[arg-type]
    if not all(i in graph.constants for i in node.inputs if i):
        return None
    args = [graph.constants[i] if i else None for i in node.inputs]
    if any(is_placeholder(a) for a in args):  # no values to compute with: a placeholder of the inferred shape
        infos = [graph.value_info.get(o) for o in node.outputs if o]
        if not infos or any(i is None or not i.is_static or not i.elem_type for i in infos):
            return None
        return [placeholder(i.shape, i.dtype) for i in infos]  # type: ignore[arg-type, union-attr]
    if node.op_type == "Constant" and "value" in node.attrs:
        return [numpy_helper.to_array(node.attrs["value"])]
    if node.op_type == "ConstantOfShape":
        t = node.attrs.get("value")
        fill = numpy_helper.to_array(t).reshape(-1) if t is not None else np.zeros(1, np.float32)
        return [np.full(tuple(int(d) for d in args[0]), fill[0], dtype=fill.dtype)]  # type: ignore[union-attr]
    if node.op_type == "Identity":
        return [args[0]]  # type: ignore[list-item]
    if node.op_type == "Concat" and all(a is not None and a.ndim for a in args):
        return [np.concatenate(args, axis=node.attrs["axis"])]  # type: ignore[arg-type]
    if node.op_type in _ELEMENTWISE and args and all(a is not None for a in args) and \
            len({a.dtype for a in args}) == 1:  # type: ignore[union-attr]
        return [reduce(_ELEMENTWISE[node.op_type], args).astype(args[0].dtype)]  # type: ignore[union-attr]
    return _reference_eval(node, graph, args)


# Variadic ops folded by numpy (as onnx's reference evaluator computes them, without importing it).
_ELEMENTWISE = {"Max": np.maximum, "Min": np.minimum, "Sum": np.add}


def _reference_eval(node: Node, graph: Graph, args: list[np.ndarray | None]) -> list[np.ndarray] | None:
    from onnx.reference import ReferenceEvaluator

    feeds = {n: a for n, a in zip(node.inputs, args, strict=True) if n and a is not None}
    ins = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
           for n, a in feeds.items()]
    outs = [onnx.helper.make_empty_tensor_value_info(o) for o in node.outputs if o]
    model = onnx.helper.make_model(
        onnx.helper.make_graph([node.to_onnx()], "fold", ins, outs),
        opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in graph.opset.items()])
    model.ir_version = max(graph.ir_version, 4)
    try:
        results = ReferenceEvaluator(model).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - any failure just means "leave it to the host"
        log.debug("not folding %s: %s", node.label, e)
        return None
    return [np.asarray(r) for r in results]


@lru_cache(maxsize=1)
def _ort_kernels() -> dict[tuple[str, str], list[tuple[int, int]]]:
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_c

    kernels: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for k in ort_c.get_all_opkernel_def():
        if k.provider == "CPUExecutionProvider":
            domain = "" if k.domain == "ai.onnx" else k.domain
            kernels.setdefault((domain, k.op_name), []).append(tuple(k.version_range))
    return kernels


def _host_issue(node: Node, opset: dict[str, int], local: set[tuple[str, str]]) -> str | None:
    """Why onnxruntime (CPU) cannot run ``node``, or None if it can."""
    domain = node.domain
    if (domain, node.op_type) in local:
        return None
    version = opset.get(domain)
    if version is None:
        return f"the model imports no opset for domain '{domain}'"
    covered = _kernel_covers(domain, node.op_type, version)
    if covered:
        return None
    ranges = _ort_kernels().get((domain, node.op_type))
    if not ranges:
        where = f"domain '{domain}'" if domain else "the ONNX domain"
        return f"onnxruntime has no CPU kernel for {node.op_type} in {where} and it is not a crossbar op"
    if covered is None:  # no ONNX schema (a contrib domain): any kernel from this opset on will do
        return None if any(lo <= version for lo, _ in ranges) else \
            f"onnxruntime's {node.op_type} kernels need a newer opset than {version}"
    sv = onnx.defs.get_schema(node.op_type, version, domain).since_version
    have = ", ".join(f"{lo}-{hi if hi < 2**31 - 1 else ''}" for lo, hi in sorted(ranges))
    return f"onnxruntime has no CPU kernel for {node.op_type} version {sv} (opset {version}); it has versions {have}"
