"""anac against aihwkit 1.1.0 on the same nets and images: relative logit error at 1 s after programming.

The nets, images and calibration are bench_mobile_hw's (benchmarks/hw_zoo.py: ResNet-18-,
MobileNetV3-small- and EfficientNet-B0-shaped nets, seeded random weights, measured BatchNorm
statistics; 2 test images of 96 x 96 drawn with seed 123, 16 held-apart calibration images with
seed 999). The reference is the torch net's exact eval-mode logits; each cell is the mean over
``--seeds`` programmed chips of ||y - y_exact|| / ||y_exact||.

aihwkit (pure-torch tiles, ``TorchInferenceRPUConfig``; its C++ tiles fail here with "weights
must be a CPU tensor"), set as close to anac's defaults as the two tools allow:

- device model: ``PCMLikeNoiseModel(g_max=25)`` (programming noise, drift, 1/f read noise; one
  conductance pair per weight, aihwkit's ``SinglePairConductanceConverter``), the model anac's
  PCM simulator implements (shared/HARDWARE.md);
- drift compensation: ``GlobalDriftCompensation`` (one probe ratio per tile, as anac);
- weights: ``mapping.weight_scaling_columnwise=True``, ``weight_scaling_omega=1`` (each output
  column's largest weight at g_max: anac's default per-column scale); digital bias;
- I/O: ``forward.inp_res = out_res = 1 / (2**bits - 2)`` with ``--bits 8`` (aihwkit's "8-bit":
  254 steps over [-bound, bound]; anac's 8-bit input is a magnitude word plus sign, 510 steps);
  ``out_noise = 0`` and ``w_noise = 0`` (anac models no output noise: its only noise is the
  device's); noise and bound management off (static ranges, as anac); ``out_bound`` aihwkit's
  default 12 (aihwkit has no per-tile output range calibration; anac calibrates one per slice);
- input ranges: ``pre_post.input_range`` enabled, not learned, calibrated with aihwkit's own
  ``calibrate_input_ranges(CACHE_QUANTILE)`` (the 99.995th percentile of the signed values in a
  1000-row cache of each tile's inputs, one symmetric range per tile) on the 16 held-apart images,
  with ``init_value`` 1e6: that function runs its pass with the ranges already on at ``init_value``
  (3 by default), which clips every layer's inputs at 3 while the later layers' ranges are measured
  (MobileNetV3-small, perfect I/O, no device noise, ranges at the largest |x|: 0.134 so, 0.000 not);
  column ``aihwkit init 3`` keeps aihwkit's default (likely how the issue's figures were taken);
  anac calibrates its ranges by the least squared conversion error on the same images;
- BatchNorm stays digital (anac folds it into the weights via the exporter; with a per-column
  scale the folding changes nothing in the mapped conductances);
- grouped (depthwise) convolutions stay digital: aihwkit 1.1.0's ``AnalogConv2d`` raises "Only
  one group is supported". Every other Conv2d / Linear (including squeeze-excitation's 1x1 convs)
  is analog.

anac runs in the same process on the net ``hw_zoo.export`` writes (the same weights), with
bench_mobile_hw's ``PCM 8b`` column (anac's defaults) and ``aihwkit-like`` column (one PCM pair per
weight, grouped convolutions' weights read exactly, their I/O still converted), via its functions;
its ``averaged (auto)`` column (averaged copies of the noise-sensitive layers on spare tiles) is shown too.
Two more pairs split the error: ``aihwkit I/O only`` (the noise model's programming, read and drift
noise scaled to 0) against anac's ``ideal-dev 8b``, and ``aihwkit 16b`` (inp_res = out_res =
1 / (2**16 - 2); ``init 3``: aihwkit's default calibration pass) against anac's ``PCM 16b``.
Before the nets (unless ``--no-check``), aihwkit runs on a small MLP: the error must fall as the device
noise is scaled down and, with the noise off, be the I/O quantization alone (near zero at 16 bits).

aihwkit is an optional tool of this benchmark only (not an anac dependency); aihwkit 1.1.0 needs
torch, install it without letting pip touch torch: ``pip install --no-deps aihwkit==1.1.0 tqdm`` (it
also imports scipy and requests).

    python benchmarks/bench_aihwkit.py [--seeds 3] [--models resnet18,...] [--bits 8] [--no-check]
"""

from __future__ import annotations

import argparse
import copy
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_mobile_hw as bmh  # noqa: E402
import hw_zoo  # noqa: E402
import torch  # noqa: E402
from anac.api import compile_model  # noqa: E402
from anac.backends.calibrate import calibrate  # noqa: E402

