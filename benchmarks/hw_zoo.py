"""ResNet-18-, MobileNetV3-small- and EfficientNet-B0-shaped CNNs built with torch.nn (no torchvision).

Seeded random weights; BatchNorm running statistics are measured on smooth random images in train
mode (cumulative average), so eval-mode activations have the scale of a trained net's, not a
degenerate one. ``export(name, path, size)`` writes the ONNX file (BatchNorm folded by the exporter).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

try:
    import torch
    from torch import nn
except ModuleNotFoundError as e:  # pragma: no cover - the benchmark needs torch
    raise SystemExit("this benchmark builds its models with torch: pip install torch") from e


def images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` smooth random RGB images (N, 3, size, size), ImageNet-normalised scale: low-pass filtered noise
    at a few scales, so neighbouring pixels correlate as in photographs."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, 3, size, size), np.float32)
    for scale in (4, 16, size // 4):
        coarse = rng.standard_normal((n, 3, max(2, size // scale), max(2, size // scale))).astype(np.float32)
        t = torch.nn.functional.interpolate(torch.from_numpy(coarse), size=(size, size), mode="bilinear",
                                            align_corners=False)
        out += t.numpy()
    out += 0.1 * rng.standard_normal(out.shape).astype(np.float32)
    out -= out.mean(axis=(1, 2, 3), keepdims=True)
    out /= out.std(axis=(1, 2, 3), keepdims=True)
    return out


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, momentum=None)  # cumulative running statistics


def _cbr(cin: int, cout: int, k: int, s: int, act: Callable[[], nn.Module] | None, groups: int = 1) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), _bn(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _Basic(nn.Module):
    def __init__(self, cin: int, cout: int, s: int) -> None:
        super().__init__()
        self.a = _cbr(cin, cout, 3, s, nn.ReLU)
        self.b = _cbr(cout, cout, 3, 1, None)
        self.down = _cbr(cin, cout, 1, s, None) if s != 1 or cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.b(self.a(x)) + self.down(x))


def resnet18(classes: int = 1000) -> nn.Module:
    layers: list[nn.Module] = [_cbr(3, 64, 7, 2, nn.ReLU), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, s in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [_Basic(cin, cout, s), _Basic(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, classes)]
    return nn.Sequential(*layers)


def _div8(v: float) -> int:
    return max(8, int(v + 4) // 8 * 8)


class _SE(nn.Module):
    def __init__(self, c: int, squeeze: int, act: Callable[[], nn.Module], gate: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.fc1, self.act = nn.Conv2d(c, squeeze, 1), act()
        self.fc2, self.gate = nn.Conv2d(squeeze, c, 1), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class _Inverted(nn.Module):
    """MobileNetV3 bneck / EfficientNet MBConv: expand 1x1, depthwise kxk, squeeze-excitation, project 1x1."""

    def __init__(self, cin: int, k: int, exp: int, cout: int, s: int, act: Callable[[], nn.Module],
                 se: nn.Module | None) -> None:
        super().__init__()
        self.expand = _cbr(cin, exp, 1, 1, act) if exp != cin else nn.Identity()
        self.dw = _cbr(exp, exp, k, s, act, groups=exp)
        self.se = se if se is not None else nn.Identity()
        self.project = _cbr(exp, cout, 1, 1, None)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.dw(self.expand(x))))
        return x + y if self.residual else y


def mobilenet_v3_small(classes: int = 1000) -> nn.Module:
    re, hs = nn.ReLU, nn.Hardswish
    cfg = [(16, 3, 16, 16, True, re, 2), (16, 3, 72, 24, False, re, 2), (24, 3, 88, 24, False, re, 1),
           (24, 5, 96, 40, True, hs, 2), (40, 5, 240, 40, True, hs, 1), (40, 5, 240, 40, True, hs, 1),
           (40, 5, 120, 48, True, hs, 1), (48, 5, 144, 48, True, hs, 1), (48, 5, 288, 96, True, hs, 2),
           (96, 5, 576, 96, True, hs, 1), (96, 5, 576, 96, True, hs, 1)]
    layers: list[nn.Module] = [_cbr(3, 16, 3, 2, hs)]
    for cin, k, exp, cout, se, act, s in cfg:
        layers.append(_Inverted(cin, k, exp, cout, s, act, _SE(exp, _div8(exp // 4), nn.ReLU, nn.Hardsigmoid)
                                if se else None))
    layers += [_cbr(96, 576, 1, 1, hs), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 1024), hs(),
               nn.Linear(1024, classes)]
    return nn.Sequential(*layers)


def efficientnet_b0(classes: int = 1000) -> nn.Module:
    cfg = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
           (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    layers: list[nn.Module] = [_cbr(3, 32, 3, 2, nn.SiLU)]
    for ratio, k, s, cin, cout, n in cfg:
        for i in range(n):
            c = cin if i == 0 else cout
            exp = c * ratio
            layers.append(_Inverted(c, k, exp, cout, s if i == 0 else 1, nn.SiLU,
                                    _SE(exp, max(1, c // 4), nn.SiLU, nn.Sigmoid)))
    layers += [_cbr(320, 1280, 1, 1, nn.SiLU), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, classes)]
    return nn.Sequential(*layers)


MODELS: dict[str, Callable[[], nn.Module]] = {"resnet18": resnet18, "mobilenet_v3_small": mobilenet_v3_small,
                                              "efficientnet_b0": efficientnet_b0}


def build(name: str, size: int, seed: int = 0, bn_batches: int = 4, bn_batch: int = 16) -> nn.Module:
    """The named net with seeded weights, random BatchNorm affine parameters and measured running statistics."""
    torch.manual_seed(seed)
    net = MODELS[name]()
    g = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # trained nets have spread gains and shifts
            with torch.no_grad():
                m.weight.copy_(torch.empty(m.num_features).uniform_(0.5, 1.5, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.num_features, generator=g))
    net.train()
    with torch.no_grad():
        for i in range(bn_batches):
            net(torch.from_numpy(images(bn_batch, size, seed=1000 + seed * 100 + i)))
    return net.eval()


def export(name: str, path: Path, size: int, seed: int = 0) -> Path:
    """Build the named net and export it to ONNX (batch dimension symbolic)."""
    net = build(name, size, seed)
    x = torch.from_numpy(images(1, size, seed=7))
    torch.onnx.export(net, (x,), str(path), input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    return path
