"""``anac.InferenceSession``: run a compiled program the way onnxruntime runs a model.

    import anac
    sess = anac.InferenceSession("model.onnx")                      # compiles (ideal mode)
    sess = anac.InferenceSession("model.anac", mode="hardware", t="1d", seed=3)
    [y] = sess.run(None, {sess.get_inputs()[0].name: x})

An .onnx path (or ModelProto) is compiled on construction; a program directory
(or Program) is loaded as it is. Hardware mode programs one chip instance from
``seed`` and reads it ``t`` after programming; a program without calibrated
I/O ranges is calibrated on ``calibration_data`` (or the stated random fallback).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from anac.backends.calibrate import calibrate
from anac.backends.simulator import MODES, Simulator
from anac.backends.verify import parse_times
from anac.core.artifact import load_program
from anac.core.errors import AnacError, InputError
from anac.core.hardware import HardwareSpec
from anac.core.ir import TensorInfo
from anac.core.program import Program

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeArg:
    """An input or output as onnxruntime describes it: name, type string (``tensor(float)``), shape."""

    name: str
    type: str
    shape: list[int | str | None]


def _node_arg(t: TensorInfo) -> NodeArg:
    elem = onnx.TensorProto.DataType.Name(t.elem_type).lower() if t.elem_type else "undefined"
    return NodeArg(t.name, f"tensor({elem})", list(t.shape or []))


def _seconds(t: float | str) -> float:
    if isinstance(t, str):
        times = parse_times(t)
        if len(times) != 1:
            raise AnacError(f"an InferenceSession reads its chip at one time; got '{t}' ({len(times)} times)")
        return times[0][1]
    value = float(t)
    if not np.isfinite(value) or value < 0:
        raise AnacError(f"t must be a finite number of seconds >= 0, got {t}")
    return value


class InferenceSession:
    """A compiled program ready to run, with onnxruntime's ``get_inputs``/``get_outputs``/``run``."""

    def __init__(self, model_or_program: str | Path | onnx.ModelProto | Program, mode: str = "ideal", *,
                 t: float | str = 1.0, seed: int = 0, hardware: HardwareSpec | str | Path | None = None,
                 calibration_data: Mapping[str, np.ndarray] | None = None, drift_compensation: bool = True,
                 batch: int | None = None, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 options: Mapping[str, Any] | None = None) -> None:
        if mode not in MODES:
            raise AnacError(f"unknown mode '{mode}'; choose {' or '.join(MODES)}")
        self.mode, self.seed, self.t = mode, int(seed), _seconds(t)
        source = model_or_program
        if isinstance(source, Program) or (isinstance(source, (str, Path)) and Path(source).is_dir()):
            if hardware is not None or batch is not None or input_shapes or options:
                raise AnacError("hardware, batch, input_shapes and options are fixed when a program is compiled; "
                                "give them with an .onnx model, not a program")
            prog = source if isinstance(source, Program) else load_program(source)
            if calibration_data is not None and mode == "hardware":
                calibrate(prog, calibration_data, seed=self.seed)
        else:
            from anac.api import compile_model  # the front: compiling pulls in every pass

            prog = compile_model(source, hardware=hardware, input_shapes=input_shapes, batch=batch,
                                 options=options, calibration_data=calibration_data)
        if mode == "hardware" and any(m.input_range is None for m in (prog.mvms or {}).values()):
            calibrate(prog, None, seed=self.seed)  # warns that the ranges come from random inputs
        self.program = prog
        self._sim = Simulator(prog, mode)
        if mode == "hardware":
            self._sim.program(self.seed)
            self._sim.at(self.t, drift_compensation)

    def get_inputs(self) -> list[NodeArg]:
        """The program's inputs, in order."""
        return [_node_arg(t) for t in self.program.inputs]

    def get_outputs(self) -> list[NodeArg]:
        """The program's outputs, in order."""
        return [_node_arg(t) for t in self.program.outputs]

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any],
            run_options: Any = None) -> list[np.ndarray]:
        """Outputs named by ``output_names`` (all when None), for inputs keyed by name."""
        names = [t.name for t in self.program.outputs]
        wanted = list(output_names) if output_names else names
        unknown = [n for n in wanted if n not in names]
        if unknown:
            raise InputError(f"unknown output(s) {', '.join(unknown)}; the program's outputs are: {', '.join(names)}")
        outs = self._sim.run({k: np.asarray(v) for k, v in input_feed.items()})
        return [outs[n] for n in wanted]