try:
    from aihwkit.inference.calibration import InputRangeCalibrationType, calibrate_input_ranges
    from aihwkit.inference.compensation.drift import GlobalDriftCompensation
    from aihwkit.inference.noise.pcm import PCMLikeNoiseModel
    from aihwkit.nn.conversion import convert_to_analog
    from aihwkit.simulator.configs import TorchInferenceRPUConfig
    from aihwkit.simulator.parameters.enums import BoundManagementType, NoiseManagementType
except ModuleNotFoundError as e:
    raise SystemExit(f"this benchmark compares anac with aihwkit, which is not installed ({e}); install it "
                     "next to torch without touching torch: pip install --no-deps aihwkit==1.1.0") from e

T = 1.0
# aihwkit columns: (I/O bits, device noise scale, input_range.init_value during calibration)
AIHW_COLUMNS = {"aihwkit": (8, 1.0, 1e6), "aihwkit init 3": (8, 1.0, 3.0), "aihwkit I/O only": (8, 0.0, 1e6),
                "aihwkit 16b": (16, 1.0, 1e6), "aihwkit 16b init 3": (16, 1.0, 3.0)}
ANAC_COLUMNS = ("PCM 8b", "aihwkit-like", "ideal-dev 8b", "PCM 16b", "averaged (auto)")


def rpu_config(bits: int = 8, noise_scale: float = 1.0, init_value: float = 1e6) -> TorchInferenceRPUConfig:
    """The aihwkit settings of the module docstring; ``noise_scale`` scales programming, read and drift noise,
    ``init_value`` is the input ranges' value during calibration."""
    rc = TorchInferenceRPUConfig()
    rc.noise_model = PCMLikeNoiseModel(g_max=25.0, prog_noise_scale=noise_scale, read_noise_scale=noise_scale,
                                       drift_scale=noise_scale)
    rc.drift_compensation = GlobalDriftCompensation()
    rc.forward.inp_res = rc.forward.out_res = 1.0 / (2 ** bits - 2)
    rc.forward.out_noise = 0.0
    rc.forward.w_noise = 0.0
    rc.forward.noise_management = NoiseManagementType.NONE
    rc.forward.bound_management = BoundManagementType.NONE
    rc.mapping.weight_scaling_omega = 1.0
    rc.mapping.weight_scaling_columnwise = True
    rc.mapping.digital_bias = True
    rc.pre_post.input_range.enable = True
    rc.pre_post.input_range.learn_input_range = False
    rc.pre_post.input_range.init_from_data = 0
    # calibrate_input_ranges runs its pass with the ranges on at init_value (3 by default: each layer's inputs
    # clipped at 3 while the next layers' ranges are measured); 1e6: nothing clips in that pass
    rc.pre_post.input_range.init_value = init_value
    return rc


def to_analog(net: torch.nn.Module, rc: TorchInferenceRPUConfig, calib: np.ndarray,
              how: InputRangeCalibrationType = InputRangeCalibrationType.CACHE_QUANTILE) -> tuple[torch.nn.Module, int]:
    """``net`` converted to aihwkit analog layers (grouped convolutions kept digital), input ranges calibrated
    on ``calib`` by ``how``. Returns the model and how many convolutions stayed digital."""
    grouped = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_to_analog(net, rc, exclude_modules=grouped)
        model.eval()
        torch.manual_seed(0)  # the calibration cache is a random subsample
        calibrate_input_ranges(model, how, [((torch.from_numpy(calib),), {})])
    return model, len(grouped)


@torch.no_grad()
def aihwkit_err(model: torch.nn.Module, x: np.ndarray, ref: np.ndarray, seeds: int) -> float:
    """Mean relative logit error over ``seeds`` programmed chips read at ``T``."""
    errs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model.program_analog_weights()
        model.drift_analog_weights(T)
        y = model(torch.from_numpy(x)).numpy()
        errs.append(float(np.linalg.norm(y - ref) / np.linalg.norm(ref)))
    return float(np.mean(errs))


def check(seeds: int) -> None:
    """aihwkit on a small MLP: the error falls with the noise and, noise off, is the I/O quantization alone
    (the last two rows: ranges set to the largest |x| of the test input itself, so nothing clips)."""
    torch.manual_seed(1)
    mlp = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10)).eval()
    x = np.random.default_rng(0).standard_normal((32, 64)).astype(np.float32)
    calib = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = mlp(torch.from_numpy(x)).numpy()
    held = [(bits, s, "held-apart 99.995 %", to_analog(mlp, rpu_config(bits, s), calib)[0])
            for bits, s in ((8, 1.0), (8, 0.5), (8, 0.25), (8, 0.0))]
    test = [(bits, 0.0, "test max", to_analog(mlp, rpu_config(bits, 0.0), x, InputRangeCalibrationType.MAX)[0])
            for bits in (8, 16)]
    rows = [(b, s, r, aihwkit_err(m, x, ref, seeds)) for b, s, r, m in held + test]
    print("aihwkit sanity check (MLP 64-128-10, 32 inputs): " + ", ".join(
        f"{b}-bit noise x{s:g} ranges {r} {e:.4f}" for b, s, r, e in rows), file=sys.stderr)
    errs = [e for _, _, _, e in rows]
    if not (errs[0] > errs[1] > errs[2] > errs[3] and errs[4] < errs[3] and errs[5] < 1e-3):
        raise SystemExit(f"aihwkit setup is not sane: errors {errs} should fall with the noise, to < 1e-3 at "
                         "16 bits without noise or clipping")


