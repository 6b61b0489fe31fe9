"""The Python API: what the CLI calls and what the tests call.

    from anac.api import compile_model, save_program, load_program, simulate, verify
    prog = compile_model("model.onnx")
    save_program(prog, "model.anac")
    report = verify("model.onnx", program=prog, batch=4)
"""

from __future__ import annotations

import logging
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
from anac import driver
from anac.backends.calibrate import DEFAULT_PERCENTILE, calibrate, calibration_batches
from anac.backends.calibrate import tune_ranges as tune_chip_ranges
from anac.backends.estimates import PRECISION as SENSITIVITY_PRECISION
from anac.backends.estimates import layer_sensitivity, output_sensitivity
from anac.backends.simulator import Simulator, check_inputs, simulate
from anac.backends.verify import HardwareVerifyReport, VerifyReport, parse_times, verify_hardware, verify_program
from anac.core.artifact import check_writable, default_output, load_program, report_json, save_program, summary
from anac.core.digest import model_digest
from anac.core.errors import AnacError, InputError, PlacementCapacityError, ProgramMismatchError, ShapeError
from anac.core.frontend import batch_inputs, find_unsupported, import_model, load_onnx, tensor_info
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.ir import TensorInfo
from anac.core.lowering import lower
from anac.core.program import Program, Slice
from anac.driver import PIPELINE
from anac.passes.assign_devices import tile_budget
from anac.passes.partition import Partition

__all__ = ["PIPELINE", "Simulator", "calibrate", "check", "compile_model", "compile_to", "default_output",
           "load_inputs", "load_labels", "load_program", "make_inputs", "model_inputs", "parse_times", "report_json",
           "save_program", "simulate", "split_labels", "summary", "verify"]


log = logging.getLogger(__name__)

_BUDGETS = ("chips", "tiles", "pcm_per_weight")
_CAPACITY_RETRIES = 3


def compile_model(model: str | Path | onnx.ModelProto, *,
                  calibration_data: Mapping[str, np.ndarray] | None = None,
                  calibration_percentile: float | None = DEFAULT_PERCENTILE, tune_ranges: bool = False,
                  **kwargs: Any) -> Program:
    """Compile a model (see anac.driver.compile_model); calibrate the analog I/O ranges when data is given
    (and with ``tune_ranges``, tighten them for the noisy chip: backends/calibrate.py tune_ranges).

    One pipeline run. With a budget option (chips, tiles, pcm_per_weight),
    assign_devices asks for each layer's sensitivity to each encoding
    (backends/estimates.py), measured on the program it is compiling, on layer
    inputs captured from the calibration data when given (and so does average
    auto, then each candidate layer's error at the model's outputs, to choose
    the layers to average: _Measurements.output_error); with pruning and
    calibration data, input rows are ranked by weight norm times input RMS.
    """
    if tune_ranges and calibration_data is None:
        raise InputError("tuning the ranges for the noisy chip needs calibration data (--calibration-data)")
    options = dict(kwargs.pop("options", None) or {})
    pipeline = tuple(kwargs.pop("pipeline", PIPELINE))
    budgeted = any(options.get(k) is not None for k in _BUDGETS)
    measure = _Measurements(calibration_data)
    if budgeted and options.get("sensitivity") is None:
        options["sensitivity"] = measure.sensitivity
        options.setdefault("error_tolerance", SENSITIVITY_PRECISION)
    if str(options.get("average") or "").strip() == "auto":
        if options.get("sensitivity") is None:
            options["sensitivity"] = measure.sensitivity
        if options.get("output_error") is None:
            options["output_error"] = measure.output_error  # average auto scores layers by it
    if options.get("prune") and calibration_data is not None and options.get("row_scale") is None:
        options["row_scale"] = measure.row_scale
    if calibration_data is not None and any(callable(options.get(k)) for k in ("sensitivity", "row_scale")):
        at = next((i + 1 for i, p in enumerate(pipeline) if p.name == "partition"), 0)
        pipeline = (*pipeline[:at], _CaptureLayerInputs(measure), *pipeline[at:])
    for attempt in range(_CAPACITY_RETRIES):
        try:
            prog = driver.compile_model(model, options=options, pipeline=pipeline, **kwargs)
            break
        except PlacementCapacityError:
            # The packer can miss the per-encoding lower bound the knapsack assumes by a tile;
            # tighten the tile budget by one and choose again (the measurements are kept).
            hw = kwargs.get("hardware")
            tiles = tile_budget(hw if isinstance(hw, HardwareSpec) else load_hardware(hw),
                                options.get("chips"), options.get("tiles"))
            if not budgeted or tiles is None or tiles <= 1 or attempt == _CAPACITY_RETRIES - 1:
                raise
            options["tiles"] = tiles - 1
    if calibration_data is not None:
        calibrate(prog, calibration_data, percentile=calibration_percentile)
        if tune_ranges:
            tune_chip_ranges(prog, calibration_data)
    return prog


