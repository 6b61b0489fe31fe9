"""End to end on models from torch.onnx (dynamo); skl2onnx exports are in test_sklearn_export.py.

torch is not in the test extras (a plain install can pull a multi-GB CUDA build): .ci/run
installs the CPU build first, and without torch this module is skipped with that reason.

Each exported model is verified in the ideal simulator against onnxruntime at
a relative error of 1e-5, and the mapping is checked: every Linear and Conv
layer is one analog node holding that layer's weights, a Relu that is the only
reader of such a layer's output is fused into it (runs at the tile outputs),
and what is left on the host (pools, norms, softmax, attention products,
ai.onnx.ml ops) is there because it has no constant weight matrix.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from anac.api import compile_model, verify
from helpers import assert_verified, check_placement, fused_activations, host_nodes, host_ops, slice_blocks

torch = pytest.importorskip(
    "torch", reason="torch is not installed (not in the test extras; .ci/run installs the CPU build: "
    "pip install torch==2.13.0)")
nn = torch.nn

TOL = 1e-5
_MVM_OPS = ("Gemm", "MatMul", "Conv")


# ---------------------------------------------------------------- helpers


def _export(module: nn.Module, x: torch.Tensor, path: Path, **kw) -> Path:  # type: ignore[no-untyped-def]
    module.eval()
    torch.onnx.export(module, (x,), str(path), dynamo=True, external_data=False, verbose=False, **kw)
    return path


def _layer_matrices(module: nn.Module) -> dict[str, list[np.ndarray]]:
    """Per Linear / Conv layer, the K x N crossbar matrices it should become (one per conv group)."""
    out = {}
    for name, m in module.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, nn.Linear):
            out[name] = [w.detach().numpy().T]
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
            w = w.detach().numpy()
            n_g = w.shape[0] // m.groups
            out[name] = [w[g * n_g:(g + 1) * n_g].reshape(n_g, -1).T for g in range(m.groups)]
    return out


def _assert_layers_on_crossbars(prog, module: nn.Module, folded: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
    """One analog node per Linear/Conv layer, each holding that layer's matrices (shape, and values unless
    ``folded``: layers whose weights the exporter merged with a following BatchNorm)."""
    layers = _layer_matrices(module)
    assert len(prog.mvms) == len(layers), f"analog nodes {sorted(prog.mvms)} for layers {sorted(layers)}"
    node_mats = {n: _group_blocks(prog, mvm) for n, mvm in prog.mvms.items()}
    shapes = Counter(tuple(w.shape for w in mats) for mats in node_mats.values())
    assert shapes == Counter(tuple(w.shape for w in mats) for mats in layers.values())
    for layer, mats in layers.items():
        if layer in folded:
            continue
        hits = [n for n, got in node_mats.items() if len(got) == len(mats) and all(
            g.shape == w.shape and np.allclose(g, w, rtol=1e-6, atol=0) for g, w in zip(got, mats, strict=True))]
        assert len(hits) == 1, f"layer {layer}: its weights are in analog nodes {hits}"
    assert prog.analog_weights == sum(w.size for mats in layers.values() for w in mats)
    check_placement(prog)


def _group_blocks(prog, mvm) -> list[np.ndarray]:  # type: ignore[no-untyped-def]
    """A layer's matrices, one per conv group: the diagonal blocks of groups packed block-diagonally."""
    out = []
    for mid in mvm.matrices:
        w = prog.matrices[mid].weights
        k, n = mvm.params.get("block", w.shape)
        out += [w[i * k:(i + 1) * k, i * n:(i + 1) * n] for i in range(w.shape[1] // n)]
    return out


def _relus_after_mvms(prog) -> set[str]:  # type: ignore[no-untyped-def]
    """Relu nodes that read an analog node's output that nothing else reads (and is not a graph output)."""
    users = prog.graph.consumers()
    producers = prog.graph.producers()
    outputs = {t.name for t in prog.outputs}
    return {n.name for n in prog.graph.nodes if n.op_type == "Relu" and (src := producers.get(n.inputs[0]))
            and src.name in prog.mvms and len(users[n.inputs[0]]) == 1 and n.inputs[0] not in outputs}


def _mappable_on_host(prog) -> list[str]:  # type: ignore[no-untyped-def]
    """Host Gemm/MatMul/Conv nodes that have a constant weight operand: these belong on crossbars."""
    consts = prog.graph.constants
    return [n for n in host_nodes(prog) if (node := prog.graph.node(n)).op_type in _MVM_OPS
            and node.domain in ("", "ai.onnx") and any(i in consts for i in node.inputs[:2])]


def _random_batchnorm_stats(module: nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = m.num_features
            m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
            m.running_var.copy_(0.5 + torch.rand(c, generator=g))
            m.weight.data.copy_(1 + 0.1 * torch.randn(c, generator=g))
            m.bias.data.copy_(0.1 * torch.randn(c, generator=g))


# ---------------------------------------------------------------- torch.onnx dynamo


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 600), nn.Linear(600, 520), nn.Linear(520, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(torch.tanh(self.fc2(torch.relu(self.fc1(x)))))


class _CNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 64, 3, padding=1), nn.BatchNorm2d(64)
        self.conv2, self.bn2 = nn.Conv2d(64, 16, 3, stride=2), nn.BatchNorm2d(16)  # K = 576: two crossbars
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class _EncoderBlock(nn.Module):
    """Pre-norm transformer encoder block with hand-written multi-head attention."""

    def __init__(self, d: int = 32, heads: int = 2, ffn: int = 600) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.up, self.down = nn.Linear(d, ffn), nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        dh = d // self.heads
        y = self.ln1(x)
        q, k, v = (p(y).reshape(b, t, self.heads, dh).transpose(1, 2) for p in (self.q, self.k, self.v))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dh), dim=-1) @ v
        x = x + self.o(att.transpose(1, 2).reshape(b, t, d))
        return x + self.down(nn.functional.gelu(self.up(self.ln2(x))))


