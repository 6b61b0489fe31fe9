"""Sweeps: accuracy across models, hardware, encodings, chip instances and times after programming.

``anac sweep GRID.toml -o DIR`` reads a grid (see ``models/sweep.toml``), compiles each (model, hardware,
encoding) once into a *build* (the program plus onnxruntime's reference outputs on the test data), then runs
one *cell* per chip instance: program it once (seed ``seed + i``) and read it at every time, with and without
drift compensation as the grid asks. Cells run in a local process pool, in-process with one worker, or on
Ray (``anac[ray]``). Each finished cell is one JSON file under DIR/cells, written under a temporary name and
renamed, so a sweep killed at any point restarts where it stopped; DIR/results.csv and DIR/report.html are
written from the cell files at the end. A cell's seed comes from the grid, never from the worker that runs it.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import socket
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from anac import __version__
from anac.api import compile_model, load_inputs, load_labels, model_inputs, parse_times
from anac.backends.host import as_array, make_session, run_session
from anac.backends.simulator import Simulator, check_inputs
from anac.backends.verify import accuracy_output, compare
from anac.core.artifact import load_program, save_program
from anac.core.errors import AnacError, InputError
from anac.core.frontend import load_onnx
from anac.core.hardware import HardwareSpec, load_hardware
from anac.passes.assign_devices import parse_encodings
from anac.sweep_report import render_report

log = logging.getLogger(__name__)

GRID_KEYS = ("seed", "repeats", "times", "drift_compensation", "batch", "model", "hardware")
MODEL_KEYS = ("name", "path", "test_data", "labels", "calibration_data", "batch", "samples", "reshape")
HARDWARE_KEYS = ("name", "preset", "file", "encodings", "budgets")
BUDGET_KEYS = ("chips", "tiles", "pcm_per_weight")
COLUMNS = ("model", "hardware", "encoding", "drift_compensation", "seed", "time", "seconds", "accuracy",
           "reference_accuracy", "rel_err", "wall_s", "program_s")
DEFAULT_BATCH_CAP = 1024  # a symbolic batch runs the test set in chunks of at most this many samples
_CACHE_BUILDS = 4  # builds a worker keeps loaded (simulator, data, reference)


class SweepError(AnacError):
    """The grid file or a sweep option is wrong; the message names the entry."""


# ---------------------------------------------------------------- the grid


@dataclass(frozen=True)
class ModelEntry:
    """One model of the grid with its test data."""

    name: str
    path: Path
    test_data: Path
    labels: str | None
    calibration_data: Path | None
    batch: int | None
    samples: int | None
    reshape: tuple[tuple[str, tuple[int, ...]], ...] = ()


@dataclass(frozen=True)
class Variant:
    """One encoding or budget of a hardware entry: its label and the compile options it sets."""

    label: str
    options: tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class HardwareEntry:
    """One preset or hardware file of the grid with its encodings or budgets."""

    name: str
    spec: HardwareSpec
    variants: tuple[Variant, ...]


@dataclass
class Grid:
    """A parsed and checked grid file."""

    path: Path
    models: list[ModelEntry]
    hardware: list[HardwareEntry]
    seed: int
    repeats: int
    times: list[tuple[str, float]]
    compensation: tuple[bool, ...]


@dataclass(frozen=True)
class ModelData:
    """A model's test inputs (cut to ``samples``, reshaped), labels and calibration inputs."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    calibration: dict[str, np.ndarray] | None
    batch: int


@dataclass(frozen=True)
class Build:
    """One compile: a model on one hardware with one encoding or budget."""

    key: str
    model: ModelEntry
    hardware: HardwareEntry
    variant: Variant


@dataclass(frozen=True)
class Cell:
    """One chip instance of a build, read at every time with each drift compensation setting."""

    key: str
    build: Build
    seed: int
    times: tuple[tuple[str, float], ...]
    compensation: tuple[bool, ...]


