"""The input a model expects, from where the model comes from; the user's ``InputSpec`` overrides it.

- our CIFAR architectures: the data's own size (folder images and digits at 32 px) and the
  dataset's statistics, as the product always did;
- torchvision classification models: their default weights' evaluation transform (e.g. resize
  256, centre crop 224, ImageNet statistics; Inception 342/299; each EfficientNet its own), read
  from the weights enum, which is local metadata: nothing is downloaded;
- timm models: their ``pretrained_cfg`` (input size, crop_pct, interpolation, mean, std);
- ONNX graphs: their input's static H×W (a graph with dynamic H/W is refused: it is converted at
  one size, so it must be exported at that size).

A size the network cannot take (a feature map shrinks to nothing, a ViT fixed at 224) is found
by running the model on the ``meta`` device, which allocates nothing.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import replace
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.transforms._presets import ImageClassification

from autoprune.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from autoprune.models.onnx_graph import input_dims
from autoprune.models.registry import ARCHS, TIMM_PREFIX, _timm, _timm_names, _torchvision_names
from autoprune.spec import ONNX_PREFIX, InputSpec, SpecError

CROP_PCT = 0.875  # timm's default: resize side = crop / crop_pct


def model_defaults(arch: str) -> Preprocess:
    """What ``arch`` was trained on, before the user's overrides (see the module's docstring)."""
    if arch.startswith(ONNX_PREFIX):
        _, height, width = input_dims(arch.removeprefix(ONNX_PREFIX))
        size = (height, width) if height is not None and width is not None else None
        return Preprocess(size=size, source="onnx graph input")
    if arch in ARCHS:
        return Preprocess(source="cifar architecture: the data's size (folders 32 px), dataset statistics")
    if arch in _torchvision_names():
        return _torchvision(arch)
    name = arch.removeprefix(TIMM_PREFIX)
    if _timm() is not None and name in _timm_names():
        return _timm_cfg(name)
    return Preprocess(source="unknown architecture")


def _statistics(mean: Any, std: Any) -> dict[str, Any]:
    mean, std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    if mean == IMAGENET_MEAN and std == IMAGENET_STD:
        return {"normalize": "imagenet", "mean": None, "std": None}
    return {"normalize": "given", "mean": mean, "std": std}


@functools.cache
def _torchvision(arch: str) -> Preprocess:
    """The default weights' ``transforms`` preset, instantiated (no download: weights are not touched)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
        preset = weights.transforms()
    except (ValueError, AttributeError, KeyError, TypeError):
        preset = None
    if not isinstance(preset, ImageClassification):
        return Preprocess(
            size=(224, 224), crop="center", resize=256, normalize="imagenet", source="torchvision (no weights preset)"
        )
    crop, resize = int(preset.crop_size[0]), int(preset.resize_size[0])
    return Preprocess(
        size=(crop, crop), crop="center", resize=resize, interpolation=preset.interpolation.value,
        **_statistics(preset.mean, preset.std), source=f"torchvision {weights}",
    )  # fmt: skip


def _timm_cfg(name: str) -> Preprocess:
    """timm's ``pretrained_cfg`` for ``name`` (read without creating the model or downloading)."""
    timm = _timm()
    assert timm is not None
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return Preprocess(size=(224, 224), crop="center", resize=256, normalize="imagenet", source="timm (no cfg)")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    _, height, width = cfg.get("input_size", (3, 224, 224))
    crop_pct = float(cfg.get("crop_pct") or CROP_PCT)
    interpolation = cfg.get("interpolation", "bilinear")
    return Preprocess(
        size=(int(height), int(width)), crop="center", resize=int(max(height, width) / crop_pct),
        interpolation=interpolation if interpolation in ("bilinear", "bicubic", "nearest") else "bilinear",
        **_statistics(cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)), source=f"timm {name}",
    )  # fmt: skip


def model_channels(arch: str) -> int | None:
    """The input channels ``arch`` fixes (an ONNX graph's; torchvision's 3), or None when the data decides."""
    if arch.startswith(ONNX_PREFIX):
        return input_dims(arch.removeprefix(ONNX_PREFIX))[0]
    return 3 if arch in _torchvision_names() and arch not in ARCHS else None


def resolve_input(arch: str, given: InputSpec) -> Preprocess:
    """The model's defaults with the user's fields over them; conflicts with the model are SpecErrors."""
    base = model_defaults(arch)
    if arch.startswith(ONNX_PREFIX):
        _check_onnx(arch, base, given)
    size = given.size or base.size
    crop = given.crop or base.crop
    resize = given.resize if crop == "center" else None
    if given.resize is not None and crop != "center":
        raise SpecError("input.resize is the shorter side before a centre crop: give it with --crop center")
    if crop == "center" and size is None:
        raise SpecError("a centre crop needs an input size: give --input-size")
    if crop == "center" and resize is None:
        assert size is not None
        ratio = base.resize / max(base.size) if base.resize and base.size else 1 / CROP_PCT
        resize = round(max(size) * ratio)  # the model's own resize/crop ratio, at the new size
    stats: dict[str, Any] = {}
    if given.mean is not None:
        stats = {"normalize": "given", "mean": given.mean, "std": given.std}
    elif given.normalize is not None:
        stats = {"normalize": given.normalize, "mean": None, "std": None}
    channels = model_channels(arch)
    mean = stats.get("mean", base.mean)
    if channels is not None and mean is not None and len(mean) != channels:
        raise SpecError(
            f"input.mean and input.std have {len(mean)} values but {arch} takes {channels}-channel inputs: "
            f"give {channels} values each"
        )
    interpolation = given.interpolation or base.interpolation
    source = base.source + (" (overridden)" if given.model_fields_set else "")
    return replace(base, size=size, crop=crop, resize=resize, interpolation=interpolation, source=source, **stats)


def _check_onnx(arch: str, base: Preprocess, given: InputSpec) -> None:
    """An ONNX graph's H×W is part of the graph: a dynamic one is refused, a static one cannot change."""
    name = arch.removeprefix(ONNX_PREFIX)
    if base.size is None:
        asked = f" (--input-size {given.size[0]}x{given.size[1]} cannot fix it here)" if given.size else ""
        raise SpecError(
            f"the ONNX graph {name} has a dynamic input height/width{asked}; autoprune converts graphs of a fixed "
            "size: export it with a static H and W, at the size it was trained at (a dynamic batch is fine)"
        )
    if given.size is not None and given.size != base.size:
        h, w = base.size
        raise SpecError(
            f"the ONNX graph {name} takes {h}x{w} inputs (fixed in the graph), not --input-size "
            f"{given.size[0]}x{given.size[1]}: leave --input-size out or export the model at that size"
        )


def check_input_size(model: nn.Module, shape: tuple[int, ...], arch: str) -> None:
    """Refuse an input size the network cannot take, found by a forward pass on the ``meta`` device."""
    try:
        probe = copy.deepcopy(model).to("meta").eval()
        with torch.no_grad():
            probe(torch.empty(1, *shape, device="meta"))
        return
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
    except Exception:  # a model that does not run on meta tensors at all: nothing learnt here
        return
    height, width = shape[1:]
    raise SpecError(
        f"{arch} cannot take {height}x{width} inputs ({reason}); give an --input-size it takes "
        "(larger for a deep net; the size it was trained at)"
    )
