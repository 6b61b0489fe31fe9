"""Importable test helpers: ONNX graph builders and program inspection.

Test files import these (``from helpers import make_model``); the fixtures
live in conftest.py.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
IR_VERSION = 9


def tensor(name: str, shape: Sequence[int | str | None] | None, elem_type: int = FLOAT) -> onnx.ValueInfoProto:
    """A tensor ValueInfo; str dims are symbolic, None dims unknown, ``shape=None`` leaves the rank unknown."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def const(name: str, value: np.ndarray) -> onnx.TensorProto:
    """An initializer from a numpy array."""
    return numpy_helper.from_array(np.asarray(value), name)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str | None = None,
         domain: str | None = None, **attrs: object) -> onnx.NodeProto:
    """A NodeProto named ``name`` (default: its first output) with keyword attributes."""
    return helper.make_node(op_type, list(inputs), list(outputs), name=name or outputs[0], domain=domain, **attrs)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[onnx.TensorProto] = (),
               opset: int = 17, name: str = "test") -> onnx.ModelProto:
    """A checked ModelProto (IR version 9) with one default-domain opset."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="anac-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, tmp_path: Path, name: str = "model.onnx") -> Path:
    """Write ``model`` under ``tmp_path``; return the file's path."""
    path = Path(tmp_path) / name
    onnx.save(model, str(path))
    return path


def weights(rng: np.random.Generator, *shape: int, scale: float | None = None) -> np.ndarray:
    """Random float32 weights, scaled by 1/sqrt(fan-in) (the first dim) unless ``scale`` is given."""
    s = scale if scale is not None else 1.0 / np.sqrt(shape[0] if shape else 1)
    return (rng.standard_normal(shape) * s).astype(np.float32)


