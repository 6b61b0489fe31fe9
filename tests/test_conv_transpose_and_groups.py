"""ConvTranspose on crossbars and grouped convs packed block-diagonally, against onnxruntime in both modes.

ConvTranspose (1-D, 2-D, 3-D) over a grid of strides, pads, output_padding,
groups, dilations, auto_pad and output_shape must become one analog node (no
weight left on the host) whose ideal simulation matches onnxruntime to 1e-5
and whose hardware simulation stays within the device noise. Depthwise and
grouped convs, packed or one matrix per group, must give the same answers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from anac.api import check, compile_model, report_json, verify
from anac.core.artifact import summary
from helpers import check_placement, const, make_model, node, tensor, weights

TOL = 1e-5
HW_TOL = 0.25  # mean relative error of hardware mode at 1 s, 8-bit I/O: device noise, not mapping

CASES: list[tuple[str, list[int], dict[str, Any]]] = [
    ("1d", [2, 4, 9], {}),
    ("1d-stride-pads", [2, 4, 9], {"strides": [3], "pads": [1, 2], "output_padding": [2]}),
    ("1d-dilated-groups", [1, 6, 7], {"dilations": [2], "group": 3, "strides": [2]}),
    ("2d", [1, 4, 5, 6], {}),
    ("2d-stride", [1, 4, 5, 6], {"strides": [2, 2]}),
    ("2d-stride-pads-outpad", [1, 4, 5, 6], {"strides": [2, 3], "pads": [1, 0, 2, 1], "output_padding": [1, 2]}),
    ("2d-big-pads", [1, 4, 5, 6], {"strides": [2, 2], "pads": [3, 0, 0, 3]}),
    ("2d-dilations", [1, 4, 5, 6], {"dilations": [2, 3], "strides": [1, 2]}),
    ("2d-groups", [1, 4, 5, 6], {"group": 2, "strides": [2, 2]}),
    ("2d-depthwise", [1, 8, 5, 6], {"group": 8, "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    ("2d-same-upper", [1, 4, 5, 6], {"strides": [2, 2], "auto_pad": "SAME_UPPER"}),
    ("2d-same-lower", [1, 4, 5, 6], {"strides": [2, 3], "auto_pad": "SAME_LOWER"}),
    ("2d-valid", [1, 4, 5, 6], {"strides": [2, 2], "auto_pad": "VALID"}),
    ("2d-output-shape", [1, 4, 5, 6], {"strides": [2, 2], "output_shape": [10, 11]}),
    ("3d", [1, 4, 3, 4, 5], {"strides": [1, 2, 2], "pads": [0, 1, 0, 1, 0, 1], "output_padding": [0, 1, 0]}),
    ("3d-groups-dilations", [1, 4, 3, 4, 3], {"group": 2, "dilations": [1, 2, 1], "strides": [2, 1, 1]}),
]


def _conv_transpose(shape: list[int], attrs: dict[str, Any], seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    group = attrs.get("group", 1)
    kernel = [3] * (len(shape) - 2)
    c_in = shape[1]
    w = weights(rng, c_in, 6 // group if group <= 2 else 1, *kernel)
    b = weights(rng, w.shape[1] * group, scale=0.1)
    out = ["n", "c"] + [f"s{i}" for i in range(len(kernel))]
    m = make_model([node("ConvTranspose", ["x", "w", "b"], ["y"], name="deconv", **attrs)],
                   [tensor("x", shape)], [tensor("y", out)], [const("w", w), const("b", b)])
    return onnx.shape_inference.infer_shapes(m)


@pytest.mark.parametrize(("name", "shape", "attrs"), CASES, ids=[c[0] for c in CASES])
def test_conv_transpose_maps_to_crossbars_and_matches_onnxruntime(name: str, shape: list[int],
                                                                   attrs: dict[str, Any]) -> None:
    model = _conv_transpose(shape, attrs)
    prog = compile_model(model)
    assert list(prog.mvms) == ["deconv"] and prog.mvms["deconv"].op_type == "ConvTranspose"
    assert summary(prog)["host_weights"]["weights"] == 0
    check_placement(prog)
    rep = verify(model, program=prog)
    assert rep.passed and max(o.rel_err for o in rep.outputs.values()) <= TOL, rep.outputs


@pytest.mark.parametrize("name", ["2d-stride-pads-outpad", "2d-depthwise", "3d"])
def test_conv_transpose_in_hardware_mode_is_within_noise(name: str) -> None:
    shape, attrs = next((s, a) for n, s, a in CASES if n == name)
    model = _conv_transpose(shape, attrs)
    rep = verify(model, mode="hardware", batch=None, times="1s")
    err = max(o["rel_err"].mean for o in rep.times[0].outputs.values())
    assert rep.passed and 0 < err <= HW_TOL, err


def _depthwise_block(rng: np.random.Generator, channels: int) -> onnx.ModelProto:
    """1x1 expand, ReLU, 3x3 depthwise (stride 2), ReLU, grouped 1x1 (4 groups): the shapes of a mobile net."""
    w1 = weights(rng, channels, 8, 1, 1)
    wd = weights(rng, channels, 1, 3, 3, scale=0.4)
    wg = weights(rng, channels, channels // 4, 1, 1)
    nodes = [node("Conv", ["x", "w1"], ["a"]), node("Relu", ["a"], ["ar"]),
             node("Conv", ["ar", "wd"], ["d"], group=channels, strides=[2, 2], pads=[1, 1, 1, 1]),
             node("Relu", ["d"], ["dr"]), node("Conv", ["dr", "wg"], ["y"], group=4)]
    m = make_model(nodes, [tensor("x", [2, 8, 12, 12])], [tensor("y", [2, channels, 6, 6])],
                   [const("w1", w1), const("wd", wd), const("wg", wg)])
    return m


@pytest.mark.parametrize("pack", [True, False])
def test_grouped_convs_match_onnxruntime_packed_or_not(pack: bool, rng: np.random.Generator) -> None:
    model = _depthwise_block(rng, 120)
    prog = compile_model(model, options={"pack_groups": pack})
    n_matrices = len(prog.mvms["d"].matrices)
    assert n_matrices == (3 if pack else 120)  # 56 groups of 9 rows fit 512 rows: 120 groups in 3 packs
    assert (prog.zero_block_weights() > 0) == pack
    assert prog.analog_weights == 120 * 8 + 120 * 9 + 120 * 30  # the zero blocks are no weights
    layers = {r["node"]: r for r in report_json(prog)["layers"]}
    assert layers["d"]["weights"] == 120 * 9 and (layers["d"]["zero_block_weights"] > 0) == pack
    if pack:
        assert {a["node"]: a["weights"] for a in check(model)["analog"]}["d"] == 120 * 9
    rep = verify(model, program=prog)
    assert rep.passed and max(o.rel_err for o in rep.outputs.values()) <= TOL


def test_packed_groups_in_hardware_mode_are_within_noise_and_no_worse_than_one_matrix_per_group(
        rng: np.random.Generator) -> None:
    model = _depthwise_block(rng, 120)
    err = {}
    for pack in (True, False):
        prog = compile_model(model, options={"pack_groups": pack})
        rep = verify(model, program=prog, mode="hardware", times="1s", repeats=2)
        err[pack] = max(o["rel_err"].mean for o in rep.times[0].outputs.values())
    # Tiny per-group slices each get their own output range and drift probe from a handful of devices;
    # packed, the zero blocks carry no conductance, so nothing is added to a group's noise.
    assert 0 < err[True] <= HW_TOL and err[True] <= err[False], err


def test_packed_zero_blocks_are_never_programmed(rng: np.random.Generator) -> None:
    from anac.backends.analog import ProgrammedChip

    model = _depthwise_block(rng, 64)
    prog = compile_model(model)
    chip = ProgrammedChip(prog, seed=0)
    read = chip.weights_at(1.0)
    for s in prog.slices:
        mask = prog.block_mask(s.matrix, s.rows, s.cols)
        if mask is not None:
            assert mask.sum() < mask.size and not read[s.id][~mask].any()  # no conductance off the blocks
            assert read[s.id][mask].any()


def test_a_plan_packs_and_transposes_as_compile_does(rng: np.random.Generator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from anac.plan import plan_model
    from helpers import save

    for model in (_depthwise_block(rng, 120), _conv_transpose([1, 8, 5, 6], {"group": 8, "strides": [2, 2]})):
        path = save(model, tmp_path)
        compiled, planned = compile_model(path), plan_model(path)
        assert [(s.matrix, s.rows, s.cols, s.chip, s.tile) for s in planned.slices] == \
            [(s.matrix, s.rows, s.cols, s.chip, s.tile) for s in compiled.slices]
        assert planned.zero_block_weights() == compiled.zero_block_weights()
        assert planned.analog_weights == compiled.analog_weights
