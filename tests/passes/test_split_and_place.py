"""split_matrices and place: every weight in exactly one slice, no tile over capacity, time slots."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from anac.core.errors import AnacError, CapacityError
from anac.core.hardware import IBM_PCM_14NM, load_hardware
from anac.driver import PIPELINE, compile_model
from anac.passes.split_matrices import _ranges
from helpers import check_placement, const, make_model, matmul_chain, node, shares_tile_lines, tensor, weights

# The pipeline up to and including split_matrices: its slices, before place packs (and cuts) them.
SPLIT_ONLY = PIPELINE[:[p.name for p in PIPELINE].index("split_matrices") + 1]
DIMS = [[3, 5], [512, 512], [513, 1025], [1960, 512, 12], [2048, 700, 1500, 7]]


def _mlp(rng: np.random.Generator, dims: list[int]):  # type: ignore[no-untyped-def]
    return matmul_chain(rng, dims, batch=2, prefix="fc")


def _coverage(prog) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    cover = {mid: np.zeros(m.shape, np.int32) for mid, m in prog.matrices.items()}
    for s in prog.slices:
        cover[s.matrix][s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] += 1
    return cover


def _axis_ranges(slices, axis: str) -> list[tuple[int, int]]:  # type: ignore[no-untyped-def]
    return sorted({getattr(s, axis) for s in slices})


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("strategy", ["fill", "even"])
@pytest.mark.parametrize("encoding", ["4-PCM", "2-PCM"])
def test_split_matrices_cuts_each_matrix_on_the_weight_grid(
        rng: np.random.Generator, dims: list[int], strategy: str, encoding: str) -> None:
    prog = compile_model(_mlp(rng, dims), options={"strategy": strategy, "encoding": encoding}, pipeline=SPLIT_ONLY)
    assert "placement" not in prog.produced and prog.chips_used is None
    assert all(s.chip is None and s.row_offset is None for s in prog.slices)
    for mid, c in _coverage(prog).items():
        assert (c == 1).all(), f"{mid}: weights covered {c.min()}..{c.max()} times"
    rows, cols = IBM_PCM_14NM.weight_grid(encoding)
    assert [s.id for s in prog.slices] == list(range(len(prog.slices)))
    for mid, m in prog.matrices.items():
        mine = [s for s in prog.slices if s.matrix == mid]
        assert all(s.encoding == encoding for s in mine)
        for axis, size, limit in (("rows", m.shape[0], rows), ("cols", m.shape[1], cols)):
            ranges = _axis_ranges(mine, axis)
            # ceil(size / limit) ranges that partition the axis, none over the grid
            assert len(ranges) == -(-size // limit)
            assert ranges[0][0] == 0 and ranges[-1][1] == size
            assert all(a1 == b0 for (_, a1), (b0, _) in zip(ranges[:-1], ranges[1:], strict=True))
            lengths = [b - a for a, b in ranges]
            assert all(0 < n <= limit for n in lengths)
            if strategy == "fill":
                assert all(n == limit for n in lengths[:-1])
            else:
                assert max(lengths) - min(lengths) <= 1
        # the grid: one slice per (row range, column range)
        assert sorted((s.rows, s.cols) for s in mine) == \
            [(r, c) for r in _axis_ranges(mine, "rows") for c in _axis_ranges(mine, "cols")]
    # The number of slices is the product of row and column blocks per matrix.
    expected = sum(-(-m.shape[0] // rows) * -(-m.shape[1] // cols) for m in prog.matrices.values())
    assert len(prog.slices) == expected
    assert prog.pcm_devices() == sum(m.weights.size for m in prog.matrices.values()) * \
        IBM_PCM_14NM.encoding(encoding).devices_per_weight


@pytest.mark.parametrize("dims", DIMS)
@pytest.mark.parametrize("strategy", ["fill", "even"])
@pytest.mark.parametrize("encoding", ["4-PCM", "2-PCM"])
def test_place_packs_the_split_slices_onto_tiles(
        rng: np.random.Generator, dims: list[int], strategy: str, encoding: str) -> None:
    model = _mlp(rng, dims)
    options = {"strategy": strategy, "encoding": encoding}
    split = compile_model(model, options=options, pipeline=SPLIT_ONLY)
    prog = compile_model(model, options=options)
    # coverage, occupancy, grid bounds, slot rule, tiles within [lower bound, lower bound + 1]
    tiles = check_placement(prog)
    rows, cols = IBM_PCM_14NM.weight_grid(encoding)
    assert all(s.encoding == encoding for s in prog.slices)
    # Place cuts split_matrices' slices but never joins them: each final slice lies in exactly one.
    for s in prog.slices:
        parents = [t for t in split.slices if t.matrix == s.matrix and t.rows[0] <= s.rows[0] and
                   s.rows[1] <= t.rows[1] and t.cols[0] <= s.cols[0] and s.cols[1] <= t.cols[1]]
        assert len(parents) == 1, s
    assert len(prog.slices) >= len(split.slices)
    # A full-grid slice keeps a tile to itself, whole.
    for t in split.slices:
        if (t.n_rows, t.n_cols) == (rows, cols):
            (s,) = [s for s in prog.slices if (s.matrix, s.rows, s.cols) == (t.matrix, t.rows, t.cols)]
            assert tiles[(s.chip, s.tile)] == [s] and (s.row_offset, s.col_offset, s.slot) == (0, 0, 0)
    assert prog.pcm_devices() == split.pcm_devices()
    assert prog.placement_info["lower_bound_tiles"] == \
        -(-split.pcm_devices() // IBM_PCM_14NM.devices_per_tile)


@pytest.mark.parametrize("encoding,tiles", [("4-PCM", 6), ("2-PCM", 3)])
def test_kws_shaped_mlp_takes_the_lower_bound_of_tiles(rng: np.random.Generator, encoding: str, tiles: int) -> None:
    # 1960-512-512-512-12: 1,533,952 weights. 4-PCM: 4 devices each, ceil(6,135,808 / 1,048,576) = 6.
    # Five full 512 x 512 slices (fc0 rows 0:1536, fc1, fc2) take a tile each; fc0's 424 x 512 rest and the
    # 512 x 12 head (223,232 weights <= 262,144) share the sixth. 2-PCM: 2 devices each,
    # ceil(3,067,904 / 1,048,576) = 3: fc0's rows 0:1024 fill a 1024 x 512 tile, fc0's 936 x 512 rest,
    # fc1, fc2 and the head (1,009,664 weights <= 2 x 524,288) fill two more.
    prog = compile_model(_mlp(rng, [1960, 512, 512, 512, 12]), options={"encoding": encoding})
    check_placement(prog)
    assert prog.pcm_devices() == 1533952 * IBM_PCM_14NM.encoding(encoding).devices_per_weight
    assert len(prog.tiles_used()) == prog.placement_info["lower_bound_tiles"] == tiles
    assert prog.chips_used == 1


def test_a_strip_thinner_than_min_cut_is_left_empty(rng: np.random.Generator) -> None:
    # 511 x 513 is 262,143 weights, under one 512 x 512 tile, but the 511 x 1 column left over after the
    # 511 x 512 slice only fits the tile's free 1 x 512 row cut into 1-row pieces, under min_cut (16):
    # it takes a second tile, one over the lower bound.
    prog = compile_model(_mlp(rng, [511, 513]))
    tiles = check_placement(prog)
    assert prog.placement_info["lower_bound_tiles"] == 1 and len(tiles) == 2
    assert sorted((s.rows, s.cols, s.row_offset, s.col_offset) for s in prog.slices) == [
        ((0, 511), (0, 512), 0, 0), ((0, 511), (512, 513), 0, 0)]


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


def _assert_earliest_slots(slices) -> None:  # type: ignore[no-untyped-def]
    """Each slice runs in the earliest slot its tile allows: every earlier slot holds a slice it conflicts with."""
    for s in slices:
        for k in range(s.slot):
            assert any(t.slot == k and shares_tile_lines(s, t) for t in slices if t is not s), (s, k)


def test_small_layers_pack_into_one_tile_with_time_slots(rng: np.random.Generator) -> None:
    # Four 100 x 100 layers (x -> fc0 -> ... -> fc3) and a 512 x 12 head on another input: 46,144 weights, one tile.
    nodes = [node("MatMul", [f"h{i - 1}" if i else "x", f"w{i}"], [f"h{i}"], name=f"fc{i}") for i in range(4)]
    nodes.append(node("MatMul", ["z", "wh"], ["y"], name="head"))
    inits = [const(f"w{i}", weights(rng, 100, 100)) for i in range(4)] + [const("wh", weights(rng, 512, 12))]
    model = make_model(nodes, [tensor("x", [2, 100]), tensor("z", [2, 512])],
                       [tensor("h3", [2, 100]), tensor("y", [2, 12])], inits)
    prog = compile_model(model)
    tiles = check_placement(prog)
    assert list(tiles) == [(0, 0)] and prog.placement_info["lower_bound_tiles"] == 1
    # Tallest first: the head takes tile columns 0:12 over all 512 rows; the 100 x 100 layers go in the
    # free rectangle beside it, each in the smallest free rectangle that holds it whole (under the last).
    placed = {s.matrix: (s.rows, s.cols, s.row_offset, s.col_offset, s.slot) for s in prog.slices}
    assert placed == {
        "head": ((0, 512), (0, 12), 0, 0, 0),
        "fc0": ((0, 100), (0, 100), 0, 12, 1),
        "fc1": ((0, 100), (0, 100), 100, 12, 2),
        "fc2": ((0, 100), (0, 100), 200, 12, 3),
        "fc3": ((0, 100), (0, 100), 300, 12, 4)}
    # fc0 and the head share tile rows 0:100 (and run in the same analog stage): different slots.
    head, fc0 = (next(s for s in prog.slices if s.matrix == m) for m in ("head", "fc0"))
    assert shares_tile_lines(head, fc0) and head.slot != fc0.slot
    assert prog.stages[0].nodes == ["fc0", "head"]
    _assert_earliest_slots(prog.slices)
    assert prog.placement_info["time_multiplexed_tiles"] == 1


def test_slices_that_share_no_tile_line_share_a_slot(rng: np.random.Generator) -> None:
    # 300 x 300, 300 x 200, 200 x 200: fc0 at (0, 0); fc1 beside it at (0, 300), sharing tile rows 0:300;
    # fc2 under fc1 at (300, 300), sharing tile columns 300:500 with fc1 but no row or column with fc0.
    prog = compile_model(_mlp(rng, [300, 300, 200, 200]))
    tiles = check_placement(prog)
    assert len(tiles) == 1
    placed = {s.matrix: (s.row_offset, s.col_offset, s.slot) for s in prog.slices}
    assert placed == {"fc0": (0, 0, 0), "fc1": (0, 300, 1), "fc2": (300, 300, 0)}
    fc0, fc1, fc2 = prog.slices
    assert shares_tile_lines(fc0, fc1) and shares_tile_lines(fc1, fc2) and not shares_tile_lines(fc0, fc2)
    _assert_earliest_slots(prog.slices)


def test_a_tile_holds_one_encoding(rng: np.random.Generator) -> None:
    # Two 100 x 100 layers would share a tile, but fc0 is 2-PCM and fc1 4-PCM: a tile each.
    prog = compile_model(_mlp(rng, [100, 100, 100]), options={"encoding": {"fc0": "2-PCM"}})
    tiles = check_placement(prog)
    assert sorted((s.matrix, s.encoding) for g in tiles.values() for s in g) == [("fc0", "2-PCM"), ("fc1", "4-PCM")]
    assert len(tiles) == 2 and all(len(g) == 1 for g in tiles.values())


def test_chips_are_added_as_needed_and_budget_is_enforced(rng: np.random.Generator) -> None:
    small = replace(IBM_PCM_14NM, tiles_per_chip=3)
    prog = compile_model(_mlp(rng, [1024, 1024, 512]), hardware=small)  # 4 + 2 full tiles
    check_placement(prog)
    assert len(prog.tiles_used()) == 6 == prog.placement_info["lower_bound_tiles"] and prog.chips_used == 2
    assert sorted({s.chip for s in prog.slices}) == [0, 1]
    with pytest.raises(CapacityError, match=r"needs 6 tiles \(2 chips of 3\).*budget of 1 chips gives 3 tiles"):
        compile_model(_mlp(rng, [1024, 1024, 512]), hardware=replace(small, max_chips=1))


def _grouped(w: np.ndarray, group: int, size: int = 5) -> object:
    c_in = w.shape[1] * group
    return make_model([node("Conv", ["x", "w"], ["y"], name="gconv", group=group, pads=[1, 1, 1, 1])],
                      [tensor("x", [1, c_in, size, size])], [tensor("y", [1, w.shape[0], size, size])], [const("w", w)])


def test_grouped_conv_without_packing_gives_one_matrix_per_group(rng: np.random.Generator) -> None:
    w = weights(rng, 8, 2, 3, 3)  # 8 output channels, 4 groups of 2 input channels
    prog = compile_model(_grouped(w, 4), options={"pack_groups": False})
    assert sorted(prog.matrices) == [f"gconv#g{g}" for g in range(4)]
    assert all(mat.shape == (2 * 9, 2) for mat in prog.matrices.values())
    np.testing.assert_array_equal(prog.matrices["gconv#g1"].weights, w[2:4].reshape(2, -1).T)
    assert prog.zero_block_weights() == 0 and prog.analog_weights == w.size


def test_grouped_conv_packs_groups_block_diagonally(rng: np.random.Generator) -> None:
    w = weights(rng, 8, 2, 3, 3)
    prog = compile_model(_grouped(w, 4))
    (m,) = prog.matrices.values()
    assert m.id == "gconv#g0-3" and m.shape == (4 * 18, 4 * 2)
    for g in range(4):  # group g's rows meet only its own columns
        block = np.zeros_like(m.weights)
        block[g * 18:(g + 1) * 18, g * 2:(g + 1) * 2] = w[2 * g:2 * g + 2].reshape(2, -1).T
        np.testing.assert_array_equal(m.weights[g * 18:(g + 1) * 18], block[g * 18:(g + 1) * 18])
    mask = prog.block_mask(m.id, (0, m.shape[0]), (0, m.shape[1]))
    assert mask is not None and int(mask.sum()) == w.size
    assert prog.analog_weights == w.size and prog.zero_block_weights() == m.weights.size - w.size
    assert len(prog.slices) == 1


@pytest.mark.parametrize(("channels", "k"), [(64, 3), (960, 3), (1152, 5)])
def test_depthwise_packs_fill_the_grid_and_meet_the_lower_bound(channels: int, k: int,
                                                                rng: np.random.Generator) -> None:
    w = weights(rng, channels, 1, k, k)
    m = make_model([node("Conv", ["x", "w"], ["y"], name="dw", group=channels, pads=[k // 2] * 4)],
                   [tensor("x", [1, channels, 7, 7])], [tensor("y", [1, channels, 7, 7])], [const("w", w)])
    prog = compile_model(m)
    sizes = [prog.matrices[mid].shape[1] for mid in prog.mvms["dw"].matrices]
    assert sum(sizes) == channels and max(sizes) * k * k <= 512 and max(sizes) - min(sizes) <= 1
    assert len(sizes) == -(-channels // (512 // (k * k)))  # as few matrices as the grid allows
    assert len(prog.tiles_used()) == prog.placement_info["lower_bound_tiles"]
    check_placement(prog)


def test_unknown_strategy_and_encoding_are_user_errors(rng: np.random.Generator) -> None:
    with pytest.raises(AnacError, match="unknown split strategy 'diagonal'"):
        compile_model(_mlp(rng, [4, 4]), options={"strategy": "diagonal"})
    with pytest.raises(AnacError, match="unknown encoding '3-PCM'.*4-PCM, 2-PCM"):
        compile_model(_mlp(rng, [4, 4]), options={"encoding": "3-PCM"})


def test_mythic_preset_places_one_cell_per_weight(rng: np.random.Generator) -> None:
    prog = compile_model(_mlp(rng, [1024, 2048]), hardware=load_hardware(preset="mythic-m1076"))
    assert len(prog.slices) == 2 and len(prog.tiles_used()) == 2
    assert prog.pcm_devices() == 1024 * 2048
    check_placement(prog)