def analog_nodes(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the nodes that run on crossbars."""
    return set(prog.mvms or {})


def host_nodes(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the nodes in host stages."""
    return {n for st in prog.stages or [] if st.kind == "host" for n in st.nodes}


def host_ops(prog) -> Counter:  # type: ignore[no-untyped-def]
    """How many host nodes of each op type."""
    return Counter(prog.graph.node(n).op_type for n in host_nodes(prog))


def fused_activations(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Names of the activation nodes fused into an MVM (run at its tile outputs, in no host stage)."""
    return {m.activation["node"] for m in (prog.mvms or {}).values() if m.activation is not None}


def stage_kinds(prog) -> list[str]:  # type: ignore[no-untyped-def]
    """The kinds of the stages in execution order, e.g. ["analog", "host", "analog"]."""
    return [st.kind for st in prog.stages or []]


def stage_of(prog, node_name: str) -> int:  # type: ignore[no-untyped-def]
    """Index of the stage that runs ``node_name``."""
    for i, st in enumerate(prog.stages or []):
        if node_name in st.nodes:
            return i
    raise KeyError(f"node {node_name} is in no stage")


def assert_verified(report, tol: float = 1e-5) -> None:  # type: ignore[no-untyped-def]
    """Every output of a VerifyReport within ``tol`` relative error, with a readable failure message."""
    errs = {k: (v.rel_err, v.max_abs_err) for k, v in report.outputs.items()}
    assert report.outputs, "the report has no outputs"
    assert report.passed and all(e <= tol for e, _ in errs.values()), f"rel/max-abs errors: {errs}"


def batch_shapes(model: onnx.ModelProto, batch: int) -> dict[str, list[int]]:
    """Input shapes with every non-numeric dim bound to ``batch`` (for compile_model's input_shapes)."""
    inits = {t.name for t in model.graph.initializer}
    return {v.name: [d.dim_value if d.HasField("dim_value") else batch for d in v.type.tensor_type.shape.dim]
            for v in model.graph.input if v.name not in inits}


def check_placement(prog) -> dict[tuple[int, int], list]:  # type: ignore[no-untyped-def]
    """Assert what every placed program must satisfy; return its slices per (chip, tile).

    Every weight of every matrix is in exactly one slice (a coverage count of 1 everywhere); slice ids
    are 0..n-1; a tile holds one encoding; each slice fits its tile's weight grid and no two slices on a
    tile overlap (an occupancy grid with maximum 1); two slices on a tile that share any tile row or any
    tile column have different time slots; tiles lie on their chip and chips are as few as possible; the
    placement summary agrees with the slices; and per encoding the tile count is between
    ceil(devices / devices per tile) and one more than that.
    """
    from collections import defaultdict

    hw = prog.hardware
    cover = {mid: np.zeros(m.shape, np.int32) for mid, m in prog.matrices.items()}
    by_tile: dict[tuple[int, int], list] = defaultdict(list)
    assert [s.id for s in prog.slices] == list(range(len(prog.slices)))
    for s in prog.slices:
        k, n = prog.matrices[s.matrix].shape
        assert 0 <= s.rows[0] < s.rows[1] <= k and 0 <= s.cols[0] < s.cols[1] <= n, s
        cover[s.matrix][s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] += 1
        assert None not in (s.chip, s.tile, s.row_offset, s.col_offset), f"slice {s.id} is not placed"
        assert isinstance(s.slot, int) and s.slot >= 0, s
        by_tile[(s.chip, s.tile)].append(s)
    for mid, c in cover.items():
        assert (c == 1).all(), f"{mid}: weights covered {c.min()}..{c.max()} times"
    tiles_per_encoding: dict[str, int] = defaultdict(int)
    devices_per_encoding: dict[str, int] = defaultdict(int)
    for key, group in by_tile.items():
        (encoding,) = {s.encoding for s in group}
        tiles_per_encoding[encoding] += 1
        rows, cols = hw.weight_grid(encoding)
        grid = np.zeros((rows, cols), np.int32)
        for s in group:
            assert 0 <= s.row_offset and s.row_offset + s.n_rows <= rows, f"slice {s.id} exceeds tile {key} rows"
            assert 0 <= s.col_offset and s.col_offset + s.n_cols <= cols, f"slice {s.id} exceeds tile {key} cols"
            grid[s.row_offset:s.row_offset + s.n_rows, s.col_offset:s.col_offset + s.n_cols] += 1
            devices_per_encoding[encoding] += s.n_rows * s.n_cols * hw.encoding(encoding).devices_per_weight
        assert grid.max() == 1, f"tile {key} has overlapping slices"
        for i, a in enumerate(group):
            for b in group[i + 1:]:
                if shares_tile_lines(a, b):
                    assert a.slot != b.slot, f"slices {a.id} and {b.id} share lines of tile {key} in slot {a.slot}"
    # Tiles sit anywhere on their chip's mesh (the placer walks it in snake order); chips are as few as the
    # tile count allows, and none holds more tiles than it has.
    assert all(0 <= tile < hw.tiles_per_chip and 0 <= chip < prog.chips_used for chip, tile in by_tile)
    assert prog.chips_used == -(-len(by_tile) // hw.tiles_per_chip)
    per_chip = {c: sum(1 for chip, _ in by_tile if chip == c) for c in range(prog.chips_used)}
    assert all(n <= hw.tiles_per_chip for n in per_chip.values())
    for encoding, n in tiles_per_encoding.items():
        bound = -(-devices_per_encoding[encoding] // hw.devices_per_tile)
        assert bound <= n <= bound + 1, f"{encoding}: {n} tiles for a lower bound of {bound}"
    info = prog.placement_info
    assert info["tiles"] == len(by_tile) == len(prog.tiles_used())
    assert info["lower_bound_tiles"] == -(-prog.pcm_devices() // hw.devices_per_tile) <= len(by_tile)
    assert info["time_multiplexed_tiles"] == sum(len({s.slot for s in g}) > 1 for g in by_tile.values())
    return dict(by_tile)


def shares_tile_lines(a, b) -> bool:  # type: ignore[no-untyped-def]
    """Two slices on one tile share an input row or an output column of it."""
    rows = a.row_offset < b.row_offset + b.n_rows and b.row_offset < a.row_offset + a.n_rows
    cols = a.col_offset < b.col_offset + b.n_cols and b.col_offset < a.col_offset + a.n_cols
    return rows or cols


def slice_blocks(prog, node_name: str) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    """The (row, column) blocks of the weight grid that the node's slices lie in.

    Asserts each slice lies inside one block: place may cut split_matrices' grid slices smaller but
    never joins them, so a matrix K rows deep adds ceil(K / grid rows) or more partial sums per column.
    """
    blocks = set()
    for mid in prog.mvms[node_name].matrices:
        for s in (s for s in prog.slices if s.matrix == mid):
            rows, cols = prog.hardware.weight_grid(s.encoding)
            rb, cb = s.rows[0] // rows, s.cols[0] // cols
            assert (s.rows[1] - 1) // rows == rb and (s.cols[1] - 1) // cols == cb, f"slice {s} spans blocks"
            blocks.add((rb, cb))
    return blocks


def matmul_chain(rng: np.random.Generator, dims: Sequence[int], batch: int = 4, relu: bool = False,
                 prefix: str = "l") -> onnx.ModelProto:
    """A chain of MatMuls (constant weights, layers ``<prefix>0``, ``<prefix>1``, ...), ReLU between if asked."""
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        nodes.append(node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"{prefix}{i}"))
        inits.append(const(f"w{i}", weights(rng, k, n)))
        x = f"h{i}"
        if relu and i < len(dims) - 2:
            nodes.append(node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    return make_model(nodes, [tensor("x", [batch, dims[0]])], [tensor(x, [batch, dims[-1]])], inits)


def run_cli(*args: object, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """``anac ARGS`` in process: (exit code, stdout, stderr); an exception other than an exit is re-raised."""
    from anac.cli import main
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_clean_error(code: int, err: str, *needles: str) -> None:
    """Exit 1 with one 'error: ...' line last on stderr, no traceback, and each of ``needles`` in it."""
    assert code == 1, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("error: ")
    for n in needles:
        assert n in err, (n, err)


def small_cnn(rng: np.random.Generator, size: int = 16, batch: int = 1) -> onnx.ModelProto:
    """conv 3x3 (3 -> 8) + ReLU, conv 3x3 (8 -> 16) + ReLU, global average pool, FC 16 -> 10."""
    nodes = [node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             node("Flatten", ["g"], ["f"], name="flat"),
             node("Gemm", ["f", "w3", "b3"], ["y"], name="fc")]
    inits = [const("w1", weights(rng, 8, 3, 3, 3)), const("b1", weights(rng, 8)),
             const("w2", weights(rng, 16, 8, 3, 3)), const("b2", weights(rng, 16)),
             const("w3", weights(rng, 16, 10)), const("b3", weights(rng, 10))]
    return make_model(nodes, [tensor("x", [batch, 3, size, size])], [tensor("y", [batch, 10])], inits)