class _Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(4, 16, 5, stride=2, padding=2)
        self.conv2 = nn.Conv1d(16, 16, 3, padding=2, dilation=2, groups=16)
        self.conv3 = nn.Conv1d(16, 8, 1)
        self.fc = nn.Linear(8 * 10, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(self.conv3(x), 1))


def test_torch_mlp_with_dynamic_batch(tmp_path):
    torch.manual_seed(0)
    net = _MLP()
    path = _export(net, torch.randn(2, 64), tmp_path / "mlp.onnx",
                   dynamic_shapes=({0: torch.export.Dim("batch")},))
    name = onnx.load(str(path)).graph.input[0].name
    prog = compile_model(path, input_shapes={name: [5, 64]})
    _assert_layers_on_crossbars(prog, net)
    (fc2,) = [n for n, mvm in prog.mvms.items() if prog.matrices[mvm.matrices[0]].shape == (600, 520)]
    assert slice_blocks(prog, fc2) == {(0, 0), (0, 1), (1, 0), (1, 1)}  # 2 x 2 blocks of a 512 x 512 crossbar
    # fc1's Relu is fused: fc2 follows in the next analog stage; only the Tanh is on the host
    relus = {n.name for n in prog.graph.nodes if n.op_type == "Relu"}
    assert len(relus) == 1 and fused_activations(prog) == relus == _relus_after_mvms(prog)
    assert host_ops(prog) == Counter({"Tanh": 1})
    assert [st.kind for st in prog.stages] == ["analog", "analog", "host", "analog"]
    report = verify(path, batch=5)
    assert_verified(report, TOL)
    assert report.outputs[prog.outputs[0].name].shape == [5, 10]


