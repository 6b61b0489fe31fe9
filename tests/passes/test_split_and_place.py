"""split_matrices and place: every weight in exactly one slice, no tile over capacity."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers import const, make_model, node, tensor, weights

from compiler.driver import compile_model
from compiler.errors import AnacError, CapacityError
from compiler.hardware import IBM_PCM_14NM, load_hardware
from passes.split_matrices import _ranges


def _mlp(rng: np.random.Generator, dims: list[int]):  # type: ignore[no-untyped-def]
    nodes, inits, x = [], [], "x"
    for i, (k, n) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        nodes.append(node("MatMul", [x, f"w{i}"], [f"h{i}"], name=f"fc{i}"))
        inits.append(const(f"w{i}", weights(rng, k, n)))
        x = f"h{i}"
    return make_model(nodes, [tensor("x", [2, dims[0]])], [tensor(x, [2, dims[-1]])], inits)


def _coverage(prog) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    cover = {mid: np.zeros(m.shape, np.int32) for mid, m in prog.matrices.items()}
    for s in prog.slices:
        cover[s.matrix][s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] += 1
    return cover


@pytest.mark.parametrize("dims", [[3, 5], [512, 512], [513, 1025], [1960, 512, 12], [2048, 700, 1500, 7]])
@pytest.mark.parametrize("strategy", ["fill", "even"])
@pytest.mark.parametrize("encoding", ["4-PCM", "2-PCM"])
def test_every_weight_in_exactly_one_slice_and_tiles_within_capacity(
        rng: np.random.Generator, dims: list[int], strategy: str, encoding: str) -> None:
    prog = compile_model(_mlp(rng, dims), options={"strategy": strategy, "encoding": encoding})
    for mid, c in _coverage(prog).items():
        assert (c == 1).all(), f"{mid}: weights covered {c.min()}..{c.max()} times"
    rows, cols = IBM_PCM_14NM.weight_grid(encoding)
    tiles: dict[tuple[int, int], np.ndarray] = {}
    for s in prog.slices:
        assert s.encoding == encoding and s.n_rows <= rows and s.n_cols <= cols
        grid = tiles.setdefault((s.chip, s.tile), np.zeros((rows, cols), np.int32))
        grid[s.row_offset:s.row_offset + s.n_rows, s.col_offset:s.col_offset + s.n_cols] += 1
        # Diagonal packing: slices on one tile share neither rows nor columns.
        assert s.row_offset + s.n_rows <= rows and s.col_offset + s.n_cols <= cols
    for key, grid in tiles.items():
        assert grid.max() == 1, f"tile {key} has overlapping slices"
        assert (grid.sum(axis=1) > 0).sum() == sum(s.n_rows for s in prog.slices if (s.chip, s.tile) == key)
    # The number of slices is the product of row and column blocks per matrix.
    expected = sum(-(-m.shape[0] // rows) * -(-m.shape[1] // cols) for m in prog.matrices.values())
    assert len(prog.slices) == expected
    assert prog.pcm_devices() == sum(m.weights.size for m in prog.matrices.values()) * \
        IBM_PCM_14NM.encoding(encoding).devices_per_weight


@pytest.mark.parametrize("size,limit", [(1, 512), (512, 512), (513, 512), (1960, 512), (2049, 1024)])
def test_ranges_partition_the_axis(size: int, limit: int) -> None:
    for strategy in ("fill", "even"):
        r = _ranges(size, limit, strategy)
        assert r[0][0] == 0 and r[-1][1] == size and len(r) == -(-size // limit)
        assert all(a1 == b0 for (_, a1), (b0, _) in zip(r[:-1], r[1:], strict=True))
        assert all(0 < b - a <= limit for a, b in r)
    if size > limit:
        even = [b - a for a, b in _ranges(size, limit, "even")]
        assert max(even) - min(even) <= 1


def test_small_slices_share_a_tile(rng: np.random.Generator) -> None:
    # Four 100 x 100 layers pack diagonally into one 512 x 512 tile.
    prog = compile_model(_mlp(rng, [100] * 5))
    assert len(prog.tiles_used()) == 1
    offsets = sorted((s.row_offset, s.col_offset) for s in prog.slices)
    assert offsets == [(0, 0), (100, 100), (200, 200), (300, 300)]


def test_chips_are_added_as_needed_and_budget_is_enforced(rng: np.random.Generator) -> None:
    small = replace(IBM_PCM_14NM, tiles_per_chip=3)
    prog = compile_model(_mlp(rng, [1024, 1024, 512]), hardware=small)  # 4 + 2 full tiles
    assert len(prog.tiles_used()) == 6 and prog.chips_used == 2
    assert sorted({s.chip for s in prog.slices}) == [0, 1]
    with pytest.raises(CapacityError, match=r"needs 6 tiles \(2 chips of 3\).*budget of 1 chips gives 3 tiles"):
        compile_model(_mlp(rng, [1024, 1024, 512]), hardware=replace(small, max_chips=1))


def test_grouped_conv_gives_one_matrix_per_group(rng: np.random.Generator) -> None:
    w = weights(rng, 8, 2, 3, 3)  # 8 output channels, 4 groups of 2 input channels
    m = make_model([node("Conv", ["x", "w"], ["y"], name="gconv", group=4, pads=[1, 1, 1, 1])],
                   [tensor("x", [1, 8, 5, 5])], [tensor("y", [1, 8, 5, 5])], [const("w", w)])
    prog = compile_model(m)
    assert sorted(prog.matrices) == [f"gconv#g{g}" for g in range(4)]
    assert all(mat.shape == (2 * 9, 2) for mat in prog.matrices.values())
    np.testing.assert_array_equal(prog.matrices["gconv#g1"].weights, w[2:4].reshape(2, -1).T)


def test_unknown_strategy_and_encoding_are_user_errors(rng: np.random.Generator) -> None:
    with pytest.raises(AnacError, match="unknown split strategy 'diagonal'"):
        compile_model(_mlp(rng, [4, 4]), options={"strategy": "diagonal"})
    with pytest.raises(AnacError, match="unknown encoding '3-PCM'.*4-PCM, 2-PCM"):
        compile_model(_mlp(rng, [4, 4]), options={"encoding": "3-PCM"})


def test_mythic_preset_places_one_cell_per_weight(rng: np.random.Generator) -> None:
    prog = compile_model(_mlp(rng, [1024, 2048]), hardware=load_hardware(preset="mythic-m1076"))
    assert len(prog.slices) == 2 and len(prog.tiles_used()) == 2
    assert prog.pcm_devices() == 1024 * 2048
