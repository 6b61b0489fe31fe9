"""replicate: copies of layers on spare tiles share the products; the pipeline estimate; --replicate errors."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import compile_model, load_program, save_program, simulate, verify
from anac.backends.calibrate import calibrate
from anac.backends.simulator import Simulator
from anac.cli import main
from anac.core.dataflow import copy_vectors
from anac.core.errors import AnacError, CapacityError
from anac.core.estimates import performance
from anac.core.program import copy_counts
from click.testing import CliRunner
from helpers import assert_verified, const, make_model, node, save, small_cnn, tensor, weights

RNNT_SMALL = Path(__file__).resolve().parents[2] / "models" / "rnnt_small.onnx"


def _by_tile(prog) -> dict:  # type: ignore[no-untyped-def]
    out = defaultdict(list)
    for s in prog.slices:
        out[(s.chip, s.tile)].append(s)
    return out


def test_copies_are_placed_slices_and_share_the_products(rng: np.random.Generator) -> None:
    model = small_cnn(rng)
    base = compile_model(model)
    prog = compile_model(model, options={"replicate": "conv1=3,conv2=2"})
    assert copy_counts(prog) == {"conv1": 3, "conv2": 2, "fc": 1}
    # every copy covers its matrix exactly once, with the original's encoding
    for mid, m in prog.matrices.items():
        for c in range(copy_counts(prog)[mid]):
            cover = np.zeros(m.shape, np.int32)
            for s in prog.slices:
                if s.matrix == mid and s.copy == c:
                    cover[s.rows[0]:s.rows[1], s.cols[0]:s.cols[1]] += 1
                    assert s.encoding == m.encoding
            assert (cover == 1).all(), (mid, c)
    # a dedicated layer's slices sit alone on their tiles; ids run 0..n-1
    assert [s.id for s in prog.slices] == list(range(len(prog.slices)))
    for group in _by_tile(prog).values():
        if any(s.own_tile for s in group):
            assert len(group) == 1
    assert len(prog.tiles_used()) == 3 + 2 + 1
    # the estimate: conv1 runs 16 x 16 = 256 products per inference, split 86/85/85 across its copies
    perf, perf0 = performance(prog), performance(base)
    assert perf["layers"]["conv1"]["mvms"] == 256 and perf["layers"]["conv1"]["copies"] == 3
    step = prog.hardware.mvm_time_ns * 1e-9
    assert perf["layers"]["conv1"]["busy_s"] == pytest.approx(86 * step)
    assert perf["layers"]["conv2"]["busy_s"] == pytest.approx(128 * step)
    assert perf0["layers"]["conv1"]["busy_s"] == pytest.approx(256 * step)
    assert perf["throughput_per_s"] > perf0["throughput_per_s"]
    assert prog.replication["copies"] == {"conv1": 3, "conv2": 2} and prog.replication["status"] == "fixed"
    # PCM per weight is the encodings' figure (each weight once); the device count holds every copy
    from anac.api import summary

    assert summary(prog)["pcm_per_weight"] == summary(base)["pcm_per_weight"] == 4.0
    assert summary(prog)["pcm_devices"] == 4 * (3 * 27 * 8 + 2 * 72 * 16 + 16 * 10)


def test_ideal_mode_with_copies_equals_onnxruntime(rng: np.random.Generator, tmp_path: Path) -> None:
    model = small_cnn(rng, batch=2)
    path = save(model, tmp_path)
    prog = compile_model(path, options={"replicate": "conv1=3,conv2=4,fc=2"})
    assert_verified(verify(path, program=prog), 1e-5)
    # saved and loaded, the copies and their sharing survive
    back = load_program(save_program(prog, tmp_path / "m.anac"))
    assert copy_counts(back) == copy_counts(prog)
    assert [s.own_tile for s in back.slices] == [s.own_tile for s in prog.slices]
    assert_verified(verify(path, program=back), 1e-5)


def test_hardware_mode_runs_each_copy_on_its_own_devices(rng: np.random.Generator) -> None:
    model = small_cnn(rng)
    prog = compile_model(model, options={"replicate": "conv2=2"})
    calibrate(prog, seed=0)
    x = {"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)}
    sim = Simulator(prog, "hardware")
    chip = sim.program(3)
    reads = dict(chip.read_at(60.0, True))
    conv2 = [s for s in prog.slices if s.matrix == "conv2"]
    a = next(s for s in conv2 if s.copy == 0)
    b = next(s for s in conv2 if s.copy == 1 and s.rows == a.rows and s.cols == a.cols)
    assert not np.array_equal(reads[a.id], reads[b.id])  # programmed separately: different noise
    assert np.abs(reads[a.id] - reads[b.id]).max() < 0.5 * np.abs(prog.matrices["conv2"].weights).max()
    assert b.output_range == a.output_range  # calibrated as the copy it repeats
    sim.at(60.0)
    out = sim.run(x)["y"]
    seen: dict[str, np.ndarray] = {}
    orig = sim._run_mvm

    def spy(mvm, x, step=0):  # type: ignore[no-untyped-def]
        y = orig(mvm, x, step)
        seen[mvm.node] = y
        return y

    sim._run_mvm = spy  # type: ignore[method-assign]
    np.testing.assert_array_equal(sim.run(x)["y"], out)  # the same chip read the same way
    before = seen["conv2"].reshape(16, 256).copy()  # (channels, positions)
    # Silence copy 1 of conv2 (its read weights to zero): the second half of the output positions,
    # which copy 1 computes, changes (to the bias, through the ReLU); the first half does not.
    sim._copy_reads[("conv2", 1)][:] = 0
    out2 = sim.run(x)["y"]
    after = seen["conv2"].reshape(16, 256)
    assert not np.allclose(out, out2)
    np.testing.assert_array_equal(after[:, :128], before[:, :128])
    bias = np.maximum(0, prog.mvms["conv2"].bias.reshape(16, 1))
    np.testing.assert_allclose(after[:, 128:], np.broadcast_to(bias, (16, 128)), atol=1e-6)
    assert not np.allclose(before[:, 128:], after[:, 128:])


def test_auto_balances_the_pipeline_within_the_budget(rng: np.random.Generator) -> None:
    model = small_cnn(rng, size=32)
    base = compile_model(model)
    prog = compile_model(model, options={"replicate": "auto"})
    r = prog.replication
    assert r["status"] == "optimal" and r["budget_tiles"] == prog.hardware.tiles_per_chip
    assert len(prog.tiles_used()) <= r["budget_tiles"] and r["tiles"] == len(prog.tiles_used())
    # conv1 and conv2 each run 1,024 products per inference; the FC one: they get the copies
    assert r["copies"]["conv1"] > 1 and r["copies"]["conv2"] > 1 and "fc" not in r["copies"]
    a, b = performance(base), performance(prog)
    assert b["throughput_per_s"] > 4 * a["throughput_per_s"]
    # optimal under the pass's own stage model: one more copy of the slowest layer does not fit, or does
    # not make the slowest stage faster
    slow = max(r["copies"], key=lambda n: -(-1024 // r["copies"][n]))
    more = ",".join(f"{n}={k + (n == slow)}" for n, k in r["copies"].items())
    try:
        again = compile_model(model, options={"replicate": more}).replication
    except CapacityError:
        return
    assert again["estimated_stage_ns"] >= r["estimated_stage_ns"]


def test_recurrent_layers_share_steps_across_copies(tmp_path: Path) -> None:
    shapes = {"features": [6, 2, 8], "tokens": [3, 2]}
    prog = compile_model(RNNT_SMALL, input_shapes=shapes,
                         options={"replicate": "enc1/d0/WR=2,joint.fc1=3,pred1/d0/WR=2"})
    assert prog.replication["copies"] == {"enc1/d0/WR": 2, "joint.fc1": 3, "pred1/d0/WR": 2}
    rng = np.random.default_rng(1)
    inputs = {"features": rng.standard_normal(shapes["features"]).astype(np.float32),
              "tokens": rng.integers(0, 28, shapes["tokens"]).astype(np.int64)}
    assert_verified(verify(RNNT_SMALL, program=prog, inputs=inputs), 1e-5)
    base = compile_model(RNNT_SMALL, input_shapes=shapes)
    np.testing.assert_allclose(simulate(prog, inputs)["logits"], simulate(base, inputs)["logits"], atol=1e-5)


def test_estimate_counts_products_per_layer_and_names_the_bounding_stage(rng: np.random.Generator) -> None:
    prog = compile_model(small_cnn(rng, size=32))
    perf = performance(prog)
    step = prog.hardware.mvm_time_ns * 1e-9
    assert prog.hardware.mvm_time_ns == 300.0  # the paper's step
    assert perf["layers"]["conv1"]["mvms"] == 1024 and perf["layers"]["fc"]["mvms"] == 1
    # conv1 and conv2 share a tile (packed): the tile runs both, one after the other
    tile = perf["layers"]["conv1"]["tile"]
    assert perf["layers"]["conv2"]["tile"] == tile
    assert perf["resources_busy_s"][f"tile:{tile}"] == pytest.approx((1024 + 1024 + 1) * step)
    assert perf["bottleneck"].startswith(f"tile:{tile}") and "conv1" in perf["bottleneck"]
    assert perf["throughput_per_s"] == pytest.approx(1 / ((1024 + 1024 + 1) * step), rel=1e-3)
    assert perf["latency_s"] == pytest.approx(prog.schedule["latency_ns"] * 1e-9)
    busiest = max(perf["resources_busy_s"].values())
    assert perf["bottleneck_busy_s"] == pytest.approx(busiest)


def test_estimate_of_a_recurrent_layer_counts_its_steps() -> None:
    shapes = {"features": [6, 2, 8], "tokens": [3, 2]}
    perf = performance(compile_model(RNNT_SMALL, input_shapes=shapes))
    assert perf["layers"]["enc1/d0/WR"]["mvms"] == 6 * 2  # time steps x batch
    assert perf["layers"]["enc3/d0/WR"]["mvms"] == 3 * 2  # after time-stacking x2
    assert perf["layers"]["joint.fc1"]["mvms"] == 2 * 3 * 3  # batch x frames x tokens


def test_copy_vectors_split_evenly() -> None:
    assert [copy_vectors(10, 3, c) for c in range(3)] == [4, 3, 3]
    assert sum(copy_vectors(7, 7, c) for c in range(7)) == 7


def test_cli_compile_reports_the_estimate_and_copies(rng: np.random.Generator, tmp_path: Path) -> None:
    path = save(small_cnn(rng), tmp_path)
    res = CliRunner().invoke(main, ["compile", str(path), "--replicate", "auto", "--json", "-q"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.output)
    assert rep["throughput_per_s"] > 0 and rep["latency_s"] > 0 and rep["bottleneck"]
    assert rep["replication"]["status"] == "optimal"
    res = CliRunner().invoke(main, ["compile", str(path), "--replicate", "conv1=2"])
    assert res.exit_code == 0, res.output
    assert "inferences/s pipelined" in res.output and "conv1 x2" in res.output


@pytest.mark.parametrize("spec, message", [
    ("nosuch=2", "'nosuch', which is not a crossbar layer; the crossbar layers are: conv1, conv2, fc"),
    ("conv1=0", "conv1=0: a layer needs at least 1 copy (itself), got 0"),
    ("conv1=x", "'x' is not a whole number of copies"),
    ("conv1", "is not LAYER=COPIES"),
    ("conv1=30,conv2=10", "needs 41 tiles (40 more than the model's 1 without copies); the 1 chip(s) the model "
                          "occupies (34 tiles) gives 34"),
])
def test_bad_replicate_is_a_clear_error(rng: np.random.Generator, tmp_path: Path, spec: str, message: str) -> None:
    path = save(small_cnn(rng), tmp_path)
    out = tmp_path / "m.anac"
    res = CliRunner().invoke(main, ["compile", str(path), "--replicate", spec, "-o", str(out)])
    assert res.exit_code == 1, res.output
    assert message in res.output and "Traceback" not in res.output
    assert not out.exists()
    with pytest.raises(AnacError):
        compile_model(path, options={"replicate": spec})


def test_chip_budget_bounds_the_copies(rng: np.random.Generator, tmp_path: Path) -> None:
    path = save(small_cnn(rng), tmp_path)
    res = CliRunner().invoke(main, ["compile", str(path), "--replicate", "conv1=40", "--chips", "1"])
    assert res.exit_code == 1
    assert "needs 41 tiles" in res.output and "--chips 1 (34 tiles) gives 34" in res.output
    prog = compile_model(path, options={"replicate": "conv1=40", "chips": 2})
    assert prog.chips_used == 2 and copy_counts(prog)["conv1"] == 40


def test_inspect_and_html_show_busy_time_per_layer(rng: np.random.Generator, tmp_path: Path) -> None:
    import re

    from anac.htmlreport import render_html
    from anac.views import busy_bars

    prog = compile_model(small_cnn(rng), options={"replicate": "conv1=2"})
    perf = performance(prog)
    out = save_program(prog, tmp_path / "m.anac")
    res = CliRunner().invoke(main, ["inspect", str(out)])
    assert res.exit_code == 0, res.output
    lines = busy_bars(load_program(out))
    assert all(line in res.output for line in lines)
    bars = {ln.split()[0]: ln.split()[1] for ln in lines[1:4]}
    assert set(bars) == {"conv1", "conv2", "fc"}
    assert len(bars["conv2"]) == 40 and len(bars["conv1"]) == round(40 * 128 / 256)  # conv2 bounds the tiles
    assert "over 2 copies" in lines[1] and "bound by" in lines[4]
    page = render_html(prog)
    drawn = dict(re.findall(r'<rect class="busy" data-layer="([^"]+)" data-busy-s="([^"]+)"', page))
    assert {k: float(v) for k, v in drawn.items()} == {n: v["busy_s"] for n, v in perf["layers"].items()}


def _cnn576(rng: np.random.Generator) -> onnx.ModelProto:
    """Three 3x3 convs of 64 channels on 16 x 16 (conv2 and conv3: 576 input rows, two 4-PCM slices or one
    2-PCM slice), global average pool, FC 64 -> 10."""
    nodes = [node("Conv", ["x", "w1"], ["c1"], name="conv1", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c1"], ["r1"], name="relu1"),
             node("Conv", ["r1", "w2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("Relu", ["c2"], ["r2"], name="relu2"),
             node("Conv", ["r2", "w3"], ["c3"], name="conv3", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             node("GlobalAveragePool", ["c3"], ["g"], name="gap"), node("Flatten", ["g"], ["f"], name="flat"),
             node("Gemm", ["f", "w4"], ["y"], name="fc")]
    inits = [const("w1", weights(rng, 64, 3, 3, 3)), const("w2", weights(rng, 64, 64, 3, 3)),
             const("w3", weights(rng, 64, 64, 3, 3)), const("w4", weights(rng, 64, 10))]
    return make_model(nodes, [tensor("x", [1, 3, 16, 16])], [tensor("y", [1, 10])], inits)


def test_objective_spends_spare_tiles_on_accuracy_or_speed(rng: np.random.Generator, tmp_path: Path) -> None:
    path = save(_cnn576(rng), tmp_path)
    got = {}
    for objective in ("accuracy", "balanced", "throughput"):
        prog = compile_model(path, options={"tiles": 8, "objective": objective, "replicate": "auto"})
        got[objective] = (prog, performance(prog))
        assert len(prog.tiles_used()) <= 8 and prog.replication["objective"] == objective
        assert all(s == "optimal" for s in prog.replication["solves"])
        assert_verified(verify(path, program=prog), 1e-5)
    acc, fast = got["accuracy"][0], got["throughput"][0]
    # accuracy: every weight 4-PCM (the least error); throughput: 2-PCM so that copies fit, a faster pipeline
    assert acc.assignment["pcm_per_weight"] == 4.0
    assert fast.assignment["estimated_error"] > acc.assignment["estimated_error"]
    assert got["throughput"][1]["throughput_per_s"] > 2 * got["accuracy"][1]["throughput_per_s"]
    bal = got["balanced"][0].assignment["estimated_error"]
    assert acc.assignment["estimated_error"] <= bal <= fast.assignment["estimated_error"]
    # a 2-PCM copy takes half the tiles of a 4-PCM one: conv2 (576 rows) is one 2-PCM slice per copy
    conv2 = [s for s in fast.slices if s.matrix == "conv2"]
    assert {s.encoding for s in conv2} == {"2-PCM"} and len(conv2) == fast.replication["copies"]["conv2"]
    assert len([s for s in acc.slices if s.matrix == "conv2"]) == 2  # 4-PCM: two slices, two tiles
    # --objective throughput implies --replicate auto
    implied = compile_model(path, options={"tiles": 8, "objective": "throughput"})
    assert implied.replication["copies"] == fast.replication["copies"]


def test_encodings_per_slice_fill_spare_tiles(rng: np.random.Generator) -> None:
    """A budget that fits 4-PCM for all but part of one layer: that layer is mixed per column block."""
    from helpers import matmul_chain

    model = matmul_chain(rng, [512, 2048, 512])  # l0: 512 x 2048 (4 blocks), l1: 2048 x 512 (1 block)
    prog = compile_model(model, options={"tiles": 7})  # all 4-PCM needs 8 tiles
    a = prog.assignment
    assert len(prog.tiles_used()) <= 7 and a["status"] == "optimal"
    encs = {s.encoding for s in prog.slices}
    assert encs == {"2-PCM", "4-PCM"} and a["mixed_layers"]
    # per layer only one layer could drop to 2-PCM: 3.0 PCM per weight at best; per block 3.5
    assert a["pcm_per_weight"] == 3.5
    mixed = next(iter(a["mixed_layers"]))
    blocks = {(s.cols, s.encoding) for s in prog.slices if s.matrix == mixed}
    assert len({c for c, _ in blocks}) == 4 and len(blocks) == 4  # each column block one encoding


def test_energy_counts_each_product_once_whatever_the_copies(rng: np.random.Generator) -> None:
    from anac.core.estimates import energy

    model = small_cnn(rng)
    one, three = energy(compile_model(model)), energy(compile_model(model, options={"replicate": "conv1=3"}))
    assert one["macs"] == three["macs"] == 256 * (27 * 8 + 72 * 16) + 16 * 10