# average auto's output sensitivities: ideal runs on at most this many samples, of at most this many layers
# (more: the layers' own sensitivities score them, as logged)
OUTPUT_SAMPLES = 8
OUTPUT_LAYERS = 200


class _Measurements:
    """What the passes ask the API to measure on the program being compiled, measured once (a retried
    compile reuses it): layer inputs from calibration data, input-row RMS, sensitivity to each encoding."""

    def __init__(self, data: Mapping[str, np.ndarray] | None) -> None:
        self.data = data
        self.layer_inputs: dict[str, np.ndarray] | None = None
        self._sensitivity: dict[str, dict[str, float]] | None = None

    def capture(self, prog: Program) -> None:
        if self.data is not None and self.layer_inputs is None:
            self.layer_inputs = _layer_inputs(prog, self.data)

    def row_scale(self, prog: Program) -> dict[str, np.ndarray]:
        """Per single-matrix layer, each input row's RMS over the captured inputs."""
        return {k: np.sqrt(np.mean(np.square(v, dtype=np.float64), axis=0))
                for k, v in (self.layer_inputs or {}).items() if len(prog.mvms[k].matrices) == 1}  # type: ignore[index]

    def sensitivity(self, prog: Program) -> dict[str, dict[str, float]]:
        if self._sensitivity is None:
            log.info("measuring the sensitivity of %d crossbar layers to each encoding", len(prog.mvms or {}))
            t0 = time.perf_counter()
            self._sensitivity = layer_sensitivity(prog, self.layer_inputs)
            log.info("sensitivity measured (%.1f s)", time.perf_counter() - t0)
        return self._sensitivity

    def output_error(self, prog: Program, layer_error: Mapping[str, float]) -> dict[str, float] | None:
        """Each layer's error at the model's outputs (estimates.output_sensitivity) on up to ``OUTPUT_SAMPLES``
        calibration samples, else on seeded random inputs; None (logged) for more than ``OUTPUT_LAYERS``."""
        if len(layer_error) > OUTPUT_LAYERS:
            log.info("average auto: %d candidate layers (more than %d): scoring them by their own sensitivity, "
                     "not by their error at the model's outputs", len(layer_error), OUTPUT_LAYERS)
            return None
        if self.data is not None:
            batches, seen = [], 0
            for b in calibration_batches(prog, self.data):
                batches.append(b)
                seen += len(next(iter(b.values()))) if b else 1
                if seen >= OUTPUT_SAMPLES:
                    break
        else:
            batches = [make_inputs(prog.inputs, seed=0)]
        log.info("average auto: measuring the error of %d layers at the model's outputs (%d ideal runs)",
                 len(layer_error), len(layer_error) + 1)
        t0 = time.perf_counter()

        def progress(done: int, total: int) -> None:
            if done % 20 == 0 or done == total:
                log.info("  %d/%d layers (%.1f s)", done, total, time.perf_counter() - t0)

        return output_sensitivity(prog, batches, layer_error, self.layer_inputs, progress=progress)


