"""The driver: the one PIPELINE, and ``compile_model`` that runs it.

Before any work the driver checks that each pass's ``requires`` is produced
by an earlier pass; after each pass it runs ``Program.verify()``, times the
pass, and can dump what it produced. An exception escaping a pass carries a
note naming the pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import onnx
from anac.core.errors import PipelineError
from anac.core.frontend import check_supported, import_model, load_onnx
from anac.core.hardware import HardwareSpec, load_hardware
from anac.core.program import Program
from anac.passes.assign_devices import AssignDevices
from anac.passes.average import Average
from anac.passes.partition import Partition
from anac.passes.place import Place
from anac.passes.prune_inputs import PruneInputs
from anac.passes.replicate import Replicate
from anac.passes.schedule_links import ScheduleLinks
from anac.passes.split_matrices import SplitMatrices

log = logging.getLogger(__name__)


class Pass(Protocol):
    name: str
    requires: tuple[str, ...]
    produces: tuple[str, ...]

    def run(self, prog: Program) -> None: ...


# Options the API measures and hands to passes; what they lead to is reported, not stored as options.
MEASURED_OPTIONS = ("sensitivity", "row_scale", "error_tolerance")

PIPELINE: tuple[Pass, ...] = (Partition(), PruneInputs(), AssignDevices(), SplitMatrices(), Replicate(), Average(),
                              Place(), ScheduleLinks())


def pass_options(pipeline: Sequence[Pass] = PIPELINE) -> dict[str, list[str]]:
    """Option names each pass accepts (its dataclass fields)."""
    return {p.name: [f.name for f in dataclasses.fields(p)] for p in pipeline}  # type: ignore[arg-type]


def configure(options: Mapping[str, Any], pipeline: Sequence[Pass] = PIPELINE) -> tuple[Pass, ...]:
    """The pipeline with each pass's fields set from ``options`` (keys ``pass.field`` or ``field``)."""
    configured = []
    for p in pipeline:
        names = {f.name for f in dataclasses.fields(p)}  # type: ignore[arg-type]
        kw = {k.split(".", 1)[-1]: v for k, v in options.items()
              if v is not None and (k in names or k.startswith(p.name + ".") and k.split(".", 1)[1] in names)}
        configured.append(dataclasses.replace(p, **kw) if kw else p)  # type: ignore[type-var]
    return tuple(configured)


def check_pipeline(pipeline: Sequence[Pass]) -> None:
    """Every pass's requirements are produced by an earlier pass."""
    have = {"graph"}
    for p in pipeline:
        missing = [r for r in p.requires if r not in have]
        if missing:
            raise PipelineError(f"pass '{p.name}' requires {', '.join(missing)}, which no earlier pass produces")
        have.update(p.produces)


def compile_model(
    model: str | Path | onnx.ModelProto,
    *,
    hardware: HardwareSpec | str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    options: Mapping[str, Any] | None = None,
    dump_dir: str | Path | None = None,
    pipeline: Sequence[Pass] = PIPELINE,
    progress: Callable[[str], None] | None = None,
) -> Program:
    """Compile an ONNX model (path or ModelProto) into a placed Program.

    A symbolic leading (batch) dim of an input is bound to ``batch`` (default 1).
    """
    options = dict(options or {})
    passes = configure(options, pipeline)
    check_pipeline(passes)
    prog = import_program(model, hardware=hardware, input_shapes=input_shapes, batch=batch, options=options,
                          progress=progress)
    run_passes(prog, passes, dump_dir=dump_dir, progress=progress)
    return prog


def import_program(
    model: str | Path | onnx.ModelProto,
    *,
    hardware: HardwareSpec | str | Path | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    options: Mapping[str, Any] | None = None,
    weights: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Program:
    """The frontend: load and import the model into a Program no pass has run on.

    Without ``weights`` the model's weight values are not read (anac.core.frontend),
    and the Program is marked as a plan.
    """
    say = progress or log.info
    spec = hardware if isinstance(hardware, HardwareSpec) else load_hardware(hardware)
    options = dict(options or {})
    t0 = time.perf_counter()
    proto = load_onnx(model, weights=weights, stream=weights)  # weights read straight into their arrays
    graph = import_model(proto, input_shapes, batch=batch, weights=weights)
    del proto
    check_supported(graph)
    frontend_s = time.perf_counter() - t0
    what = "constant values" if weights else "constant values (shapes only, no weights read)"
    say(f"frontend: {len(graph.nodes)} nodes, {graph.weight_count:,} {what} ({frontend_s:.2f} s)")
    prog = Program(graph, spec, list(graph.inputs), list(graph.outputs),
                   options={k: v for k, v in sorted(options.items())
                            if v is not None and k not in MEASURED_OPTIONS and _plain(v)},
                   model_digest=graph.digest, plan=None if weights else {},
                   model_file=None if isinstance(model, onnx.ModelProto) else Path(model).name)
    prog.timings["frontend"] = frontend_s
    return prog


def run_passes(prog: Program, passes: Sequence[Pass], *, dump_dir: str | Path | None = None,
               progress: Callable[[str], None] | None = None) -> Program:
    """Run ``passes`` on ``prog`` in order, checking, timing and (with ``dump_dir``) dumping after each."""
    say = progress or log.info
    position = {q.name: j for j, q in enumerate(PIPELINE)}  # dumps are numbered by place in the pipeline
    for i, p in enumerate(passes):
        t = time.perf_counter()
        try:
            p.run(prog)
            prog.verify()
        except Exception as e:
            e.add_note(f"in pass '{p.name}' ({i + 1} of {len(passes)})")
            raise
        prog.produced.update(p.produces)
        prog.timings[p.name] = time.perf_counter() - t
        say(f"pass {p.name}: {prog.timings[p.name]:.2f} s")
        if dump_dir is not None:
            _dump(prog, Path(dump_dir), position.get(p.name, i), p.name)
    return prog


def _plain(value: Any) -> bool:
    """Whether an option is plain JSON data (arrays stay out of program.json)."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _dump(prog: Program, where: Path, index: int, name: str) -> None:
    from anac.core.artifact import program_json

    where.mkdir(parents=True, exist_ok=True)
    (where / f"{index + 1:02d}_{name}.json").write_text(json.dumps(program_json(prog), indent=1, sort_keys=True))
