"""VGG-19 with real weights (143.7 M): compile time against the floor, peak memory and program size
against the model, load time against onnx.load.

The model is the ONNX suite's light VGG-19 graph with each ConstantOfShape weight replaced by a seeded
random initializer of its shape (He-scaled normal weights, small biases), written to a temp dir: a
575 MB file whose weights are real bytes, as an exported VGG-19's are. The floor is onnx.load plus one
numpy pass over every weight; the compile (``anac compile vgg19.onnx``, unbudgeted: every layer on
4-PCM, as many chips as it takes) runs in a child process, which reports its own peak resident memory.

    python benchmarks/bench_compile_vgg19.py [--model light_resnet50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnx
from compile_measure import report
from onnx import numpy_helper

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def with_real_weights(light: Path, out: Path, seed: int = 0) -> Path:
    """``light`` with its ConstantOfShape weights made seeded random initializers, saved to ``out``."""
    model = onnx.load(str(light))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    rng = np.random.default_rng(seed)
    nodes, made = [], []
    for node in g.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in inits:
            nodes.append(node)
            continue
        shape = tuple(int(d) for d in numpy_helper.to_array(inits[node.input[0]]))
        fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 0
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.01
        w = rng.standard_normal(shape, dtype=np.float32)
        w *= np.float32(scale)
        made.append(numpy_helper.from_array(w, node.output[0]))
    used = {i for n in nodes for i in n.input}
    kept = [t for t in g.initializer if t.name in used or t.name in {v.name for v in g.input}]
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    g.initializer.extend(kept + made)
    # The light models use IR version 3, where every initializer is also a graph input.
    g.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in made)
    onnx.save(model, str(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="light_vgg19", help="a light_* model of the ONNX suite")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = with_real_weights(LIGHT / f"{args.model}.onnx", Path(tmp) / f"{args.model.removeprefix('light_')}.onnx")
        report(model, [], args.repeats)


if __name__ == "__main__":
    main()
