"""Save and load a compiled program: the ``NAME.anac/`` directory.

Layout: ``program.json`` (format, hardware spec, stages in execution order,
MVMs, matrices, slices with their placement), ``weights.npz`` (the weights
once: per matrix ``matrix_<i>``, its kept rows after pruning; per MVM its
digital bias; recurrent cells' constants; plain uncompressed .npy members,
never pickled), ``host/<stage>.onnx`` and ``report.json`` (summary figures
and pass timings). Target conductances are not stored: they are a
deterministic function of a slice's weights, encoding and scale, recomputed
on demand by ``Program.targets`` (format version 1 stored them, and the
weights per slice; this anac refuses such a directory and says to recompile).
A plan (``anac plan``) has program.json (with a ``plan`` field) and
report.json only.
program.json and weights.npz are byte-identical for the same model and
options. The directory is written under a temporary name and renamed, so a
crash never leaves half a program.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from anac import __version__
from anac.core.errors import ArtifactError
from anac.core.estimates import energy, performance
from anac.core.frontend import tensor_info
from anac.core.hardware import HardwareSpec
from anac.core.ir import Graph, Node, TensorInfo
from anac.core.lowering import ANALOG_OPS, lower
from anac.core.placeholder import placeholder
from anac.core.program import COPY_MODES, FORMAT_NAME, FORMAT_VERSION, MVM, Matrix, Program, Slice, Stage
from anac.core.recurrent import Cell, Recurrent

log = logging.getLogger(__name__)

_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps keep weights.npz byte-identical


def default_output(model_path: str | Path) -> Path:
    """``model.onnx`` -> ``model.anac`` beside it."""
    p = Path(model_path)
    return p.with_name(p.stem + ".anac")


def program_json(prog: Program) -> dict[str, Any]:
    """The JSON description of a program (no arrays, no timings)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "compiler": f"anac {__version__}",
        "model": prog.graph.name,
        "model_digest": prog.model_digest,
        "model_file": prog.model_file,
        "inputs": [t.to_json() for t in prog.inputs],
        "outputs": [t.to_json() for t in prog.outputs],
        "options": prog.options,
        "hardware": prog.hardware.to_json(),
        "stages": [s.to_json() for s in prog.stages or []],
        "mvms": [m.to_json() for m in (prog.mvms or {}).values()],
        "matrices": [{"id": m.id, "node": m.node, "group": m.group, "shape": list(m.shape),
                      "encoding": m.encoding, "per_column": m.per_column, "clip_sigma": m.clip_sigma,
                      "input_rows": m.input_rows, "pruned": m.kept_rows is not None, "copy_mode": m.copy_mode}
                     for m in (prog.matrices or {}).values()],
        "slices": [s.to_json() for s in prog.slices or []],
        "placement": _untimed({"chips": prog.chips_used, **(prog.placement_info or {})}),
        "calibration": prog.calibration,
        "pruning": prog.pruning,
        "assignment": _untimed(prog.assignment),
        "replication": _untimed(prog.replication),
        "averaging": prog.averaging,
        "tensor_elements": prog.tensor_elements,
        "recurrent": [r.to_json() for r in prog.recurrent.values()],
        "schedule": _untimed(prog.schedule),
        **({"plan": prog.plan} if prog.plan is not None else {}),
    }


