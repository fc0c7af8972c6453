"""Network architectures, built from package code only.

A model directory names an architecture and plain JSON parameters; this module maps the name to a builder.
Nothing in a model directory is ever imported or executed, so a model file cannot run code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks.nets import UNet
from torch import nn


class _Block(nn.Module):
    """ResNet basic block (two 3x3 convolutions, batch norm, identity or 1x1 shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """A ResNet-18-like classifier at reduced width and depth for one-channel slices.

    Stem (3x3 stride 2) then four stages ``layer1``..``layer4`` of ``blocks`` basic blocks, the last three
    with stride 2, global average pooling and a linear head. ``layer4`` is the Grad-CAM target, as in ResNet.
    """

    def __init__(self, num_classes: int = 4, in_channels: int = 1, widths: tuple[int, ...] = (16, 32, 64, 128),
                 blocks: int = 1) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"SmallResNet needs four stage widths, got {widths!r}")
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 2, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        stages = []
        cin = widths[0]
        for i, cout in enumerate(widths):
            layers = [_Block(cin if j == 0 else cout, cout, 1 if (i == 0 or j > 0) else 2) for j in range(blocks)]
            stages.append(nn.Sequential(*layers))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(torch.flatten(self.pool(x), 1))


def _unet(**params: Any) -> nn.Module:
    return UNet(**params)


def _small_resnet(**params: Any) -> nn.Module:
    if "widths" in params:
        params["widths"] = tuple(params["widths"])
    return SmallResNet(**params)


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "monai.networks.nets.UNet": _unet,
    "neuronova.SmallResNet": _small_resnet,
}


def build(name: str, params: dict[str, Any]) -> nn.Module:
    """Build the named architecture; raises ValueError for a name the package does not know."""
    try:
        builder = ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; known: {sorted(ARCHITECTURES)}") from None
    return builder(**params)


def unet_bottleneck_name(module: nn.Module) -> str:
    """Name of the deepest block of a MONAI UNet (its coarsest features), the usual Grad-CAM target."""
    name = ""
    for candidate, sub in module.named_modules():
        # MONAI nests each level as model.1.submodule...; the innermost 'submodule' is the bottom block
        if candidate.endswith("submodule") and not any(True for _ in sub.named_children() if _[0] == "submodule"):
            name = candidate
    return name or "model"
