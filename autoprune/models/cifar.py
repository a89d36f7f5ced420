"""CIFAR-size networks used as pruning benchmarks (32×32 inputs).

ResNets follow He et al. 2016 §4.2: a 3×3 stem conv (16) + BN + ReLU, three stages of
``n = (depth - 2) / 6`` BasicBlocks of widths 16/32/64, global average pooling and one fc.
Where a block changes shape we use the projection shortcut (option B: 1×1 conv, stride 2, + BN)
instead of the paper's option A (strided identity zero-padded with extra channels). Option A's
padding ties output channels to fixed zero slots, so a dependency graph cannot remove channels
across it; option B's 1×1 conv is an ordinary prunable layer. At 32×32 (conv + linear MACs):
ResNet-20 40.81 M MACs / 0.272 M params, ResNet-56 125.75 M MACs / 0.856 M params (option A
would give 125.49 M; the two 1×1 projections add 0.26 M).

VGG-16(-BN) follows the CIFAR variant used by HRank/CHIP: thirteen 3×3 convs with four 2×2 max
pools, a final ``AvgPool2d(2)`` turning the 2×2 map into 1×1, then
``Linear(512, 512) → BN1d → ReLU → Linear(512, num_classes)``. At 32×32 with 10 classes the BN
variant has 313.46 M conv + linear MACs and 14.99 M params (14,987,722); HRank's 313.73 M
FLOPs / 14.98 M additionally count one op per BatchNorm2d output element (0.28 M).
"""

from __future__ import annotations

from torch import Tensor, nn

VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
)  # fmt: skip


def _init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, as torchvision) and unit-scale norms."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3×3 convs with a residual; the shortcut is a 1×1 projection when shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU(inplace=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + identity)


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32×32 inputs (He et al. 2016 §4.2, projection shortcuts)."""

    def __init__(self, depth: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=False)
        self.layer1 = self._stage(16, 16, n, stride=1)
        self.layer2 = self._stage(16, 32, n, stride=2)
        self.layer3 = self._stage(32, 64, n, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        _init_weights(self)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


class CifarVGG(nn.Module):
    """VGG-16 for 32×32 inputs in the HRank/CHIP layout (see the module docstring)."""

    def __init__(self, batch_norm: bool, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.features = self._features(in_channels, batch_norm)
        self.avgpool = nn.AvgPool2d(2)
        head: list[nn.Module] = [nn.Linear(512, 512)]
        if batch_norm:
            head.append(nn.BatchNorm1d(512))
        head += [nn.ReLU(inplace=False), nn.Linear(512, num_classes)]
        self.classifier = nn.Sequential(*head)
        _init_weights(self)

    @staticmethod
    def _features(in_channels: int, batch_norm: bool) -> nn.Sequential:
        layers: list[nn.Module] = []
        for v in VGG16_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            assert isinstance(v, int)
            layers.append(nn.Conv2d(in_channels, v, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=False))
            in_channels = v
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels)


def resnet110(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels)


def cifar_vgg16(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(False, num_classes, in_channels)


def cifar_vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> CifarVGG:
    return CifarVGG(True, num_classes, in_channels)