def _untimed(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """Without wall-clock solve times, which differ run to run (they go to report.json)."""
    return None if d is None else {k: v for k, v in d.items() if k != "solve_time_s"}


def summary(prog: Program) -> dict[str, Any]:
    """Headline figures: tiles, chips, devices, weights, stages."""
    weights = prog.analog_weights
    devices = prog.pcm_devices()
    tiles = prog.tiles_used()
    cap = prog.hardware.devices_per_tile * len(tiles)
    stages = prog.stages or []
    return {
        "tiles": len(tiles),
        "chips": prog.chips_used or 0,
        "pcm_devices": devices,
        "weights": weights,
        "pcm_per_weight": round(_first_copy_devices(prog) / weights, 4) if weights else 0.0,  # copies aside
        "device_utilisation": round(devices / cap, 4) if cap else 0.0,
        "analog_nodes": len(prog.mvms or {}),
        "fused_nodes": sum((m.norm is not None) + (m.activation is not None) for m in (prog.mvms or {}).values()),
        "host_nodes": sum(len(s.nodes) for s in stages if s.kind == "host"),
        "analog_stages": sum(s.kind == "analog" for s in stages),
        "host_stages": sum(s.kind == "host" for s in stages),
        "slices": len(prog.slices or []),
        "zero_block_weights": prog.zero_block_weights(),
        "host_weights": host_weights(prog),
    }


def host_weights(prog: Program, top: int = 10) -> dict[str, Any]:
    """Constant float values that host nodes read (weights left off the crossbars), the largest
    such nodes first, each with the reason it stays on the host (read from the host stages' models,
    so a loaded program reports the same)."""
    nodes = []
    total = 0
    for st in prog.stages or []:
        if st.kind != "host" or st.model is None:
            continue
        g = st.model.graph
        consts = {t.name: t for t in g.initializer
                  if onnx.helper.tensor_dtype_to_np_dtype(t.data_type).kind == "f"}
        total += sum(int(np.prod(t.dims, dtype=np.int64)) for t in consts.values())
        for proto in g.node:
            n = sum(int(np.prod(consts[t].dims, dtype=np.int64)) for t in dict.fromkeys(proto.input) if t in consts)
            if n:
                nodes.append({"node": proto.name, "op_type": proto.op_type, "weights": n,
                              "reason": _host_reason(st.model, proto)})
    analog = prog.analog_weights
    nodes.sort(key=lambda d: (-d["weights"], d["node"]))
    return {"weights": total, "share": round(total / (total + analog), 4) if total + analog else 0.0,
            "nodes": nodes[:top], "weighted_nodes": len(nodes)}


def _host_reason(model: onnx.ModelProto, proto: onnx.NodeProto) -> str:
    """Why a host node is not lowered to a crossbar (anac.core.lowering's reason)."""
    if proto.domain not in ("", "ai.onnx") or proto.op_type not in ANALOG_OPS:
        return "not a matrix-vector product"
    g = model.graph
    infos = {v.name: tensor_info(v) for v in [*g.input, *g.output, *g.value_info]}
    node = Node(proto.name, proto.op_type, list(proto.input), list(proto.output),
                {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}, "", tuple(proto.attribute))
    consts = {t.name: placeholder(t.dims, onnx.helper.tensor_dtype_to_np_dtype(t.data_type))
              if t.data_location == onnx.TensorProto.EXTERNAL else onnx.numpy_helper.to_array(t)
              for t in g.initializer}  # a plan's host stages hold headers only
    graph = Graph(g.name, [node], [], [], consts, infos, {}, 0)
    why = lower(node, graph)
    return why if isinstance(why, str) else "runs on the host"


def _first_copy_devices(prog: Program) -> int:
    """Devices holding each weight once (copy 0 of every matrix): PCM per weight is the encodings' figure."""
    return sum(s.n_rows * s.n_cols * prog.hardware.encoding(s.encoding).devices_per_weight
               for s in prog.slices or [] if s.copy == 0)


def report_json(prog: Program) -> dict[str, Any]:
    """report.json: the summary, per-layer figures, placement status and pass timings."""
    layers = []
    for mvm in (prog.mvms or {}).values():
        mats = [prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
        ids = set(mvm.matrices)
        sl = [s for s in prog.slices or [] if s.matrix in ids]
        zeros = prog.zero_block_weights(mvm.matrices)
        layers.append({"node": mvm.node, "op_type": mvm.op_type, "weights": sum(m.weights.size for m in mats) - zeros,
                       "zero_block_weights": zeros, "groups_per_matrix": mvm.params.get("groups_per_matrix", 1),
                       "matrices": len(mats), "shape": list(mats[0].shape), "encoding": mats[0].encoding,
                       "slices": len(sl), "tiles": len({(s.chip, s.tile) for s in sl})})
    return {**summary(prog), "layers": layers, "placement": {"chips": prog.chips_used, **(prog.placement_info or {})},
            "assignment": prog.assignment, "replication": prog.replication,
            "averaging": prog.averaging, "pruning": prog.pruning,
            "calibration": prog.calibration,
            "absorbed_embeddings": {r.node: r.absorbed for r in prog.recurrent.values() if r.absorbed},
            "schedule": {k: v for k, v in (prog.schedule or {}).items() if k != "timeline"},
            "energy": energy(prog) if prog.slices is not None and prog.stages is not None else None,
            "performance": performance(prog) if prog.chips_used is not None else None,
            "timings_s": {k: round(v, 4) for k, v in prog.timings.items()}}


def check_writable(out: str | Path) -> Path:
    """Fail early, before a long compile, when the program cannot be written to ``out``."""
    out = Path(out)
    parent = out.parent
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"cannot write the program to {out}: a file of that name exists")
    if out.exists() and not (out / "program.json").is_file() and any(out.iterdir()):
        raise ArtifactError(f"cannot write the program to {out}: it is a non-empty directory that holds no "
                            f"compiled program; anac replaces only its own output")
    if not parent.is_dir():
        raise ArtifactError(f"cannot write the program to {out}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ArtifactError(f"cannot write the program to {out}: directory {parent} is not writable")
    return parent


def _stale_siblings(out: Path) -> list[Path]:
    """Hidden ``.NAME.PID-XXXXXXXX.tmp``/``.old`` siblings of ``out`` that a save killed mid-way left behind: their
    writer (the PID in the name) is gone. Names without a PID (older anac) count when untouched for 10 minutes."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:(\d+)-)?[a-z0-9_]{{8}}\.(?:tmp|old)")
    stale = []
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or p.is_symlink() or not p.is_dir():
            continue
        if m.group(1) is None:
            try:
                dead = time.time() - p.stat().st_mtime > 600
            except OSError:
                continue
        else:
            dead = not _alive(int(m.group(1)))
        if dead:
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # it exists (someone else's) or cannot be asked about: leave it
    return True


def save_program(prog: Program, out: str | Path) -> Path:
    """Write the program directory atomically; return its path.

    The program is written to a hidden sibling ``.NAME.PID-XXXXXXXX.tmp`` and renamed; a replaced program moves
    to ``.NAME.PID-XXXXXXXX.old`` first. Siblings of that pattern left by a save that was killed (its PID gone)
    are removed first.
    """
    out = Path(out)
    parent = check_writable(out)
    for p in _stale_siblings(out):
        log.info("removing %s, left by a save of %s that did not finish", p, out)
        shutil.rmtree(p, ignore_errors=True)
    prefix = f".{out.name}.{os.getpid()}-"
    try:
        tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    except OSError as e:
        raise ArtifactError(f"cannot write the program to {out}: {e.strerror} ({parent})") from None
    try:
        _write(prog, tmp)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".old", dir=parent))
            os.replace(out, old / "program")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:
        raise ArtifactError(f"cannot write the program to {out}: {e.strerror}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def _write(prog: Program, where: Path) -> None:
    (where / "host").mkdir()
    (where / "program.json").write_text(json.dumps(program_json(prog), indent=1, sort_keys=True) + "\n")
    (where / "report.json").write_text(json.dumps(report_json(prog), indent=1, sort_keys=True) + "\n")
    if prog.plan is not None:  # a plan has no weights: no weights.npz, no host stages (they would hold weights)
        return
    arrays: list[tuple[str, np.ndarray]] = []
    for i, m in enumerate((prog.matrices or {}).values()):
        arrays.append((f"matrix_{i}", m.weights))
    for i, mvm in enumerate((prog.mvms or {}).values()):
        if mvm.bias is not None:
            arrays.append((f"bias_{i}", mvm.bias))
    for i, m in enumerate((prog.matrices or {}).values()):
        if m.kept_rows is not None:
            arrays.append((f"kept_rows_{i}", m.kept_rows))
    for i, rec in enumerate(prog.recurrent.values()):
        for j, name in enumerate(sorted(rec.constants)):
            arrays.append((f"cell{i}_const{j}", rec.constants[name]))
    _write_npz(where / "weights.npz", arrays)
    for st in prog.stages or []:
        if st.kind == "host" and st.model is not None:
            (where / "host" / f"{st.name}.onnx").write_bytes(st.model.SerializeToString(deterministic=True))
    for i, rec in enumerate(prog.recurrent.values()):
        for d, cell in enumerate(rec.cells):
            for k, model in enumerate(cell.models):
                (where / "host" / f"cell{i}_d{d}_{k}.onnx").write_bytes(model.SerializeToString(deterministic=True))


def _load_recurrent(path: Path, i: int, r: dict[str, Any], arrays: dict[str, np.ndarray],
                    plan: bool = False) -> Recurrent:
    cells = []
    for d, steps in enumerate(r["cells"]):
        n_models = sum(1 for s in steps if s[0] == "host")
        models = [] if plan else [onnx.load(str(_inside(path, f"host/cell{i}_d{d}_{k}.onnx",
                                                        f"recurrent[{i}].cells[{d}]"))) for k in range(n_models)]
        cells.append(Cell([tuple(s) for s in steps], models))
    constants = {} if plan else {name: arrays[f"cell{i}_const{j}"] for j, name in enumerate(r["constants"])}
    return Recurrent(r["node"], r["op_type"], r["hidden"], r["layout"], r["directions"], r["x"], r["sequence_lens"],
                     r["initial_h"], r["initial_c"], r["outputs"], cells, constants, r["absorbed"])


def _write_npz(path: Path, arrays: list[tuple[str, np.ndarray]]) -> None:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays:
            info = zipfile.ZipInfo(name + ".npy", date_time=_ZIP_DATE)
            info.external_attr = 0o644 << 16
            with zf.open(info, "w", force_zip64=True) as f:
                np.lib.format.write_array(f, arr, allow_pickle=False)


def load_program(path: str | Path, *, plan_ok: bool = False) -> Program:
    """Read a program directory written by ``save_program``.

    A plan (written by ``anac plan``: no weights) is read only with ``plan_ok``
    (what ``anac inspect`` does), its matrices as placeholders and its host stages
    without models; anything that would run it gets an ArtifactError saying so.
    Nothing in it is trusted: every file that program.json names must lie inside the directory, a missing or
    mistyped field is an ArtifactError naming it, and each weights.npz member's header (dtype, shape) is checked
    before its data is read.
    """
    path = Path(path)
    pj = path / "program.json"
    if not pj.is_file():
        raise ArtifactError(f"{path} is not a compiled program (no program.json)")
    try:
        data = json.loads(pj.read_text())
    except (ValueError, OSError) as e:
        raise ArtifactError(f"{pj} is unreadable: {e}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{pj} must hold a JSON object, got a {type(data).__name__}")
    if data.get("format") == FORMAT_NAME and isinstance(data.get("version"), int) and \
            data["version"] < FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by an older anac ({data.get('compiler', 'unknown')}, format version "
                            f"{data['version']}); this anac reads version {FORMAT_VERSION}, which "
                            + ("stores the weights once and recomputes conductance targets" if data["version"] < 2
                               else "converts per-column outputs in current units (their calibrated ranges differ)")
                            + ": compile the model again")
    if data.get("format") != FORMAT_NAME or data.get("version") != FORMAT_VERSION:
        raise ArtifactError(f"{pj} is format {data.get('format')!r} version {data.get('version')!r}; "
                            f"this anac reads {FORMAT_NAME!r} version {FORMAT_VERSION}")
    if data.get("plan") is not None and not plan_ok:
        raise ArtifactError(f"{path} is a plan, made by `anac plan` from the model's shapes without its weights: "
                            f"`anac inspect` reads it, but it cannot be simulated or verified; compile the model "
                            f"with `anac compile` for a program that runs")
    where = ["program.json"]
    try:
        return _decode(path, data, where)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
        raise ArtifactError(f"{pj}: field '{where[0]}' is missing or malformed "
                            f"({type(e).__name__}: {e})") from None


def _inside(path: Path, rel: Any, field: str) -> Path:
    """``path / rel`` when ``rel`` is a relative path that stays inside ``path`` (no '..', absolute or symlink out)."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ArtifactError(f"{path / 'program.json'}: field '{field}' = {rel!r} must be a relative path inside the "
                            f"program directory")
    p = path / rel
    if not p.resolve().is_relative_to(path.resolve()):
        raise ArtifactError(f"{path / 'program.json'}: field '{field}' = {rel!r} leads outside the program "
                            f"directory (to {p.resolve()})")
    return p


def _read_npz(path: Path, expected: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """The members of weights.npz; each member's header is read and checked (a real dtype, its size matching the
    bytes stored, its shape the declared one for the names in ``expected``) before its data, which is read
    straight into its array in chunks and must be finite."""
    arrays = {}
    with zipfile.ZipFile(path) as zf, open(path, "rb", buffering=0) as raw:
        for info in zf.infolist():
            name = info.filename.removesuffix(".npy")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                if version not in ((1, 0), (2, 0)):
                    raise ArtifactError(f"{path}: member {name} is .npy format {version}; expected 1.0 or 2.0")
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                if dtype.kind not in "fiub" or dtype.hasobject:
                    raise ArtifactError(f"{path}: member {name} has dtype {dtype}; weights must be real numbers")
                nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
                if nbytes != info.file_size - f.tell():
                    raise ArtifactError(f"{path}: member {name} declares shape {list(shape)} ({dtype}, {nbytes} "
                                        f"bytes) but holds {info.file_size - f.tell()} bytes")
                if name in expected and tuple(shape) != expected[name]:
                    raise ArtifactError(f"{path}: member {name} has shape {list(shape)}; program.json declares "
                                        f"{list(expected[name])}")
                a = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
                if info.compress_type == zipfile.ZIP_STORED:  # as written: read the file straight into the array
                    raw.seek(_data_offset(raw, info) + f.tell())
                    finite = _read_into(raw, a, path, name)
                else:
                    finite = _read_into(f, a, path, name)
            if not finite:
                raise ArtifactError(f"{path}: member {name} holds {int(a.size - np.isfinite(a).sum())} non-finite "
                                    f"value(s) (NaN or Inf)")
            arrays[name] = a
    return arrays


_CHUNK = 1 << 24  # bytes read at a time: no second copy of a large member is ever held


def _data_offset(raw: Any, info: zipfile.ZipInfo) -> int:
    """Where a member's data starts in the zip file: after its local header (30 bytes, name, extra field)."""
    raw.seek(info.header_offset)
    header = raw.read(30)
    if len(header) != 30 or header[:4] != b"PK\x03\x04":
        raise zipfile.BadZipFile(f"member {info.filename} has no local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def _read_into(f: Any, a: np.ndarray, path: Path, name: str) -> bool:
    """Fill ``a`` with the next ``a.nbytes`` bytes of ``f``; whether every value is finite (checked chunk by
    chunk as it arrives, while it is in cache)."""
    flat = a.reshape(-1, order="A")
    view = memoryview(flat.view(np.uint8))
    done = checked = 0
    finite = True
    while done < len(view):
        got = f.readinto(view[done:done + _CHUNK])
        if not got:
            raise ArtifactError(f"{path}: member {name} ends after {done} of {len(view)} bytes")
        done += got
        if a.dtype.kind == "f":
            upto = done // a.itemsize
            finite = finite and bool(np.isfinite(flat[checked:upto]).all())
            checked = upto
    return finite


def _decode(path: Path, data: dict[str, Any], where: list[str]) -> Program:
    """The Program of a program.json's ``data``; ``where[0]`` names the field being read (for the error)."""
    where[0] = "inputs"
    inputs = [TensorInfo.from_json(t) for t in data["inputs"]]
    where[0] = "outputs"
    outputs = [TensorInfo.from_json(t) for t in data["outputs"]]
    where[0] = "model"
    graph = Graph(data["model"], [], inputs, outputs, {}, {}, {}, 0)
    where[0] = "hardware"
    hardware = HardwareSpec.from_json(data["hardware"])
    where[0] = "options"
    prog = Program(graph, hardware, inputs, outputs, options=data["options"])
    where[0] = "model_digest"
    digest = data.get("model_digest")
    if digest is not None and not isinstance(digest, str):
        raise TypeError(f"expected a string, got {type(digest).__name__}")
    prog.model_digest = digest
    where[0] = "model_file"
    model_file = data.get("model_file")
    if model_file is not None and not isinstance(model_file, str):
        raise TypeError(f"expected a string, got {type(model_file).__name__}")
    prog.model_file = model_file
    slices = []
    where[0] = "slices"
    for i, s in enumerate(data["slices"]):
        where[0] = f"slices[{i}]"
        sl = Slice.from_json(s)
        if len(sl.rows) != 2 or len(sl.cols) != 2 or not all(type(v) is int for v in (*sl.rows, *sl.cols)):
            raise TypeError(f"rows and cols must be [start, stop] integer pairs, got {s['rows']!r}, {s['cols']!r}")
        slices.append(sl)
    expected = {}
    for i, m in enumerate(data["matrices"]):
        where[0] = f"matrices[{i}]"
        expected[f"matrix_{i}"] = tuple(int(d) for d in m["shape"])
    plan = data.get("plan")
    arrays: dict[str, np.ndarray] = {}
    if plan is None:
        where[0] = "weights.npz"
        npz = _inside(path, "weights.npz", "weights.npz")
        try:
            arrays = _read_npz(npz, expected)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise ArtifactError(f"{npz} is unreadable: {e}") from None
    matrices = {}
    where[0] = "matrices"
    for i, m in enumerate(data["matrices"]):
        where[0] = f"matrices[{i}]"
        if plan is not None:
            w = placeholder(expected[f"matrix_{i}"], np.float32)
        else:
            w = arrays[f"matrix_{i}"]
            if w.dtype != np.float32:
                raise ArtifactError(f"{npz}: member matrix_{i} is {w.dtype}; weights are float32")
        kept = arrays[f"kept_rows_{i}"] if m["pruned"] and plan is None else None
        mode = m.get("copy_mode", "split")  # absent in programs written before average: copies split
        if mode not in COPY_MODES:
            raise ArtifactError(f"{path / 'program.json'}: matrix {m['id']} has copy_mode {mode!r}; expected one of "
                                f"{', '.join(COPY_MODES)}")
        matrices[m["id"]] = Matrix(m["id"], m["node"], m["group"], w, m["encoding"], m["per_column"],
                                   m["clip_sigma"], kept, m["input_rows"], mode)
    mvms = {}
    where[0] = "mvms"
    for i, m in enumerate(data["mvms"]):
        where[0] = f"mvms[{i}]"
        bias = arrays.get(f"bias_{i}") if m["has_bias"] else None
        mvms[m["node"]] = MVM(m["node"], m["op_type"], m["kind"], m["input"], m["output"], m["matrices"],
                              bias=bias, alpha=m["alpha"], params=m["params"], activation=m["activation"],
                              input_range=m["input_range"], norm=m.get("norm"))
    stages = []
    where[0] = "stages"
    for i, s in enumerate(data["stages"]):
        where[0] = f"stages[{i}]"
        st = Stage(s["name"], s["kind"], s["inputs"], s["outputs"], s["nodes"])
        if st.kind == "host" and plan is None:
            model = _inside(path, s["model"], f"stages[{i}].model")
            try:
                st.model = onnx.load(str(model))
            except (OSError, ValueError) as e:
                raise ArtifactError(f"host stage {st.name}: cannot read {model}: {e}") from None
        stages.append(st)
    prog.stages, prog.mvms, prog.matrices, prog.slices = stages, mvms, matrices, slices
    for key in ("calibration", "pruning", "assignment", "tensor_elements", "schedule"):
        where[0] = key
        setattr(prog, key, data[key])
    prog.replication = data.get("replication")  # absent in programs written before replicate
    prog.averaging = data.get("averaging")  # absent in programs written before average
    prog.recurrent = {}
    where[0] = "recurrent"
    for i, r in enumerate(data["recurrent"]):
        where[0] = f"recurrent[{i}]"
        prog.recurrent[r["node"]] = _load_recurrent(path, i, r, arrays, plan is not None)
    where[0] = "placement"
    prog.chips_used = data["placement"]["chips"]
    prog.placement_info = {k: v for k, v in data["placement"].items() if k != "chips"}
    prog.plan = plan
    prog.produced.update({"partition", "pruning", "encodings", "slices", "placement", "schedule"})
    where[0] = "program.json (consistency)"
    prog.verify()
    return prog
