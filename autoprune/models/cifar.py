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

MobileNetV2 uses the usual CIFAR strides (kuangliu/pytorch-cifar's): stride 1 in the stem and in
the 24-wide stage, so a 32×32 input ends at 4×4 instead of 1×1. The blocks are Sandler et al.'s
inverted residuals as torchvision builds them (1×1 expand → BN → ReLU6 → 3×3 depthwise → BN →
ReLU6 → 1×1 linear projection → BN; identity residual only when the stride is 1 and the width is
unchanged; no expansion conv when the factor is 1), with the ImageNet widths (32, 16, 24, 32, 64,
96, 160, 320, 1280). kuangliu's version differs there: ReLU, a 1×1 projection shortcut where the
width changes, an expansion conv in the first block. Global average pooling (not a fixed 4×4
pool) lets smaller inputs run. At 32×32 with 10 classes: 87.98 M conv + linear MACs, 2.24 M
params (2,236,682).
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


# (expansion factor, output width, blocks, stride of the first block); ImageNet's second stage has
# stride 2, the CIFAR variant 1 (as does its stem), so 32×32 inputs end at 4×4.
MOBILENETV2_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1),
)  # fmt: skip


def _conv_bn(
    in_planes: int, planes: int, kernel: int, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_planes, planes, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(planes),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=False))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """Expand (1×1) → depthwise 3×3 → linear projection (1×1); identity residual when shapes match."""

    def __init__(self, in_planes: int, planes: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_planes * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(in_planes, hidden, 1))
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, planes, 1, act=False)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and in_planes == planes

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return x + out if self.residual else out


class CifarMobileNetV2(nn.Module):
    """MobileNetV2 for 32×32 inputs (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn(in_channels, 32, 3)]
        width = 32
        for expansion, planes, blocks, stride in MOBILENETV2_CFG:
            for i in range(blocks):
                layers.append(InvertedResidual(width, planes, stride if i == 0 else 1, expansion))
                width = planes
        layers.append(_conv_bn(width, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        _init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def cifar_mobilenetv2(num_classes: int = 10, in_channels: int = 3) -> CifarMobileNetV2:
    return CifarMobileNetV2(num_classes, in_channels)