@dataclass(frozen=True)
class _CaptureLayerInputs:
    """Capture each crossbar layer's inputs on calibration data, right after partition (before any row is
    pruned), for the measurements the later passes ask for."""

    name: ClassVar[str] = "capture_layer_inputs"
    requires: ClassVar[tuple[str, ...]] = ("partition",)
    produces: ClassVar[tuple[str, ...]] = ()
    measure: _Measurements

    def run(self, prog: Program) -> None:
        self.measure.capture(prog)


def _layer_inputs(prog: Program, data: Mapping[str, np.ndarray], rows: int = 256) -> dict[str, np.ndarray]:
    """Up to ``rows`` input rows of every crossbar layer, from an ideal run on calibration data.

    The program needs only its partition: the run sees each matrix as one slice of a shallow copy.
    """
    seen: dict[str, list[np.ndarray]] = {}

    def observe(kind: str, key: Any, values: np.ndarray) -> None:
        # A layer of several matrices (packs of groups) is seen once per matrix: its first matrix's rows are kept
        # (a last pack of fewer groups has narrower rows).
        if kind == "input" and sum(len(v) for v in seen.get(key, [])) < rows \
                and values.shape[-1] == seen.get(key, [values])[0].shape[-1]:
            seen.setdefault(key, []).append(np.asarray(values[:rows], np.float32))

    whole = [Slice(i, m.id, (0, m.shape[0]), (0, m.shape[1]), m.encoding or prog.hardware.default_encoding)
             for i, m in enumerate((prog.matrices or {}).values())]
    sim = Simulator(replace(prog, slices=whole), "ideal", observer=observe)
    for batch in calibration_batches(prog, data):
        sim.run(batch)
        if all(sum(len(v) for v in seen.get(n, [])) >= rows for n in prog.mvms or {}):
            break
    return {k: np.concatenate(v)[:rows] for k, v in seen.items()}


def compile_to(model: str | Path, out: str | Path | None = None, **kwargs: Any) -> tuple[Program, Path]:
    """Compile ``model`` and write the program to ``out`` (default ``model.anac``)."""
    out_path = Path(out) if out is not None else default_output(model)
    check_writable(out_path)
    prog = compile_model(model, **kwargs)
    return prog, save_program(prog, out_path)


def check(model: str | Path | onnx.ModelProto,
          input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, Any]:
    """Which nodes go to crossbars, which to the host (and why), which cannot be compiled."""
    graph = import_model(load_onnx(model), input_shapes, default_dim=1)  # batch does not change the mapping
    bad = {n.name: why for n, why in find_unsupported(graph)}
    unsupported = [{"node": n, "op_type": graph.node(n).op_type, "reason": why} for n, why in bad.items()]
    if bad:
        return {"analog": [], "fused": [], "host": [], "unsupported": unsupported, "ok": False}
    prog = Program(graph, load_hardware(), list(graph.inputs), list(graph.outputs))
    Partition().run(prog)  # the compiler's own decision, fused activations included
    mvms = prog.mvms or {}
    analog = []
    for mvm in mvms.values():
        mats = [prog.matrices[m] for m in mvm.matrices]  # type: ignore[index]
        zeros = prog.zero_block_weights(mvm.matrices)
        analog.append({"node": mvm.node, "op_type": mvm.op_type, "matrices": len(mats),
                       "shape": list(mats[0].shape), "weights": sum(m.weights.size for m in mats) - zeros})
    fused = [{"node": m.norm, "op_type": "BatchNormalization", "into": m.node} for m in mvms.values() if m.norm]
    fused += [{"node": m.activation["node"], "op_type": m.activation["op"], "into": m.node}
              for m in mvms.values() if m.activation]
    host = []
    for st in prog.stages or []:
        for name in st.nodes if st.kind == "host" else []:
            node = graph.node(name)
            why = lower(node, graph)
            reason = why if isinstance(why, str) else "runs on the host"
            host.append({"node": name, "op_type": node.op_type, "reason": reason})
    return {"analog": analog, "fused": fused, "host": host, "unsupported": [], "ok": True}


def model_inputs(model: onnx.ModelProto) -> list[TensorInfo]:
    """The model's real inputs (those not backed by an initializer), as declared."""
    inits = {t.name for t in model.graph.initializer}
    return [tensor_info(v) for v in model.graph.input if v.name not in inits]