def _toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ModuleNotFoundError:
            raise SweepError("reading a grid file needs Python 3.11+ or the tomli package") from None
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise SweepError(f"cannot read the grid file {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SweepError(f"grid file {path} is not valid TOML: {e}") from None


def _unknown(table: Mapping[str, Any], known: Sequence[str], where: str) -> None:
    bad = sorted(set(table) - set(known))
    if bad:
        raise SweepError(f"{where}: unknown key(s) {', '.join(repr(b) for b in bad)}; known: {', '.join(known)}")


def _int(v: Any, where: str, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise SweepError(f"{where} must be an integer >= {low}, got {v!r}")
    return v


def _file(base: Path, v: Any, where: str) -> Path:
    if not isinstance(v, str) or not v:
        raise SweepError(f"{where} must be a file name (a string), got {v!r}")
    p = (base / v) if not Path(v).is_absolute() else Path(v)
    if not p.is_file():
        raise SweepError(f"{where}: no such file {p}")
    return p


def load_grid(path: str | Path) -> Grid:
    """Read and check a grid file; every problem is a SweepError naming the entry, before any work."""
    path = Path(path)
    data = _toml(path)
    base = path.parent
    _unknown(data, GRID_KEYS, f"grid file {path}")
    seed = _int(data.get("seed", 0), "seed", 0)
    repeats = _int(data.get("repeats", 1), "repeats", 1)
    times_v = data.get("times", "1s")
    if isinstance(times_v, list) and all(isinstance(t, str) for t in times_v) and times_v:
        times_v = ",".join(times_v)
    if not isinstance(times_v, str):
        raise SweepError(f"times must be a string '1s,1h,1d' or a list of such strings, got {times_v!r}")
    try:
        times = parse_times(times_v)
    except AnacError as e:
        raise SweepError(f"times: {e}") from None
    if len({lab for lab, _ in times}) != len(times):
        raise SweepError(f"times: '{times_v}' names a time twice")
    comp_v = data.get("drift_compensation", True)
    comp = tuple(comp_v) if isinstance(comp_v, list) else (comp_v,)
    if not comp or any(not isinstance(c, bool) for c in comp) or len(set(comp)) != len(comp):
        raise SweepError(f"drift_compensation must be true, false or a list of distinct ones, got {comp_v!r}")
    batch = data.get("batch")
    if batch is not None:
        _int(batch, "batch", 1)
    models = [_model_entry(m, i, base, batch) for i, m in enumerate(_tables(data, "model"))]
    hardware = [_hardware_entry(h, i, base) for i, h in enumerate(_tables(data, "hardware"))]
    for kind, entries in (("model", models), ("hardware", hardware)):
        names = [e.name for e in entries]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise SweepError(f"{kind} name(s) {', '.join(dup)} given twice; give each entry its own name")
    return Grid(path, models, hardware, seed, repeats, times, comp)


def _tables(data: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    v = data.get(key)
    if not isinstance(v, list) or not v or not all(isinstance(t, dict) for t in v):
        raise SweepError(f"the grid needs at least one [[{key}]] table")
    return v


def _model_entry(m: dict[str, Any], i: int, base: Path, batch: int | None) -> ModelEntry:
    where = f"model {m.get('name', i + 1)!r}" if isinstance(m.get("name"), str) else f"model #{i + 1}"
    _unknown(m, MODEL_KEYS, where)
    if "path" not in m or "test_data" not in m:
        raise SweepError(f"{where}: needs 'path' (the .onnx file) and 'test_data' (an .npz of inputs)")
    path = _file(base, m["path"], f"{where} path")
    name = m.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise SweepError(f"{where}: name must be a non-empty string, got {name!r}")
    test = _file(base, m["test_data"], f"{where} test_data")
    labels = m.get("labels")
    if labels is not None:
        if not isinstance(labels, str):
            raise SweepError(f"{where} labels must be 'FILE.npz[:KEY]', got {labels!r}")
        file, sep, key = labels.rpartition(":")
        file = file if sep and "/" not in key and not (base / labels).exists() else labels
        labels = str(_file(base, file, f"{where} labels")) + (f":{key}" if file != labels else "")
    calib = _file(base, m["calibration_data"], f"{where} calibration_data") if "calibration_data" in m else None
    b = m.get("batch", batch)
    samples = m.get("samples")
    reshape = m.get("reshape", {})
    if not isinstance(reshape, dict) or not all(
            isinstance(v, list) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v)
            for v in reshape.values()):
        raise SweepError(f"{where} reshape must be a table INPUT = [D1, D2, ...] (the dims of one sample), "
                         f"got {reshape!r}")
    return ModelEntry(name, path, test, labels, calib, None if b is None else _int(b, f"{where} batch", 1),
                      None if samples is None else _int(samples, f"{where} samples", 1),
                      tuple(sorted((k, tuple(v)) for k, v in reshape.items())))


def _hardware_entry(h: dict[str, Any], i: int, base: Path) -> HardwareEntry:
    label = h.get("name") or h.get("preset") or h.get("file") or f"#{i + 1}"
    where = f"hardware {label!r}"
    _unknown(h, HARDWARE_KEYS, where)
    if ("preset" in h) == ("file" in h):
        raise SweepError(f"{where}: give exactly one of 'preset' (see `anac presets`) and 'file' (a hardware file)")
    try:
        if "preset" in h:
            if not isinstance(h["preset"], str):
                raise SweepError(f"{where} preset must be a name, got {h['preset']!r}")
            spec = load_hardware(preset=h["preset"])
            name = h.get("name", h["preset"])
        else:
            f = _file(base, h["file"], f"{where} file")
            spec = load_hardware(f)
            name = h.get("name", f.stem)
    except SweepError:
        raise
    except AnacError as e:
        raise SweepError(f"{where}: {e}") from None
    if not isinstance(name, str) or not name:
        raise SweepError(f"{where}: name must be a non-empty string, got {name!r}")
    variants = []
    encodings = h.get("encodings", [])
    if not isinstance(encodings, list) or not all(isinstance(e, str) and e for e in encodings):
        raise SweepError(f"{where} encodings must be a list of names like '4-PCM' or '4-PCM,fc0=2-PCM', "
                         f"got {encodings!r}")
    for enc in encodings:
        try:
            default, per_layer = parse_encodings(enc)
            for e in {default or spec.default_encoding, *per_layer.values()}:
                spec.encoding(e)
        except AnacError as e:
            raise SweepError(f"{where} encoding {enc!r}: {e}") from None
        variants.append(Variant(enc, (("encoding", enc),)))
    budgets = h.get("budgets", [])
    if not isinstance(budgets, list) or not all(isinstance(b, dict) and b for b in budgets):
        raise SweepError(f"{where} budgets must be a list of tables like {{pcm_per_weight = 3.0}}, got {budgets!r}")
    for b in budgets:
        _unknown(b, BUDGET_KEYS, f"{where} budget {b!r}")
        for k, v in b.items():
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 and np.isfinite(v)
            if not ok or (k != "pcm_per_weight" and not isinstance(v, int)):
                kind = "number" if k == "pcm_per_weight" else "integer"
                raise SweepError(f"{where} budget {k} must be a positive {kind}, got {v!r}")
        variants.append(Variant(",".join(f"{k}={v}" for k, v in sorted(b.items())), tuple(sorted(b.items()))))
    if not variants:
        variants.append(Variant(spec.default_encoding, (("encoding", spec.default_encoding),)))
    labels = [v.label for v in variants]
    if len(set(labels)) != len(labels):
        raise SweepError(f"{where}: an encoding or budget is given twice ({', '.join(labels)})")
    return HardwareEntry(name, spec, tuple(variants))


def load_data(entry: ModelEntry, declared: Sequence[Any] | None = None) -> ModelData:
    """The model's test inputs, labels and calibration inputs, checked against the model's declared inputs."""
    where = f"model '{entry.name}'"
    if declared is None:
        declared = model_inputs(load_onnx(entry.path))
    try:
        arrays = load_inputs(entry.test_data)
        labels = load_labels(entry.labels) if entry.labels else None
        calib = load_inputs(entry.calibration_data) if entry.calibration_data else None
    except AnacError as e:
        raise SweepError(f"{where}: {e}") from None
    names = [t.name for t in declared]
    if labels is None:
        if "labels" not in arrays or "labels" in names:
            raise SweepError(f"{where}: no labels; give 'labels = \"FILE.npz:KEY\"' or a 'labels' array in "
                             f"{entry.test_data}")
        labels = arrays["labels"]
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise SweepError(f"{where}: labels in {entry.test_data} must be a 1-D integer array, got "
                             f"{labels.dtype} {list(labels.shape)}")
    inputs = {k: v for k, v in arrays.items() if k in names}
    missing = [n for n in names if n not in inputs]
    if missing:
        raise SweepError(f"{where}: test data {entry.test_data} has no array for input(s) {', '.join(missing)}; "
                         f"it holds {', '.join(arrays)}")
    shaped = dict(entry.reshape)
    unknown = [k for k in shaped if k not in names]
    if unknown:
        raise SweepError(f"{where} reshape names {', '.join(unknown)}, not an input of the model "
                         f"({', '.join(names)})")

    def fit(a: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        out = {}
        for k in names:
            v = np.asarray(a[k])
            if k in shaped:
                dims = shaped[k]
                if v.ndim == 0 or int(np.prod(v.shape[1:])) != int(np.prod(dims)):
                    raise SweepError(f"{where}: cannot reshape {what} '{k}' of shape {list(v.shape)} to samples "
                                     f"of {list(dims)}")
                v = v.reshape((-1, *dims))
            out[k] = v
        return out

    inputs = fit(inputs, "test input")
    counts = {k: len(v) for k, v in inputs.items()}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        raise SweepError(f"{where}: test inputs hold different or zero numbers of samples: {counts}")
    n = next(iter(counts.values()))
    if len(labels) != n:
        raise SweepError(f"{where}: {len(labels)} labels for {n} test samples in {entry.test_data}; "
                         f"one label per sample is needed")
    if entry.samples is not None:
        if entry.samples > n:
            raise SweepError(f"{where}: samples = {entry.samples} but {entry.test_data} holds {n}")
        inputs, labels, n = {k: v[:entry.samples] for k, v in inputs.items()}, labels[:entry.samples], entry.samples
    if calib is not None:
        missing = [k for k in names if k not in calib]
        if missing:
            raise SweepError(f"{where}: calibration data {entry.calibration_data} has no array for input(s) "
                             f"{', '.join(missing)}")
        calib = fit(calib, "calibration input")
    fixed = {t.shape[0] for t in declared if t.shape and isinstance(t.shape[0], int)}
    symbolic = any(t.shape and not isinstance(t.shape[0], int) for t in declared)
    if fixed and (symbolic or len(fixed) > 1):
        raise SweepError(f"{where}: inputs mix batch sizes {sorted(fixed)} (and symbolic ones); a sweep needs one")
    batch = entry.batch or (fixed.pop() if fixed else min(n, DEFAULT_BATCH_CAP))
    if fixed and batch not in fixed:
        raise SweepError(f"{where}: batch = {batch} but the model's inputs have a fixed batch of {fixed.pop()}")
    try:
        check_inputs(declared, {k: v[:batch] if len(v) >= batch else np.resize(v, (batch, *v.shape[1:]))
                                for k, v in inputs.items()})
    except AnacError as e:
        raise SweepError(f"{where}: test data {entry.test_data} does not fit the model: {e}") from None
    return ModelData(inputs, np.asarray(labels), calib, batch)


def plan(grid: Grid) -> tuple[list[Build], list[Cell]]:
    """Every build and cell of the grid, in grid order, each with a key that names its content."""
    builds, cells = [], []
    for m in grid.models:
        files = {k: _digest(p) for k, p in (("model", m.path), ("test", m.test_data),
                                            ("labels", m.labels and m.labels.rsplit(":", 1)[0]),
                                            ("calib", m.calibration_data)) if p}
        for h in grid.hardware:
            for v in h.variants:
                bkey = _key({"anac": __version__, "files": files, "hardware": asdict(h.spec), "options": v.options,
                             "names": [m.name, h.name, v.label], "labels": m.labels and m.labels.rpartition(":")[2],
                             "batch": m.batch, "samples": m.samples, "reshape": m.reshape})
                b = Build(bkey, m, h, v)
                builds.append(b)
                for i in range(grid.repeats):
                    seed = grid.seed + i
                    ckey = _key({"build": bkey, "seed": seed, "times": grid.times, "comp": grid.compensation})
                    cells.append(Cell(ckey, b, seed, tuple(grid.times), grid.compensation))
    return builds, cells


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


_DIGESTS: dict[tuple[str, float, int], str] = {}


def _digest(path: str | Path) -> str:
    st = os.stat(path)
    k = (str(path), st.st_mtime, st.st_size)
    if k not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _DIGESTS[k] = h.hexdigest()
    return _DIGESTS[k]


# ---------------------------------------------------------------- the work (runs in workers)


def _chunks(inputs: Mapping[str, np.ndarray], batch: int) -> Iterator[dict[str, np.ndarray]]:
    """The test set in runs of ``batch`` samples; the last wraps around to the first samples."""
    n = len(next(iter(inputs.values())))
    for i in range(-(-n // batch)):
        idx = np.arange(i * batch, (i + 1) * batch) % n
        yield {k: v[idx] for k, v in inputs.items()}


def _gather(parts: list[dict[str, np.ndarray]], n: int) -> dict[str, np.ndarray]:
    return {k: np.concatenate([as_array(p[k]) for p in parts])[:n] for k in parts[0]}


def model_bytes(path: Path) -> bytes:
    """The model with any external data folded in: what a worker needs, as one byte string."""
    return load_onnx(path).SerializeToString()


def build_bundle(model: bytes, data: ModelData, hardware: HardwareSpec, options: Mapping[str, Any]) -> bytes:
    """Compile the model and run onnxruntime on the test data: a zip of the program and the reference outputs."""
    proto = onnx.load_from_string(model)
    shapes = {k: (data.batch, *v.shape[1:]) for k, v in data.inputs.items()}
    prog = compile_model(proto, hardware=hardware, input_shapes=shapes, options=dict(options),
                         calibration_data=data.calibration, progress=lambda _m: None)
    names = [t.name for t in prog.outputs]
    sess = make_session(onnx.load_from_string(model), "the original model")
    outs = [o.name for o in sess.get_outputs()]
    feed = {i.name for i in sess.get_inputs()}
    parts = [dict(zip(outs, run_session(sess, {k: v for k, v in c.items() if k in feed}, "the original model"),
                      strict=True)) for c in _chunks(data.inputs, data.batch)]
    ref = _gather([{k: p[k] for k in names} for p in parts], len(data.labels))
    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(prefix="anac-sweep-") as tmp:
        save_program(prog, Path(tmp) / "program")
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            for p in sorted((Path(tmp) / "program").rglob("*")):
                if p.is_file():
                    zf.write(p, p.relative_to(tmp).as_posix())
            with zf.open("reference.npz", "w") as f:
                np.savez(f, **ref)
    return buf.getvalue()


@dataclass
class _Loaded:
    sim: Simulator
    chunks: list[dict[str, np.ndarray]]
    reference: dict[str, np.ndarray]
    output: str
    reference_accuracy: float


_LOADED: OrderedDict[str, _Loaded] = OrderedDict()


def _load(key: str, bundle: bytes, data: ModelData) -> _Loaded:
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    with tempfile.TemporaryDirectory(prefix="anac-sweep-") as tmp:
        with zipfile.ZipFile(io.BytesIO(bundle)) as zf:
            zf.extractall(tmp)
        prog = load_program(Path(tmp) / "program")
        with np.load(Path(tmp) / "reference.npz", allow_pickle=False) as z:
            ref = {k: z[k] for k in z.files}
    name = accuracy_output(ref, len(data.labels))
    if name is None:
        raise InputError(f"{len(data.labels)} labels but no output of the model has shape "
                         f"({len(data.labels)}, classes) to take the accuracy of")
    acc = float(np.mean(ref[name].argmax(axis=1) == data.labels))
    loaded = _Loaded(Simulator(prog, "hardware"), list(_chunks(data.inputs, data.batch)), ref, name, acc)
    _LOADED[key] = loaded
    while len(_LOADED) > _CACHE_BUILDS:
        _LOADED.popitem(last=False)
    return loaded


def run_cell(cell: Cell, bundle: bytes, data: ModelData) -> list[dict[str, Any]]:
    """Program one chip instance and read it at every time (with each drift compensation setting): the rows."""
    b = cell.build
    ld = _load(b.key, bundle, data)
    t0 = time.perf_counter()
    ld.sim.program(cell.seed)
    program_s = time.perf_counter() - t0
    rows = []
    for comp in cell.compensation:
        for label, secs in cell.times:
            t0 = time.perf_counter()
            ld.sim.at(secs, comp)
            got = _gather([ld.sim.run(c) for c in ld.chunks], len(data.labels))[ld.output]
            wall = time.perf_counter() - t0
            rows.append({"model": b.model.name, "hardware": b.hardware.name, "encoding": b.variant.label,
                         "drift_compensation": comp, "seed": cell.seed, "time": label, "seconds": secs,
                         "accuracy": float(np.mean(as_array(got).argmax(axis=1) == data.labels)),
                         "reference_accuracy": ld.reference_accuracy,
                         "rel_err": compare(got, ld.reference[ld.output]).rel_err,
                         "wall_s": round(wall, 4), "program_s": round(program_s, 4)})
    return rows


# ---------------------------------------------------------------- executors


class _Serial:
    """Everything in this process, one cell after another."""

    workers = 1

    def __init__(self) -> None:
        self._done: list[tuple[Any, Any]] = []

    def build(self, b: Build, model: Path, data: ModelData) -> Any:
        self._done.append((("build", b.key), build_bundle(model_bytes(model), data, b.hardware.spec,
                                                          dict(b.variant.options))))
        return ("build", b.key)

    def put_bundle(self, key: str, bundle: bytes) -> Any:
        return bundle

    def bundle_of(self, handle: Any, value: bytes) -> Any:
        return value

    def cell(self, c: Cell, bundle: Any, data: ModelData) -> Any:
        self._done.append((("cell", c.key), run_cell(c, bundle, data)))
        return ("cell", c.key)

    def wait(self) -> list[tuple[Any, Any]]:
        done, self._done = self._done, []
        return done

    def close(self) -> None:
        _LOADED.clear()


def _pool_build(key: str, model: str, entry: ModelEntry, hardware: HardwareSpec, options: dict[str, Any],
                out: str) -> str:
    """Pool worker: compile and write the bundle file (atomically); return its path."""
    bundle = build_bundle(model_bytes(Path(model)), _data(entry), hardware, options)
    _write_atomic(Path(out), bundle)
    return out


_DATA: dict[ModelEntry, ModelData] = {}


def _data(entry: ModelEntry) -> ModelData:
    if entry not in _DATA:
        _DATA[entry] = load_data(entry)
    return _DATA[entry]


def _pool_cell(cell: Cell, bundle_path: str) -> list[dict[str, Any]]:
    """Pool worker: the bundle is read from the sweep directory once per worker process, the data once."""
    data = _data(cell.build.model)
    bundle = b"" if cell.build.key in _LOADED else Path(bundle_path).read_bytes()
    return run_cell(cell, bundle, data)


class _Pool:
    """A local process pool; builds and data travel as files, read once per worker process."""

    def __init__(self, workers: int, programs: Path) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        self.workers, self._programs, self._cf = workers, programs, cf
        self._pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                            initializer=_quiet_worker, initargs=(os.getpid(),))
        self._pending: set[Any] = set()

    def build(self, b: Build, model: Path, data: ModelData) -> Any:
        f = self._pool.submit(_pool_build, b.key, str(model), b.model, b.hardware.spec, dict(b.variant.options),
                              str(self._programs / f"{b.key}.zip"))
        self._pending.add(f)
        return f

    def put_bundle(self, key: str, bundle: bytes) -> Any:
        return str(self._programs / f"{key}.zip")

    def bundle_of(self, handle: Any, value: str) -> Any:
        return value

    def cell(self, c: Cell, bundle: Any, data: ModelData) -> Any:
        f = self._pool.submit(_pool_cell, c, bundle)
        self._pending.add(f)
        return f

    def wait(self) -> list[tuple[Any, Any]]:
        done, self._pending = self._cf.wait(self._pending, return_when=self._cf.FIRST_COMPLETED)
        return [(f, f.result()) for f in done]

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _quiet_worker(parent: int) -> None:
    """Pool worker start: warnings only, and exit when the sweep that started it (``parent``) is gone, kill -9
    included (the pid is passed in, as the sweep may die before this runs)."""
    logging.getLogger().setLevel(logging.WARNING)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


class _Ray:
    """Ray: the model bytes and test data go into the object store once (one copy per node); a build's bundle
    stays there as the build task's result, so each node fetches it once however many cells it runs."""

    def __init__(self, address: str | None, workers: int | None) -> None:
        try:
            import ray
        except ModuleNotFoundError:
            raise SweepError("--ray needs Ray: pip install 'anac[ray]'") from None
        self.ray = ray
        if address is not None:
            _check_reachable(address)
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
        if address is None:
            kwargs.update(num_cpus=workers, include_dashboard=False)
        try:
            ray.init(address=address, **kwargs)
        except Exception as e:  # noqa: BLE001 - ray raises ConnectionError, RuntimeError, ValueError...
            raise SweepError(f"cannot start or reach Ray at {address or 'a new local instance'}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        self.workers = int(ray.cluster_resources().get("CPU", 1))
        self._build = ray.remote(num_cpus=1)(build_bundle)
        self._cell = ray.remote(num_cpus=1)(run_cell)
        self._refs: dict[Any, Any] = {}
        self._puts: dict[Any, Any] = {}
        self._pending: list[Any] = []

    def _put(self, key: Any, value: Callable[[], Any]) -> Any:
        if key not in self._puts:
            self._puts[key] = self.ray.put(value())
        return self._puts[key]

    def build(self, b: Build, model: Path, data: ModelData) -> Any:
        m = self._put(("model", model), lambda: model_bytes(model))
        d = self._put(("data", b.model), lambda: data)
        ref = self._build.remote(m, d, b.hardware.spec, dict(b.variant.options))
        self._pending.append(ref)
        return ref

    def put_bundle(self, key: str, bundle: bytes) -> Any:
        return self.ray.put(bundle)

    def bundle_of(self, handle: Any, value: bytes) -> Any:
        return handle  # the build task's result, already in the object store

    def cell(self, c: Cell, bundle: Any, data: ModelData) -> Any:
        d = self._put(("data", c.build.model), lambda: data)
        ref = self._cell.remote(c, bundle, d)
        self._pending.append(ref)
        return ref

    def wait(self) -> list[tuple[Any, Any]]:
        done, self._pending = self.ray.wait(self._pending, num_returns=1)
        out = []
        for ref in done:
            try:
                out.append((ref, self.ray.get(ref)))
            except self.ray.exceptions.RayTaskError as e:
                cause = getattr(e, "cause", None)
                if isinstance(cause, AnacError):
                    raise cause from None
                raise
        return out

    def close(self) -> None:
        self.ray.shutdown()


def _check_reachable(address: str) -> None:
    """A quick TCP connect, so a wrong address fails in seconds, not after Ray's minutes of retries."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise SweepError(f"--address {address}: give ray://HOST:PORT (the Ray client port, 10001 by default) "
                         f"or HOST:PORT of the head node")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as e:
        raise SweepError(f"cannot reach Ray at {address}: {e.strerror or e}") from None


# ---------------------------------------------------------------- the driver


@dataclass
class SweepResult:
    """What a sweep wrote."""

    rows: list[dict[str, Any]]
    cells: int
    skipped: int
    results: Path
    report: Path
    elapsed_s: float
    workers: int = 1
    notes: list[str] = field(default_factory=list)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write under a temporary name, fsync, rename, fsync the directory: the file is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_cell(path: Path, key: str) -> list[dict[str, Any]] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data["rows"] if isinstance(data, dict) and data.get("key") == key else None


def _fmt_s(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def run_sweep(grid: Grid | str | Path, out: str | Path, *, workers: int | None = None, use_ray: bool = False,
              address: str | None = None) -> SweepResult:
    """Run every cell of ``grid`` not already done in ``out``; write out/results.csv and out/report.html.

    ``workers`` local processes (default: CPU count; 1 runs in this process), or Ray with ``use_ray`` /
    ``address``. All input is checked before any cell runs.
    """
    t_start = time.perf_counter()
    grid = grid if isinstance(grid, Grid) else load_grid(grid)
    if workers is not None and workers < 1:
        raise SweepError(f"workers must be at least 1, got {workers}")
    data = {m: load_data(m) for m in grid.models}  # every data problem before any work
    builds, cells = plan(grid)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepError(f"-o {out} is a file; give a directory")
    cell_dir, prog_dir = out / "cells", out / "programs"
    rows: dict[str, list[dict[str, Any]]] = {}
    for c in cells:
        got = _read_cell(cell_dir / f"{c.key}.json", c.key)
        if got is not None:
            rows[c.key] = got
    todo = [c for c in cells if c.key not in rows]
    skipped = len(cells) - len(todo)
    log.info("sweep: %d cells (%d builds x %d instances), %d already done in %s", len(cells), len(builds),
             grid.repeats, skipped, out)
    ex: Any = None
    if todo:
        ex = _Ray(address, workers) if (use_ray or address) else \
            _Serial() if (workers or os.cpu_count() or 1) == 1 else _Pool(workers or os.cpu_count() or 1, prog_dir)
    try:
        with _locked(out):
            if ex is not None:
                _drive(ex, todo, data, prog_dir, cell_dir, rows, len(cells), skipped)
            return _finish(grid, cells, rows, out, skipped, time.perf_counter() - t_start, ex.workers if ex else 0)
    finally:
        if ex is not None:
            ex.close()


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """Hold DIR/.lock for the sweep (one sweep per directory); clear what writes killed mid-way left behind."""
    import fcntl

    for sub in ("cells", "programs"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    with open(out / ".lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise SweepError(f"another sweep is running in {out}; wait for it or give another -o") from None
        for sub in ("cells", "programs"):
            for p in (out / sub).glob(".*.tmp"):
                p.unlink(missing_ok=True)
        yield


def _finish(grid: Grid, cells: list[Cell], rows: Mapping[str, list[dict[str, Any]]], out: Path, skipped: int,
            elapsed: float, workers: int) -> SweepResult:
    """Write results.csv and report.html from the cells, in grid order."""
    table = [r for c in cells for r in rows[c.key]]
    results = out / "results.csv"
    buf = io.StringIO()
    w = csv.DictWriter(buf, COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(table)
    _write_atomic(results, buf.getvalue().encode())
    report = out / "report.html"
    _write_atomic(report, render_report(table, title=f"anac sweep: {grid.path.name}").encode("utf-8"))
    return SweepResult(table, len(cells), skipped, results, report, elapsed, workers)


def _drive(ex: Any, todo: list[Cell], data: Mapping[ModelEntry, ModelData], prog_dir: Path, cell_dir: Path,
           rows: dict[str, list[dict[str, Any]]], total: int, skipped: int) -> None:
    """Submit the builds the cells need (or reuse their bundle files), then each build's cells as it lands."""
    by_build: dict[str, list[Cell]] = {}
    for c in todo:
        by_build.setdefault(c.build.key, []).append(c)
    waiting: dict[Any, tuple[str, Any]] = {}
    t0 = t_first = time.perf_counter()
    done = 0

    def submit_cells(bkey: str, bundle: Any) -> None:
        for c in by_build[bkey]:
            waiting[ex.cell(c, bundle, data[c.build.model])] = ("cell", c)

    for bkey, cs in by_build.items():
        b = cs[0].build
        path = prog_dir / f"{bkey}.zip"
        if path.is_file():
            submit_cells(bkey, ex.put_bundle(bkey, path.read_bytes()))
        else:
            log.info("sweep: compiling %s for %s, %s", b.model.name, b.hardware.name, b.variant.label)
            waiting[ex.build(b, b.model.path, data[b.model])] = ("build", b)
    while waiting:
        for handle, value in ex.wait():
            kind, what = waiting.pop(handle)
            if kind == "build":
                if isinstance(value, bytes):
                    _write_atomic(prog_dir / f"{what.key}.zip", value)
                submit_cells(what.key, ex.bundle_of(handle, value))
                continue
            _write_atomic(cell_dir / f"{what.key}.json",
                          json.dumps({"key": what.key, "rows": value}, sort_keys=True).encode())
            rows[what.key] = value
            done += 1
            now = time.perf_counter()
            t_first = t_first if done > 1 else now  # the rate after the first cell leaves the compiles out
            per_cell = (now - t0) if done == 1 else (now - t_first) / (done - 1)
            left = per_cell * (len(todo) - done)
            b = what.build
            log.info("sweep: %d/%d cells done (%s, %s, %s, seed %d); about %s left", skipped + done, total,
                     b.model.name, b.hardware.name, b.variant.label, what.seed, _fmt_s(left))
