"""Tiny architectures that exercise the couplings surgery must handle (concat, group conv)."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(c_in: int, c_out: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, k, padding=k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()
    )


class TinyDenseNet(nn.Module):
    """DenseNet-style: each layer's output is concatenated to its input."""

    def __init__(self, num_classes: int = 10, growth: int = 6) -> None:
        super().__init__()
        self.stem = conv_bn(3, 8)
        self.layer1 = conv_bn(8, growth)
        self.layer2 = conv_bn(8 + growth, growth)
        self.transition = conv_bn(8 + 2 * growth, 16, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([x, self.layer1(x)], 1)
        x = torch.cat([x, self.layer2(x)], 1)
        return self.fc(self.pool(self.transition(x)).flatten(1))


class TinyResNeXt(nn.Module):
    """ResNeXt-style bottleneck: 1x1 → grouped 3x3 (4 groups) → 1x1, residual add."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.reduce = conv_bn(16, 32, k=1)
        self.grouped = conv_bn(32, 32, groups=4)
        self.expand = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.relu(x + self.expand(self.grouped(self.reduce(x))))
        return self.fc(self.pool(x).flatten(1))


class FoldNet(nn.Module):
    """Folds channel pairs with a reshape: torch-pruning maps the producer's channels wrongly."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.a = conv_bn(3, 8)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.c = conv_bn(4, 8, k=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b(self.a(x))
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).sum(1)
        return self.fc(self.pool(self.c(x)).flatten(1))