MAX_INPUT_BYTES = 2**32  # random inputs larger than this are a mistake (a --batch typo), not a test


def make_inputs(infos: Sequence[TensorInfo], batch: int | None = None, seed: int = 0,
                input_shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, np.ndarray]:
    """Seeded random inputs: static dims as declared, a symbolic first dim set to ``batch`` (default 1)."""
    rng = np.random.default_rng(seed)
    given = input_shapes or {}
    free = batch_inputs(infos, given, batch)
    if free and batch is None:
        log.warning("symbolic batch dim of input(s) %s bound to 1 (--batch N, or batch=N in the API, binds it to N)",
                    ", ".join(t.name for t in free))
    out = {}
    for t in infos:
        if t.elem_type == 0:
            raise InputError(f"input '{t.name}' is not a tensor; give its values with --inputs")
        if t.name in given:
            shape = tuple(int(d) for d in given[t.name])
        else:
            if t.shape is None:
                raise ShapeError(f"input '{t.name}' has no shape in the model; give it with --input-shape "
                                 f"{t.name}=D0,D1,...")
            shape = tuple(_dim(t, i, d, batch) for i, d in enumerate(t.shape))
        dtype = t.dtype
        if any(d < 0 for d in shape) or np.prod(shape, dtype=np.float64) * np.dtype(dtype).itemsize > MAX_INPUT_BYTES:
            raise InputError(f"input '{t.name}' of shape {list(shape)} ({dtype}) would take more than "
                             f"{MAX_INPUT_BYTES / 2**30:g} GiB or has a negative dim; give a smaller --batch or shape")
        if np.issubdtype(dtype, np.floating):
            out[t.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            out[t.name] = rng.integers(0, 2, shape).astype(bool)
        elif np.issubdtype(dtype, np.integer):
            out[t.name] = rng.integers(0, 4, shape).astype(dtype)  # small: safe as indices into most tables
        else:
            raise InputError(f"input '{t.name}' is {dtype}; anac cannot make random values of that type, "
                             f"give them with --inputs")
    return out


def _dim(t: TensorInfo, i: int, d: int | str | None, batch: int | None) -> int:
    if isinstance(d, int):
        return d
    if i == 0:
        return 1 if batch is None else batch
    raise ShapeError(f"input '{t.name}': dim {i} is symbolic ('{d or '?'}'); give its value with --input-shape "
                     f"{t.name}=" + ",".join(str(x) if isinstance(x, int) else "1" for x in t.shape or ()))


def load_labels(spec: str | Path, inputs_path: str | Path | None = None) -> np.ndarray:
    """Accuracy labels from ``FILE.npz[:KEY]`` (KEY defaults to ``labels``)."""
    text = str(spec)
    path, key = text, "labels"
    head, sep, tail = text.rpartition(":")
    if sep and head and "/" not in tail and not Path(text).exists():
        path, key = head, tail or "labels"
    arrays = load_inputs(path)
    if key not in arrays:
        raise InputError(f"no array '{key}' in {path} for the labels; it holds: {', '.join(arrays) or '(none)'}")
    labels = arrays[key]
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise InputError(f"labels '{key}' in {path} must be a 1-D integer array (one class per sample); "
                         f"got {labels.dtype} {list(labels.shape)}")
    return labels


def split_labels(declared: Sequence[TensorInfo], inputs: Mapping[str, np.ndarray],
                 labels: np.ndarray | None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The model's inputs and the accuracy labels: a key ``labels`` is taken as labels only when no
    labels were given and the model has no input of that name."""
    names = {t.name for t in declared}
    if labels is None and "labels" in inputs and "labels" not in names:
        labels = np.asarray(inputs["labels"])
        inputs = {k: v for k, v in inputs.items() if k != "labels"}
    return {k: np.asarray(v) for k, v in inputs.items()}, labels


def load_inputs(path: str | Path) -> dict[str, np.ndarray]:
    """Arrays of an .npz file keyed by input name."""
    p = Path(path)
    try:
        data = np.load(p, allow_pickle=False)
        if not hasattr(data, "files"):
            raise InputError(f"{p} is a single .npy array; give an .npz keyed by input name")
        with data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise InputError(f"cannot read inputs from {p}: {e}") from None


def check_finite_inputs(inputs: Mapping[str, np.ndarray]) -> None:
    """Refuse float inputs holding NaN or Inf: compared with onnxruntime they would prove nothing."""
    for name, v in inputs.items():
        a = np.asarray(v)
        if np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.complexfloating):
            bad = int(a.size - np.count_nonzero(np.isfinite(a)))
            if bad:
                raise InputError(f"input '{name}' holds {bad} non-finite value(s) (NaN or Inf) of {a.size}; "
                                 f"give finite inputs (or allow them with --allow-nonfinite-inputs)")


def verify(
    model: str | Path | onnx.ModelProto,
    *,
    program: Program | str | Path | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    batch: int | None = None,
    seed: int = 0,
    mode: str = "ideal",
    tolerance: float | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    hardware: HardwareSpec | str | Path | None = None,
    options: Mapping[str, Any] | None = None,
    times: str | Sequence[tuple[str, float]] = "1s",
    repeats: int = 1,
    drift_compensation: bool = True,
    calibration_data: Mapping[str, np.ndarray] | None = None,
    labels: np.ndarray | None = None,
    allow_nonfinite: bool = False,
) -> VerifyReport | HardwareVerifyReport:
    """Compile (unless ``program`` is given), simulate, and compare with onnxruntime on the original model.

    With ``labels`` (one class per sample) hardware mode reports top-1
    accuracy; without, a ``labels`` array in ``inputs`` is taken as labels when
    the model has no input of that name. Hardware mode programs ``repeats`` chip instances from ``seed``
    and reads them at each of ``times`` ("1s,1h,1d,1y"); a program without
    calibrated I/O ranges is calibrated on ``calibration_data`` (or the stated
    random fallback). Inputs holding NaN or Inf are refused unless ``allow_nonfinite``.
    """
    if mode not in ("ideal", "hardware"):
        raise AnacError(f"unknown verify mode '{mode}'; choose ideal or hardware")
    when = parse_times(times) if isinstance(times, str) else list(times)
    proto = load_onnx(model)
    declared = model_inputs(proto)
    if isinstance(program, (str, Path)):
        program = load_program(program)
    if program is not None and program.model_digest is not None:
        digest = model_digest(proto)
        if digest != program.model_digest:
            raise ProgramMismatchError(
                f"the program was compiled from another model: its model digest is {program.model_digest}, "
                f"{model if isinstance(model, (str, Path)) else 'the model given'} has {digest}; "
                f"compile this model again or verify against the model the program came from")
    if inputs is None and program is not None:
        # A compiled program has its shapes bound: the batch must be the one it was compiled for.
        batch_inputs(declared, input_shapes or {}, batch)
        fixed = {t.shape[0] for t in program.inputs if t.shape}
        if batch is not None and fixed != {batch}:
            raise ShapeError(f"the program was compiled for a batch of {', '.join(map(str, sorted(fixed)))}; "
                             f"--batch {batch} needs a program compiled with --batch {batch}")
        inputs = make_inputs(program.inputs, None, seed, input_shapes)
    elif inputs is None:
        inputs = make_inputs(declared, batch, seed, input_shapes)
    else:
        inputs, labels = split_labels(declared, inputs, labels)
        check_inputs(declared, inputs)
    if not allow_nonfinite:
        check_finite_inputs(inputs)
    if program is None:
        program = compile_model(proto, input_shapes={k: v.shape for k, v in inputs.items()},
                                hardware=hardware, options=options)
    del proto
    if mode == "ideal":
        return verify_program(program, model, inputs, tolerance=tolerance)
    if calibration_data is not None or any(m.input_range is None for m in (program.mvms or {}).values()):
        calibrate(program, calibration_data, seed=seed)
    return verify_hardware(program, model, inputs, when, seed=seed, repeats=repeats,
                           drift_compensation=drift_compensation, labels=labels, tolerance=tolerance)
