"""Architecture names → untrained models: our CIFAR nets, then torchvision, then (optional) timm.

Models are always built with random weights (nothing is downloaded); callers seed torch if they
need reproducible initialisation and load trained weights with :func:`load_weights`.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType

import torchvision
from torch import nn

from autoprune.errors import ModelIntakeError, UnknownNameError
from autoprune.models import cifar
from autoprune.models.onnx_graph import convert_onnx
from autoprune.registry import Registry, close_matches
from autoprune.spec import ONNX_PREFIX

ARCHS = Registry[Callable[..., nn.Module]]("architecture")
for _builder in (
    cifar.resnet20,
    cifar.resnet32,
    cifar.resnet56,
    cifar.resnet110,
    cifar.cifar_vgg16,
    cifar.cifar_vgg16_bn,
    cifar.cifar_mobilenetv2,
):
    ARCHS.register(_builder.__name__)(_builder)

TIMM_PREFIX = "timm:"


@functools.cache
def _torchvision_names() -> tuple[str, ...]:
    return tuple(torchvision.models.list_models(module=torchvision.models))


@functools.cache
def _timm() -> ModuleType | None:
    """timm when it is installed; it is optional."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        return None


@functools.cache
def _timm_names() -> tuple[str, ...]:
    timm = _timm()
    return tuple(timm.list_models()) if timm is not None else ()


def list_archs() -> list[str]:
    """Every name :func:`create_model` accepts (timm names only when timm is installed)."""
    return sorted({*ARCHS.names(), *_torchvision_names(), *_timm_names()})


def create_model(arch: str, *, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
    """Build ``arch`` with random weights; CIFAR names shadow torchvision, which shadows timm.

    ``onnx:PATH`` converts that ONNX graph instead, with the graph's own weights; its classes and
    input channels are fixed by the graph, so ``num_classes``/``in_channels`` are only checked
    against it. For the other architectures they default to 10 and 3.
    """
    if arch.startswith(ONNX_PREFIX):
        return convert_onnx(arch.removeprefix(ONNX_PREFIX), num_classes=num_classes, in_channels=in_channels)
    num_classes = 10 if num_classes is None else num_classes
    in_channels = 3 if in_channels is None else in_channels
    if arch in ARCHS:
        return _build(arch, ARCHS.get(arch), num_classes=num_classes, in_channels=in_channels)
    if arch in _torchvision_names():
        if in_channels != 3:
            raise ModelIntakeError(f"torchvision model {arch!r} supports only 3-channel inputs, got {in_channels}")
        return _build(arch, torchvision.models.get_model, arch, weights=None, num_classes=num_classes)
    timm_name = arch.removeprefix(TIMM_PREFIX)
    if arch.startswith(TIMM_PREFIX) and _timm() is None:
        raise ModelIntakeError(f"{arch!r} needs the optional package timm, which is not installed")
    if timm_name in _timm_names():
        timm = _timm()
        assert timm is not None
        return _build(
            arch,
            timm.create_model,
            timm_name,
            pretrained=False,
            num_classes=num_classes,
            in_chans=in_channels,
        )
    raise UnknownNameError(f"unknown architecture {arch!r}; did you mean: {close_matches(arch, list_archs())}")


def _build(arch: str, builder: Callable[..., nn.Module], *args: object, **kwargs: object) -> nn.Module:
    """Call a builder, turning its failures (bad num_classes, ...) into ModelIntakeError."""
    try:
        return builder(*args, **kwargs)
    except Exception as exc:
        raise ModelIntakeError(f"could not build {arch!r}: {exc}") from exc
