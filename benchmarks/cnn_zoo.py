"""Depthwise-separable CNNs built from torch.nn (torchvision's layer shapes, random seeded weights).

EfficientNet-B0 and MobileNetV3-small as torchvision defines them (stem, MBConv /
inverted-residual blocks with squeeze-excitation, head), written out here because
torchvision is not a dependency. BatchNorm carries random running statistics so
that the exported (folded) weights are not trivially scaled. ``export`` writes
one to ONNX with the TorchScript exporter (BatchNorm folded into the convs).

    python benchmarks/cnn_zoo.py OUT_DIR     # writes efficientnet_b0.onnx, mobilenetv3_small.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _cba(c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: type[nn.Module] | None = nn.ReLU
         ) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(c_out)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class _SE(nn.Module):
    def __init__(self, c: int, squeeze: int, act: type[nn.Module], gate: type[nn.Module]) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
        self.act, self.gate = act(), gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = nn.functional.adaptive_avg_pool2d(x, 1)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


class _Block(nn.Module):
    """Inverted residual: 1x1 expand, depthwise k x k, optional SE, 1x1 project; residual when shapes allow."""

    def __init__(self, c_in: int, k: int, expanded: int, c_out: int, se: _SE | None, act: type[nn.Module],
                 stride: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(_cba(c_in, expanded, 1, act=act))
        layers.append(_cba(expanded, expanded, k, stride, groups=expanded, act=act))
        if se is not None:
            layers.append(se)
        layers.append(_cba(expanded, c_out, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v3_small(num_classes: int = 1000) -> nn.Module:
    """torchvision's mobilenet_v3_small layer for layer (11 inverted-residual blocks, 2.5 M weights)."""
    cfg = [(16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2), (24, 3, 88, 24, False, "RE", 1),
           (24, 5, 96, 40, True, "HS", 2), (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
           (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1), (48, 5, 288, 96, True, "HS", 2),
           (96, 5, 576, 96, True, "HS", 1), (96, 5, 576, 96, True, "HS", 1)]
    layers: list[nn.Module] = [_cba(3, 16, 3, 2, act=nn.Hardswish)]
    for c_in, k, exp, c_out, se, a, s in cfg:
        act = nn.ReLU if a == "RE" else nn.Hardswish
        layers.append(_Block(c_in, k, exp, c_out, _SE(exp, _make_divisible(exp // 4), nn.ReLU, nn.Hardsigmoid)
                             if se else None, act, s))
    layers.append(_cba(96, 576, 1, act=nn.Hardswish))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(576, 1024), nn.Hardswish(),
                         nn.Dropout(0.2), nn.Linear(1024, num_classes))


def efficientnet_b0(num_classes: int = 1000) -> nn.Module:
    """torchvision's efficientnet_b0 layer for layer (16 MBConv blocks, 5.3 M weights)."""
    stages = [(1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
              (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1)]
    layers: list[nn.Module] = [_cba(3, 32, 3, 2, act=nn.SiLU)]
    for ratio, k, stride, c_in, c_out, n in stages:
        for i in range(n):
            cin = c_in if i == 0 else c_out
            exp = cin * ratio
            layers.append(_Block(cin, k, exp, c_out, _SE(exp, max(1, cin // 4), nn.SiLU, nn.Sigmoid), nn.SiLU,
                                 stride if i == 0 else 1))
    layers.append(_cba(320, 1280, 1, act=nn.SiLU))
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(1280, num_classes))


MODELS = {"efficientnet_b0": efficientnet_b0, "mobilenetv3_small": mobilenet_v3_small}


def build(name: str, seed: int = 0) -> nn.Module:
    """The named net with seeded random weights and BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = MODELS[name]()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return net.eval()


def export(name: str, path: Path, size: int = 224, seed: int = 0) -> Path:
    """Write the named net to ``path`` as ONNX (opset 17, batch 1, size x size RGB input)."""
    net = build(name, seed)
    x = torch.zeros(1, 3, size, size)
    torch.onnx.export(net, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"],
                      output_names=["logits"])
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    for n in MODELS:
        print(export(n, out / f"{n}.onnx"))