def test_torch_cnn_batchnorm_pools_flatten(tmp_path):
    torch.manual_seed(0)
    net = _CNN()
    _random_batchnorm_stats(net)
    path = _export(net, torch.randn(2, 3, 16, 16), tmp_path / "cnn.onnx")
    prog = compile_model(path)
    # the exporter may fold a BatchNorm into the Conv before it: then only shapes can be compared
    _assert_layers_on_crossbars(prog, net, folded=("conv1", "conv2"))
    # conv3 is depthwise: its 16 groups packed block-diagonally into one matrix
    assert sorted(len(_group_blocks(prog, m)) for m in prog.mvms.values()) == [1, 1, 1, 16]
    assert sorted(len(m.matrices) for m in prog.mvms.values()) == [1, 1, 1, 1]
    assert not _mappable_on_host(prog)
    ops = host_ops(prog)
    # A Relu right after a Conv is fused into it; one after a BatchNorm the exporter kept stays on the host.
    # conv3 has no BatchNorm, so at least its Relu is fused.
    fused = fused_activations(prog)
    assert fused == _relus_after_mvms(prog) and len(fused) >= 1
    assert {prog.graph.node(n).op_type for n in fused} == {"Relu"}
    assert ops["Relu"] == 3 - len(fused) == ops["BatchNormalization"]
    assert ops["MaxPool"] == 1
    assert ops["ReduceMean"] + ops["GlobalAveragePool"] == 1
    assert {"Conv", "Gemm", "MatMul"}.isdisjoint(ops)
    assert_verified(verify(path, seed=1), TOL)


def test_torch_transformer_encoder_block(tmp_path):
    torch.manual_seed(0)
    net = _EncoderBlock()
    path = _export(net, torch.randn(2, 6, 32), tmp_path / "encoder.onnx")
    prog = compile_model(path)
    _assert_layers_on_crossbars(prog, net)
    ops = host_ops(prog)
    # Q K^T and softmax(.) V multiply two activations: the only MatMuls on the host
    assert ops["MatMul"] == 2 and not _mappable_on_host(prog)
    assert ops["Softmax"] == 1 and ops["LayerNormalization"] == 2
    assert ops["Gelu"] == 1 or ops["Erf"] == 1
    assert not fused_activations(prog)  # GELU is no tile-output activation; the Linear biases are host Adds
    kinds = [st.kind for st in prog.stages]
    assert kinds.count("analog") == 4  # {q, k, v} in one stage, then o, up, down
    assert_verified(verify(path, seed=2), TOL)


def test_torch_multihead_attention(tmp_path):
    torch.manual_seed(0)
    net = nn.MultiheadAttention(32, 2, batch_first=True)

    class _SelfAttention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mha = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.mha(x, x, x, need_weights=False)[0]

    path = _export(_SelfAttention(), torch.randn(2, 6, 32), tmp_path / "mha.onnx")
    prog = compile_model(path)
    # the packed Q/K/V input projection (a Parameter, not a Linear) and out_proj
    shapes = sorted(prog.matrices[m].shape for mvm in prog.mvms.values() for m in mvm.matrices)
    assert shapes == [(32, 32), (32, 96)]
    np.testing.assert_array_equal(
        next(prog.matrices[m].weights for mvm in prog.mvms.values() for m in mvm.matrices
             if prog.matrices[m].shape == (32, 96)), net.in_proj_weight.detach().numpy().T)
    assert not _mappable_on_host(prog)
    assert host_ops(prog)["Softmax"] == 1
    assert_verified(verify(path), TOL)


def test_torch_conv1d(tmp_path):
    torch.manual_seed(0)
    net = _Conv1dNet()
    path = _export(net, torch.randn(2, 4, 20), tmp_path / "conv1d.onnx")
    prog = compile_model(path)
    _assert_layers_on_crossbars(prog, net)
    conv = [m for m in prog.mvms.values() if m.kind == "conv"]
    assert len(conv) == 3 and sorted(len(_group_blocks(prog, m)) for m in conv) == [1, 1, 16]
    assert sorted(len(m.matrices) for m in conv) == [1, 1, 1]  # the 16 groups packed into one matrix
    assert {"Conv", "Gemm", "MatMul"}.isdisjoint(host_ops(prog))
    # both Relus directly follow a Conv: fused, none on the host
    relus = {n.name for n in prog.graph.nodes if n.op_type == "Relu"}
    assert len(relus) == 2 and fused_activations(prog) == relus == _relus_after_mvms(prog)
    assert host_ops(prog)["Relu"] == 0
    assert_verified(verify(path, seed=3), TOL)
