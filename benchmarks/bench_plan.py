"""Planning a 7-billion-parameter decoder without its weights: time and peak memory at 4-PCM, 2-PCM and 3 PCM
per weight on the IBM preset, with the chips and the bytes per token on chip links.

The model (models/make_decoder.py: LLaMA-7B shapes, 32 layers, width 4096, MLP 11008, vocabulary 32000) keeps
its 25 GiB of weights as external data in a sparse file, which a plan never reads. Each plan is
``anac plan MODEL --hardware ibm-pcm-14nm --input-shape input_ids=1,1 ...`` (one token: bytes per inference
are bytes per token), run in a child process so its time and peak resident memory are its own. The floor is
a child that does only what any tool must to know the shapes: onnx.load of the headers and ONNX shape
inference.

    python benchmarks/bench_plan.py [--layers 32] [--timeout 600]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [("--encoding 4-PCM", ["--encoding", "4-PCM"]), ("--encoding 2-PCM", ["--encoding", "2-PCM"]),
         ("--pcm-per-weight 3", ["--pcm-per-weight", "3"])]
FLOOR = "import onnx, sys; onnx.shape_inference.infer_shapes(onnx.load(sys.argv[1], load_external_data=False))"


def child(cmd: list[str], timeout: float) -> tuple[float, int, int | None, str]:
    """Run ``cmd``; its wall time, peak resident bytes, exit code (None when killed at ``timeout``) and stdout."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env={**os.environ, "OPENBLAS_NUM_THREADS": "1",
                                                                "OMP_NUM_THREADS": "1"})
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        _, status, usage = os.wait4(p.pid, 0)  # this child's own rusage
        timer.cancel()
        elapsed = time.perf_counter() - t
        p.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if code > 0:
            sys.exit(f"{' '.join(cmd)} failed:\n{err.read()}")
        return elapsed, usage.ru_maxrss * 1024, None if code < 0 else code, out.read()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=600.0, help="Seconds before a plan is stopped.")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "models"))
    import make_decoder
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        model = make_decoder.write(Path(tmp), layers=args.layers)
        proto = onnx.load(str(model), load_external_data=False)
        params = make_decoder.parameters(proto)
        data = model.with_name(model.name + ".data").stat().st_size
        del proto
        floor_s, floor_rss, _, _ = child([sys.executable, "-c", FLOOR, str(model)], args.timeout)
        print(f"model: {args.layers}-layer decoder, {params:,} parameters, {data / 2**30:.1f} GiB of weights in a "
              f"sparse external data file that is never read")
        print(f"floor (child: onnx.load of the headers + shape inference): {floor_s:.2f} s, "
              f"{floor_rss / 2**30:.2f} GiB peak")
        print(f"{'plan':<20} {'time s':>7} {'x floor':>8} {'peak GiB':>9} {'tiles':>7} {'chips':>6} {'PCM/w':>6} "
              f"{'link bytes/token':>17}  placement; schedule")
        for name, extra in CASES:
            out = Path(tmp) / "plan.anac"
            cmd = [sys.executable, "-m", "anac.cli", "plan", str(model), "--hardware", "ibm-pcm-14nm",
                   "--input-shape", "input_ids=1,1", *extra, "-o", str(out), "--json", "-q"]
            s, rss, code, text = child(cmd, args.timeout)
            if code is None:
                print(f"{name:<20} did not finish in {args.timeout:.0f} s (peak {rss / 2**30:.2f} GiB so far)")
                continue
            rep = json.loads(text)
            links = rep["link_bytes"]
            print(f"{name:<20} {s:7.1f} {s / floor_s:7.1f}x {rss / 2**30:9.2f} {rep['tiles']:>7,} {rep['chips']:>6,} "
                  f"{rep['pcm_per_weight']:>6} {links['total']:>17,}  {rep['placement'].get('status')}; "
                  f"{rep['schedule'].get('status')}")
        print("link bytes/token: all bytes on chip links for one token (input_ids 1 x 1); on the IBM preset partial "
              "sums are added on the host, so they are chip-host traffic (chip to chip: 0)")


if __name__ == "__main__":
    main()
