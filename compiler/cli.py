"""The ``anac`` command: a thin shell over anac.api.

Each command parses its options, calls the API function the tests call and
prints. AnacErrors print as one paragraph on stderr with exit 1; click's
usage errors exit 2; progress goes to stderr; ``--json`` prints one JSON
object on stdout.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable
from typing import Any

import click
from anac import __version__
from anac.core.errors import AnacError

log = logging.getLogger("anac")


def _parse_shapes(values: tuple[str, ...]) -> dict[str, list[int]]:
    shapes: dict[str, list[int]] = {}
    for v in values:
        name, sep, dims = v.rpartition("=")
        try:
            if not sep or not name:
                raise ValueError
            shapes[name] = [int(d) for d in dims.replace("x", ",").split(",") if d.strip()]
        except ValueError:
            raise click.BadParameter(f"'{v}' is not NAME=D0,D1,... (for example input=1,64)",
                                     param_hint="--input-shape") from None
    return shapes


def _command(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn AnacErrors into a one-paragraph message and exit 1; set up progress logging."""
    @functools.wraps(fn)
    def wrapper(*args: Any, quiet: bool = False, **kwargs: Any) -> Any:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("anac: %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.WARNING if quiet else logging.INFO)
        for noisy in ("onnxscript", "onnx_ir", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        try:
            return fn(*args, **kwargs)
        except AnacError as e:
            click.echo(f"error: {e}", err=True)
            sys.exit(1)
        finally:
            root.removeHandler(handler)
    return click.option("-q", "--quiet", is_flag=True, help="No progress messages on stderr.")(wrapper)


def _finite(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """click's FloatRange lets nan and inf through; an option that takes a number takes a finite one."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a finite number")
    return value


# Bounds of the integer options: far above any real use, far below what overflows int64 arithmetic downstream.
MAX_CHIPS = 2**20
MAX_TILES = 2**30
MAX_BATCH = 2**20
MAX_SEED = 2**32 - 1


def _json_out(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=1, sort_keys=True, default=str))


_shape_option = click.option("--input-shape", "input_shape", multiple=True, metavar="NAME=D0,D1,...",
                             help="Bind an input's shape (symbolic dims); repeatable.")
_hw_option = click.option("--hardware", type=click.Path(dir_okay=False), default=None,
                          help="A preset name (see `anac presets`) or a hardware description (JSON or TOML): "
                               "a preset plus overrides.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
_calibration_option = click.option(
    "--calibration-data", type=click.Path(dir_okay=False, exists=True), default=None,
    help=".npz of representative inputs (samples on axis 0) that set the analog input/output ranges.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="anac")
def main() -> None:
    """anac: compile ONNX models to analog in-memory-computing chips (PCM crossbars)."""


def _mapping_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of how a model maps to the hardware, shared by compile and plan."""
    options = [
        _hw_option, _shape_option,
        click.option("--batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
                     help="Bind the inputs' symbolic leading (batch) dim to this value (default 1)."),
        click.option("--encoding", default=None, metavar="ENC|LAYER=ENC,...",
                     help="Weight encoding for every layer, or per layer (e.g. 4-PCM,fc0=2-PCM); default: the "
                          "hardware's."),
        click.option("--split-strategy", type=click.Choice(["fill", "even"]), default=None,
                     help="How matrices are cut."),
        click.option("--prune-inputs", "prune", default=None, metavar="auto|LAYER=ROWS,...",
                     help="Keep a layer's most important input rows (auto: the first layer to one tile's rows)."),
        click.option("--chips", type=click.IntRange(min=1, max=MAX_CHIPS), default=None,
                     help="Chip budget: choose encodings per layer to fit it, and fail if the model cannot."),
        click.option("--tiles", type=click.IntRange(min=1, max=MAX_TILES), default=None,
                     help="Tile budget for the encoding choice."),
        click.option("--pcm-per-weight", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
                     help="Average PCM devices per weight allowed (e.g. 3.0)."),
        click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
                     help="CP-SAT time limit in seconds for the encoding choice (default 10)."),
        click.option("--max-chips", type=click.IntRange(min=1, max=MAX_CHIPS), default=None,
                     help="Fail if the model needs more chips."),
        click.option("--dump-dir", type=click.Path(file_okay=False), default=None,
                     help="Write what each pass produced."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _budgeted_spec(hardware: str | None, chips: int | None, max_chips: int | None) -> Any:
    """The hardware spec with its chip limit lowered to --max-chips or --chips."""
    from dataclasses import replace

    from anac.core.hardware import load_hardware

    spec = load_hardware(hardware)
    limit = min(c for c in (max_chips, chips, spec.max_chips) if c is not None) \
        if any(c is not None for c in (max_chips, chips)) else None
    return replace(spec, max_chips=limit).validate() if limit is not None else spec


@main.command("compile")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(), default=None,
              help="Program directory (default MODEL.anac; with --plan-only MODEL.plan.anac).")
@_mapping_options
@click.option("--scale", type=click.Choice(["tile", "column"]), default=None,
              help="Conductance scale per tile (slice) or per output column (default: column; each column's "
                   "outputs converted at the slice's range over its gain).")
@click.option("--clip-sigma", type=click.FloatRange(min=0, min_open=True), default=None, callback=_finite,
              help="Clip weights beyond this many standard deviations before mapping to conductances.")
@_calibration_option
@click.option("--tune-ranges", is_flag=True,
              help="After calibrating, tighten the input and output ranges for the noisy chip: one factor each, "
                   "chosen on the calibration data with one simulated chip instance (tens of hardware-mode runs; "
                   "helps nets that amplify device noise).")
@click.option("--plan-only", is_flag=True,
              help="Plan without reading the weights (as `anac plan`): tiles, chips, placement, links, estimates.")
@click.option("--replicate", default=None, metavar="auto|LAYER=K,...",
              help="Copies of layers' weights on spare tiles, sharing their products: auto (CP-SAT: the slowest "
                   "pipeline stage as fast as the tile budget allows) or K copies of named layers.")
@click.option("--average", default=None, metavar="auto|LAYER=K,...",
              help="Averaged copies on spare tiles: each of a layer's K copies computes every product and the "
                   "output is their mean (device noise / sqrt(K), same throughput, K x the layer's energy): auto "
                   "(the most noise-sensitive layers, greedily, within the tile budget) or K copies of named "
                   "layers.")
@click.option("--objective", type=click.Choice(["accuracy", "throughput", "balanced"]), default=None,
              help="What spare tiles are for, in one choice of encodings and copies under the budget: accuracy "
                   "(default: the best encodings, copies from what is left), throughput (the fastest pipeline, "
                   "then the best encodings; implies --replicate auto) or balanced.")
@_json_option
@_command
def compile_cmd(model: str, output: str | None, hardware: str | None, input_shape: tuple[str, ...],
                batch: int | None, encoding: str | None, split_strategy: str | None, prune: str | None,
                chips: int | None, tiles: int | None, pcm_per_weight: float | None, time_limit: float | None,
                max_chips: int | None, dump_dir: str | None, scale: str | None, clip_sigma: float | None,
                calibration_data: str | None, tune_ranges: bool, plan_only: bool, replicate: str | None,
                average: str | None, objective: str | None, as_json: bool) -> None:
    """Compile MODEL (.onnx) into a program directory."""
    from anac.api import compile_to, load_inputs, summary
    from anac.core.estimates import performance

    options = {"encoding": encoding, "strategy": split_strategy, "scale": scale, "clip_sigma": clip_sigma,
               "prune": prune, "chips": chips, "tiles": tiles, "pcm_per_weight": pcm_per_weight,
               "time_limit_s": time_limit, "replicate": replicate, "average": average, "objective": objective}
    if plan_only:
        if calibration_data:
            raise click.UsageError("--calibration-data calibrates the weights' I/O ranges; --plan-only reads no "
                                   "weights and takes no data")
        if tune_ranges:
            raise click.UsageError("--tune-ranges tunes the I/O ranges on simulated devices; --plan-only reads no "
                                   "weights")
        _plan(model, output, hardware, input_shape, batch, options, max_chips, dump_dir, as_json)
        return
    spec = _budgeted_spec(hardware, chips, max_chips)
    calib = load_inputs(calibration_data) if calibration_data else None
    prog, out = compile_to(model, output, hardware=spec, input_shapes=_parse_shapes(input_shape), batch=batch,
                           options=options, dump_dir=dump_dir, calibration_data=calib, tune_ranges=tune_ranges)
    perf = performance(prog)
    s = {**summary(prog), **{k: perf[k] for k in ("throughput_per_s", "latency_s", "bottleneck")},
         "replication": prog.replication, "averaging": prog.averaging}
    p, sched = prog.placement_info or {}, prog.schedule or {}
    solved = {"placement": {k: p[k] for k in ("method", "status", "link_bytes", "bound_bytes", "gap") if k in p},
              "schedule": {k: sched[k] for k in ("status", "latency_ns", "bound_ns", "gap") if k in sched}}
    if as_json:
        _json_out({**s, **solved, "output": str(out)})
        return
    click.echo(f"wrote {out}")
    click.echo(f"  {s['analog_nodes']} analog nodes ({s['fused_nodes']} nodes fused into them), {s['weights']:,} "
               f"weights in {s['slices']} slices on "
               f"{s['tiles']} tiles of {s['chips']} chip(s); {s['pcm_devices']:,} PCM devices "
               f"({s['pcm_per_weight']} per weight); {s['host_stages']} host stage(s)")
    if perf["throughput_per_s"]:
        click.echo(f"  estimate: {perf['throughput_per_s']:,.0f} inferences/s pipelined, latency "
                   f"{(perf['latency_s'] or 0) * 1e6:,.1f} us, bound by {perf['bottleneck']}")
    if prog.replication:
        r = prog.replication
        click.echo(f"  copies ({r['status']}): " + (", ".join(f"{n} x{k}" for n, k in r["copies"].items())
                                                    or "none") + f"; {r['tiles']} of {r['budget_tiles']} tiles")
    if prog.averaging:
        a = prog.averaging
        err = a.get("estimated_error")
        click.echo(f"  averaged copies ({a['mode']}): " + (", ".join(f"{n} x{k}" for n, k in a["copies"].items())
                                                          or "none") + f"; {a['tiles']} of {a['budget_tiles']} tiles"
                   + (f"; estimated error {err['without']:.4f} -> {err['with']:.4f}" if err else ""))
    hw_ = s["host_weights"]
    if hw_["weights"]:
        click.echo(f"  {hw_['weights']:,} weights stay on the host ({hw_['share']:.1%}), largest: "
                   + "; ".join(f"{n['node']} ({n['op_type']}, {n['weights']:,}): {n['reason']}"
                               for n in hw_["nodes"][:3]))
    if s["zero_block_weights"]:
        click.echo(f"  grouped convs packed block-diagonally: {s['zero_block_weights']:,} zero-block cells "
                   f"between the groups ({s['zero_block_weights'] / (s['weights'] + s['zero_block_weights']):.1%} "
                   f"of the weight cells on crossbars)")
    if "link_bytes" in p:
        gap = f", gap {p['gap']:.1%} to a bound of {p['bound_bytes']:,}" if "gap" in p else ""
        click.echo(f"  placement: {p['status']}; {p['link_bytes']:,} bytes on links per inference{gap}")
    if "latency_ns" in sched:
        click.echo(f"  schedule: {sched['status']}; latency {sched['latency_ns'] / 1e3:,.1f} us, "
                   f"gap {sched.get('gap', 0.0):.1%} to a bound of {sched.get('bound_ns', 0) / 1e3:,.1f} us")


@main.command("plan")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(), default=None, help="Plan directory (default MODEL.plan.anac).")
@_mapping_options
@_json_option
@_command
def plan_cmd(model: str, output: str | None, hardware: str | None, input_shape: tuple[str, ...], batch: int | None,
             encoding: str | None, split_strategy: str | None, prune: str | None, chips: int | None,
             tiles: int | None, pcm_per_weight: float | None, time_limit: float | None, max_chips: int | None,
             dump_dir: str | None, as_json: bool) -> None:
    """Plan MODEL (.onnx) from its graph and shapes, reading no weights: what compile would place, and where.

    Writes a plan directory (no weights.npz) that `anac inspect` reads; it cannot be simulated or verified.
    """
    _plan(model, output, hardware, input_shape, batch,
          {"encoding": encoding, "strategy": split_strategy, "prune": prune, "chips": chips, "tiles": tiles,
           "pcm_per_weight": pcm_per_weight, "time_limit_s": time_limit}, max_chips, dump_dir, as_json)


def _plan(model: str, output: str | None, hardware: str | None, input_shape: tuple[str, ...], batch: int | None,
          options: dict[str, Any], max_chips: int | None, dump_dir: str | None, as_json: bool) -> None:
    from anac.plan import plan_report, plan_to

    spec = _budgeted_spec(hardware, options.get("chips"), max_chips)
    prog, out = plan_to(model, output, hardware=spec, input_shapes=_parse_shapes(input_shape), batch=batch,
                        options=options, dump_dir=dump_dir)
    rep = plan_report(prog, json.loads((out / "report.json").read_text()))  # as written, not made again
    if as_json:
        _json_out({**rep, "output": str(out)})
        return
    sched, energy, links, place = rep["schedule"], rep["energy"] or {}, rep["link_bytes"], rep["placement"]
    shapes = ", ".join(f"{k} {v}" for k, v in rep["inputs"].items())
    click.echo(f"wrote {out}: a plan, made without reading the weights (`anac inspect {out}` shows it)")
    click.echo(f"  inputs: {shapes}")
    click.echo(f"  {rep['analog_nodes']} analog nodes, {rep['weights']:,} weights in {rep['slices']:,} slices on "
               f"{rep['tiles']:,} tiles of {rep['chips']:,} chip(s) ({spec.tiles_per_chip} tiles each); "
               f"{rep['pcm_devices']:,} PCM devices ({rep['pcm_per_weight']} per weight); "
               f"{rep['host_stages']} host stage(s)")
    for enc, e in rep["encodings"].items():
        click.echo(f"  {enc}: {e['layers']} layer(s), {e['weights']:,} weights, {e['tiles']:,} tiles")
    click.echo(f"  encodings: {rep['plan']['encodings']}")
    click.echo(f"  rows: {rep['plan']['rows']}")
    click.echo(f"  placement: {place.get('method')}, {place.get('status')}; {place.get('tiles'):,} tiles "
               f"(lower bound {place.get('lower_bound_tiles'):,})")
    click.echo(f"  bytes on links per inference: {links['chip_to_chip']:,} chip to chip, {links['host_links']:,} "
               f"between chips and the host, {links['total']:,} in all")
    click.echo(f"  latency {sched.get('latency_ns', 0) / 1e3:,.1f} us ({sched.get('status')}), throughput "
               f"{sched.get('throughput_per_s')} inferences/s (bottleneck: {sched.get('bottleneck')})")
    if energy:
        click.echo(f"  energy {energy['total_pj'] / 1e6:,.3f} uJ per inference ({energy['host_share']:.1%} on the "
                   f"host); {energy['chip_tops_per_w']} TOPS/W on chip, {energy['system_tops_per_w']} system")


@main.command("check")
@click.argument("model", type=click.Path(dir_okay=False))
@_shape_option
@_json_option
@_command
def check_cmd(model: str, input_shape: tuple[str, ...], as_json: bool) -> None:
    """Say which nodes go to crossbars, which to the host, and which cannot be compiled."""
    from anac.api import check

    rep = check(model, _parse_shapes(input_shape))
    if as_json:
        _json_out(rep)
    else:
        click.echo(f"crossbar (analog) nodes: {len(rep['analog'])}")
        for a in rep["analog"]:
            click.echo(f"  {a['node']} ({a['op_type']}): {a['matrices']} x {a['shape'][0]}x{a['shape'][1]}, "
                       f"{a['weights']:,} weights")
        if rep["fused"]:
            click.echo(f"fused into crossbar outputs (activations, folded BatchNormalization): {len(rep['fused'])}")
            for f in rep["fused"]:
                click.echo(f"  {f['node']} ({f['op_type']}) into {f['into']}")
        click.echo(f"host nodes: {len(rep['host'])}")
        for h in rep["host"]:
            click.echo(f"  {h['node']} ({h['op_type']}): {h['reason']}")
        if rep["unsupported"]:
            click.echo(f"cannot be compiled: {len(rep['unsupported'])}")
            for u in rep["unsupported"]:
                click.echo(f"  {u['node']} ({u['op_type']}): {u['reason']}")
    if rep["unsupported"]:
        sys.exit(1)


@main.command("inspect")
@click.argument("program", type=click.Path(file_okay=False))
@click.option("--html", "html_out", type=click.Path(dir_okay=False), default=None,
              help="Write a self-contained HTML report (chip maps, links, timeline, summary).")
@click.option("--svg", "svg_dir", type=click.Path(file_okay=False), default=None, help="Write the chip maps as SVG.")
@click.option("--verify-json", type=click.Path(dir_okay=False, exists=True), default=None,
              help="Output of `anac verify --mode hardware --json` to chart in the HTML report.")
@click.option("--tiles", "show_tiles", is_flag=True,
              help="Also list each chip's layers and its per-tile slice table (long for big models).")
@_json_option
@_command
def inspect_cmd(program: str, html_out: str | None, svg_dir: str | None, verify_json: str | None,
                show_tiles: bool, as_json: bool) -> None:
    """Summarise the placement of a compiled PROGRAM directory: per chip its tiles, layers and utilisation."""
    from pathlib import Path

    from anac.api import load_program
    from anac.core.errors import ArtifactError, InputError
    from anac.htmlreport import accuracy_svg, write_html, write_svgs
    from anac.views import placement_table, render_text

    prog = load_program(program, plan_ok=True)  # a plan (anac plan) has no weights, and needs none here
    verify = None
    if verify_json:
        try:
            with open(verify_json) as f:
                verify = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read verify results from {verify_json}: {e}") from None
        try:
            if not isinstance(verify, dict):
                raise TypeError(f"it holds a JSON {type(verify).__name__}, not an object")
            accuracy_svg(verify)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
            raise InputError(f"{verify_json} is not the output of `anac verify --mode hardware --json`: "
                             f"{type(e).__name__}: {e}") from None
    try:
        if html_out:
            log.info("wrote %s", write_html(prog, html_out, verify, source=Path(program).name))
        if svg_dir:
            log.info("wrote %d chip map(s) to %s", len(write_svgs(prog, svg_dir)), svg_dir)
    except OSError as e:
        raise ArtifactError(f"cannot write the report: {e}") from None
    if as_json:
        _json_out({**placement_table(prog), **({"plan": prog.plan} if prog.plan is not None else {})})
        return
    if prog.plan is not None:
        click.echo(f"a plan (anac plan): weights {prog.plan['weights']}; encodings: {prog.plan['encodings']}")
    click.echo(render_text(prog, tiles=show_tiles))


@main.command("verify")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--program", type=click.Path(file_okay=False), default=None, help="A compiled program to verify.")
@click.option("--inputs", type=click.Path(dir_okay=False, exists=True), default=None,
              help=".npz of inputs keyed by input name.")
@click.option("--labels", "labels", default=None, metavar="FILE.npz[:KEY]",
              help="Accuracy labels (KEY defaults to labels; FILE may be the inputs file).")
@click.option("--batch", type=click.IntRange(min=1, max=MAX_BATCH), default=None,
              help="Batch of seeded random inputs (binds the symbolic leading dim; default 1).")
@click.option("--seed", type=click.IntRange(min=0, max=MAX_SEED), default=0, show_default=True,
              help="Seed of the random inputs and of the first programmed chip instance.")
@click.option("--mode", type=click.Choice(["ideal", "hardware"]), default="ideal", show_default=True,
              help="ideal: float weights, no noise; hardware: the device model of the hardware's family and its I/O.")
@click.option("--t", "times", default="1s", show_default=True, metavar="T1,T2,...",
              help="Hardware mode: times after programming (s, m, h, d, w, y), e.g. 1s,1h,1d,1y.")
@click.option("--repeats", type=click.IntRange(min=1, max=10_000), default=1, show_default=True,
              help="Hardware mode: chip instances programmed (seeds seed, seed+1, ...).")
@click.option("--drift-compensation/--no-drift-compensation", default=True, show_default=True,
              help="Hardware mode: global drift compensation per tile.")
@_calibration_option
@click.option("--tolerance", type=click.FloatRange(min=0), default=None, callback=_finite,
              help="Largest relative error that passes (default 1e-5 ideal; 0.25 mean in hardware mode).")
@click.option("--allow-nonfinite-inputs", "allow_nonfinite", is_flag=True,
              help="Accept --inputs holding NaN or Inf (refused by default: they prove nothing).")
@_hw_option
@_shape_option
@_json_option
@_command
def verify_cmd(model: str, program: str | None, inputs: str | None, labels: str | None, batch: int | None,
               seed: int, mode: str, times: str, repeats: int, drift_compensation: bool, calibration_data: str | None,
               tolerance: float | None, allow_nonfinite: bool, hardware: str | None, input_shape: tuple[str, ...],
               as_json: bool) -> None:
    """Simulate the compiled MODEL and compare it with onnxruntime on the original."""
    from anac.api import load_inputs, load_labels, parse_times, verify

    if inputs is not None and batch is not None:
        raise click.UsageError("--batch makes random inputs; it cannot be used with --inputs")
    when = parse_times(times)  # before any work: a bad time is a quick error
    rep = verify(model, program=program, inputs=load_inputs(inputs) if inputs else None, batch=batch, seed=seed,
                 mode=mode, tolerance=tolerance, input_shapes=_parse_shapes(input_shape), hardware=hardware,
                 times=when, repeats=repeats, drift_compensation=drift_compensation,
                 calibration_data=load_inputs(calibration_data) if calibration_data else None,
                 labels=load_labels(labels) if labels else None, allow_nonfinite=allow_nonfinite)
    if as_json:
        _json_out(rep.to_json())
    elif mode == "hardware":
        _print_hardware(rep)
    else:
        click.echo(f"{'output':<24} {'max_abs_err':>12} {'rel_err':>12} {'cosine':>10} {'argmax':>8}")
        for name, o in rep.outputs.items():
            am = "-" if o.argmax_agreement is None else f"{o.argmax_agreement:.4f}"
            click.echo(f"{name:<24} {o.max_abs_err:>12.4g} {o.rel_err:>12.4g} {o.cosine:>10.6f} {am:>8}")
        for p in rep.problems:
            click.echo(f"problem: {p}")
        click.echo(f"{'PASSED' if rep.passed else 'FAILED'} ({rep.mode} mode, tolerance {rep.tolerance:g})")
    if not rep.passed:
        sys.exit(1)


def _print_hardware(rep: Any) -> None:
    comp = "with" if rep.drift_compensation else "without"
    click.echo(f"hardware mode: {rep.repeats} programmed instance(s) from seed {rep.seed}, {comp} drift compensation")
    if rep.reference_accuracy is not None:
        click.echo(f"top-1 accuracy of onnxruntime on '{rep.accuracy_output}': {rep.reference_accuracy:.4f}")
    click.echo(f"{'time':<8} {'output':<20} {'rel_err':>17} {'cosine':>10} {'argmax':>8} {'accuracy':>17}")
    for t in rep.times:
        for name, o in t.outputs.items():
            am = "-" if o["argmax_agreement"] is None else f"{o['argmax_agreement'].mean:.4f}"
            acc = "-" if t.accuracy is None or name != rep.accuracy_output else \
                f"{t.accuracy.mean:.4f} +- {t.accuracy.std:.4f}"
            rel = f"{o['rel_err'].mean:.4f} +- {o['rel_err'].std:.4f}"
            click.echo(f"{t.label:<8} {name:<20} {rel:>17} {o['cosine'].mean:>10.6f} {am:>8} {acc:>17}")
    for p in rep.problems:
        click.echo(f"problem: {p}")
    verdict = "PASSED" if rep.passed else "FAILED"
    click.echo(f"{verdict} (hardware mode, mean relative error tolerance {rep.tolerance:g})")


@main.command("passes")
@_json_option
@_command
def passes_cmd(as_json: bool) -> None:
    """List the pass pipeline with what each pass requires and produces."""
    import dataclasses

    from anac.driver import PIPELINE

    rows = [{"name": p.name, "requires": list(p.requires), "produces": list(p.produces),
             "options": {f.name: getattr(p, f.name) for f in dataclasses.fields(p)},  # type: ignore[arg-type]
             "doc": (type(p).__doc__ or "").strip().splitlines()[0]} for p in PIPELINE]
    if as_json:
        _json_out({"pipeline": rows})
        return
    for i, r in enumerate(rows, 1):
        opts = ", ".join(f"{k}={v!r}" for k, v in r["options"].items()) or "-"
        click.echo(f"{i}. {r['name']}: {r['doc']}\n     requires: {', '.join(r['requires'])}; "
                   f"produces: {', '.join(r['produces'])}; options: {opts}")


@main.command("presets")
@_json_option
@_command
def presets_cmd(as_json: bool) -> None:
    """List the hardware presets: device family, tiles, array size, devices per weight, bits and sources."""
    from anac.core.hardware import PRESETS

    rows = []
    for hw in PRESETS.values():
        enc = hw.encoding(hw.default_encoding)
        rows.append({"name": hw.name, "family": hw.device.family, "tiles_per_chip": hw.tiles_per_chip,
                     "array": [hw.tile_rows, hw.tile_cols], "devices_per_cell": hw.devices_per_cell,
                     "encoding": enc.name, "devices_per_weight": enc.devices_per_weight,
                     "bits_per_device": enc.bits_per_device, "input_bits": hw.input_bits,
                     "output_bits": hw.output_bits, "sources": dict(hw.device.sources)})
    if as_json:
        _json_out({"presets": rows})
        return
    for r in rows:
        bits = f"{r['bits_per_device']}-bit" if r["bits_per_device"] else "analog"
        click.echo(f"{r['name']}: {r['family']}, {r['tiles_per_chip']} tiles of {r['array'][0]} x {r['array'][1]} "
                   f"cells ({r['devices_per_cell']} devices each), {r['encoding']}: {r['devices_per_weight']} "
                   f"device(s) per weight, {bits} devices, {r['input_bits']}-bit in / "
                   f"{r['output_bits']}-bit out")
        for k, v in r["sources"].items():
            click.echo(f"    {k}: {v}")


# ---- anac sweep (compiler/sweep.py) ----
@main.command("sweep")
@click.argument("grid", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(file_okay=False), default=None,
              help="Directory for results.csv, report.html and the finished cells (default GRID.sweep); "
                   "a sweep started again in it skips the cells already done.")
@click.option("--workers", type=click.IntRange(min=1, max=4096), default=None,
              help="Local worker processes (default: the CPU count; 1 runs in this process). "
                   "With --ray: the CPUs of the local Ray instance it starts.")
@click.option("--ray", "use_ray", is_flag=True, help="Run on Ray (pip install 'anac[ray]'): a new local instance, "
                                                     "or the cluster of --address.")
@click.option("--address", default=None, metavar="ray://HOST:PORT",
              help="A running Ray cluster (implies --ray).")
@_command
def sweep_cmd(grid: str, output: str | None, workers: int | None, use_ray: bool, address: str | None) -> None:
    """Accuracy of every model x hardware x encoding x chip instance x time of the GRID file (TOML)."""
    from pathlib import Path

    from anac.sweep import run_sweep

    out = output or str(Path(grid).with_suffix(".sweep"))
    res = run_sweep(grid, out, workers=workers, use_ray=use_ray, address=address)
    click.echo(f"{res.cells} cells ({res.skipped} already done), {len(res.rows)} rows in {res.elapsed_s:.1f} s")
    click.echo(f"wrote {res.results}")
    click.echo(f"wrote {res.report}")
# ---- end anac sweep ----


if __name__ == "__main__":  # pragma: no cover
    main()