def anac_errs(path: Path, x: np.ndarray, ref: np.ndarray, calib: np.ndarray, seeds: int) -> dict[str, float]:
    """anac's error on the exported net for bench_mobile_hw's ``ANAC_COLUMNS``."""
    out, bases = {}, {}
    for col in ANAC_COLUMNS:
        hw, _on_test, comp, pct, exact_layers, scale, enc, more = bmh.COLUMNS[col]
        key = (scale, enc, more)
        if key not in bases:
            bases[key] = compile_model(path, input_shapes={"input": x.shape}, progress=lambda _m: None,
                                       options={"scale": scale, "encoding": enc, **dict(more)})
        prog = copy.copy(bases[key])  # the same mapping; other device model, bits and ranges
        prog.hardware = hw()
        calibrate(prog, {"input": calib}, percentile=pct)
        out[col] = bmh.rel_err(prog, x, ref, seeds, comp, exact_layers)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=96, help="image side (pixels)")
    ap.add_argument("--batch", type=int, default=2, help="test images")
    ap.add_argument("--calib", type=int, default=16, help="held-apart calibration images")
    ap.add_argument("--seeds", type=int, default=3, help="programmed chips per cell")
    ap.add_argument("--bits", type=int, default=8, help="aihwkit inp_res = out_res = 1 / (2**bits - 2)")
    ap.add_argument("--models", default=",".join(hw_zoo.MODELS))
    ap.add_argument("--no-check", action="store_true", help="skip the aihwkit sanity check on an MLP")
    args = ap.parse_args()
    names = args.models.split(",")
    unknown = sorted(set(names) - set(hw_zoo.MODELS))
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(hw_zoo.MODELS)}")
    logging.basicConfig(level=logging.ERROR)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if not args.no_check:
        check(args.seeds)
    x = hw_zoo.images(args.batch, args.size, seed=123)
    calib = hw_zoo.images(args.calib, args.size, seed=999)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            net = hw_zoo.build(name, args.size)
            with torch.no_grad():
                ref = net(torch.from_numpy(x)).numpy()
            aihw, digital = {}, 0
            for col, (bits, scale, init) in AIHW_COLUMNS.items():
                model, digital = to_analog(net, rpu_config(bits if "16b" in col else args.bits, scale, init),
                                           calib)
                aihw[col] = aihwkit_err(model, x, ref, args.seeds)
            path = hw_zoo.export(name, Path(tmp) / f"{name}.onnx", args.size)
            anac = anac_errs(path, x, ref, calib, args.seeds)
            rows.append((name, aihw, anac, digital))
            print(f"# {name}: {digital} grouped convs digital in aihwkit; "
                  + ", ".join(f"{c} {v:.3f}" for c, v in aihw.items()) + "; "
                  + ", ".join(f"anac {c} {v:.3f}" for c, v in anac.items())
                  + f" ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(f"Relative error of the logits at t = {T:g} s against the exact torch logits, {args.batch} test images "
          f"of {args.size} x {args.size}, mean over {args.seeds} programmed chips; input ranges calibrated on "
          f"{args.calib} held-apart images; aihwkit {args.bits}-bit I/O\n")
    print("| model | aihwkit 1.1.0 | aihwkit init 3 | anac PCM 8b | anac aihwkit-like | PCM 8b / aihwkit | "
          "PCM 8b / aihwkit init 3 | aihwkit I/O only | anac ideal-dev 8b | aihwkit 16b | aihwkit 16b init 3 | "
          "anac PCM 16b | anac averaged (auto) |")
    print("|---|" + "---|" * 12)
    for name, aihw, anac, _ in rows:
        a, a3 = aihw["aihwkit"], aihw["aihwkit init 3"]
        print(f"| {name} | {a:.3f} | {a3:.3f} | {anac['PCM 8b']:.3f} | {anac['aihwkit-like']:.3f} | "
              f"{anac['PCM 8b'] / a:.2f} | {anac['PCM 8b'] / a3:.2f} | {aihw['aihwkit I/O only']:.3f} | "
              f"{anac['ideal-dev 8b']:.3f} | {aihw['aihwkit 16b']:.3f} | {aihw['aihwkit 16b init 3']:.3f} | "
              f"{anac['PCM 16b']:.3f} | {anac['averaged (auto)']:.3f} |")
    print(f"\n({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
