"""How images become a model's input: size, resize and crop, interpolation, normalisation.

One :class:`Preprocess` drives the data loaders (folder images through PIL, npz and digits
arrays as uint8 tensors) and the inference transform a pruned model is shipped with, so the
model is fed at serving time what it was scored, cut, fine-tuned and timed on. Its defaults
come from the model (``autoprune.models.preprocess``); the user's ``InputSpec`` overrides them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

from autoprune.errors import DataError
from autoprune.spec import SpecError

Interpolation = Literal["bilinear", "bicubic", "nearest"]
Normalize = Literal["dataset", "imagenet", "none", "given"]
Crop = Literal["center", "none"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FOLDER_SIDE = 32  # folder images and digits when neither the model nor the user sets a size
PIL_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}
MODES = {
    "bilinear": InterpolationMode.BILINEAR,
    "bicubic": InterpolationMode.BICUBIC,
    "nearest": InterpolationMode.NEAREST,
}
RESIZE_CHUNK = 512  # images resized at once: bounds the float copies a resize makes


@dataclass(frozen=True, kw_only=True)
class Preprocess:
    """The input a model takes and how images are brought to it.

    ``size`` is (H, W); ``None`` keeps an npz dataset's own size (folders and digits: 32 px).
    ``crop="center"`` resizes the shorter side to ``resize`` and crops the centre to ``size``
    (torchvision's evaluation transform); ``crop="none"`` resizes whole images to ``size``
    (what CIFAR-style models get). ``mean``/``std`` are ``None`` for ``normalize="dataset"``
    until the data is loaded. ``source`` says where the defaults came from.
    """

    size: tuple[int, int] | None = None
    crop: Crop = "none"
    resize: int | None = None
    interpolation: Interpolation = "bilinear"
    normalize: Normalize = "dataset"
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    source: str = "data"

    def __post_init__(self) -> None:
        if self.crop == "center" and self.size is not None and (self.resize or 0) < max(self.size):
            raise SpecError(
                f"the resize side {self.resize} is smaller than the {_hw(self.size)} centre crop; "
                "set --resize to at least the input size"
            )

    def with_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocess:
        return replace(self, mean=tuple(mean), std=tuple(std))

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": list(self.size) if self.size is not None else None,
            "crop": self.crop,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "normalize": self.normalize,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocess:
        size = data.get("size")
        return cls(
            size=(int(size[0]), int(size[1])) if size is not None else None,
            crop=data.get("crop", "none"),
            resize=int(data["resize"]) if data.get("resize") is not None else None,
            interpolation=data.get("interpolation", "bilinear"),
            normalize=data.get("normalize", "dataset"),
            mean=tuple(float(v) for v in data["mean"]) if data.get("mean") is not None else None,
            std=tuple(float(v) for v in data["std"]) if data.get("std") is not None else None,
            source=str(data.get("source", "data")),
        )

    def transform(self) -> v2.Compose:
        """The inference transform: a PIL image or uint8 tensor → the normalised float tensor the model takes."""
        if self.size is None or self.mean is None or self.std is None:
            raise DataError("the input spec is not resolved yet (size and statistics come with the data)")
        mode = MODES[self.interpolation]
        steps: list[Any] = [v2.ToImage()]
        if len(self.mean) == 3:
            steps.append(v2.RGB())
        if self.crop == "center":
            steps += [v2.Resize(self.resize, interpolation=mode, antialias=True), v2.CenterCrop(list(self.size))]
        else:
            steps.append(v2.Resize(list(self.size), interpolation=mode, antialias=True))
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(self.mean), list(self.std))]
        return v2.Compose(steps)


DEFAULT_PREPROCESS = Preprocess()  # the data's own size (folders and digits 32 px), its own statistics


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def too_small(width: int, height: int, pre: Preprocess) -> bool:
    """Whether an image must be upsampled to fill the centre crop: refused, not invented (docs/cli.md)."""
    return pre.crop == "center" and pre.size is not None and (height < pre.size[0] or width < pre.size[1])


def small_image_error(what: str, width: int, height: int, pre: Preprocess) -> DataError:
    assert pre.size is not None
    return DataError(
        f"{what} is {width}x{height} pixels (WxH), smaller than the model's {_hw(pre.size)} (HxW) input crop; "
        f"use --input-size {min(width, height)} or smaller (or --crop none to stretch images to the size)"
    )


def shorter_side_size(width: int, height: int, side: int) -> tuple[int, int]:
    """(W, H) with the shorter side ``side``, as torchvision's ``Resize(int)`` computes it."""
    if width <= height:
        return side, int(side * height / width)
    return int(side * width / height), side


def pil_image(img: Image.Image, pre: Preprocess) -> Image.Image:
    """A decoded RGB image brought to the input size (folder datasets)."""
    height, width = pre.size or (FOLDER_SIDE, FOLDER_SIDE)
    resample = PIL_RESAMPLE[pre.interpolation]
    if pre.crop == "none":
        return img.resize((width, height), resample)
    assert pre.resize is not None
    img = img.resize(shorter_side_size(img.width, img.height, pre.resize), resample)
    top = int(round((img.height - height) / 2.0))
    left = int(round((img.width - width) / 2.0))
    return img.crop((left, top, left + width, top + height))


def resize_tensor(x: torch.Tensor, pre: Preprocess, what: str) -> torch.Tensor:
    """uint8 NCHW images at the input size (npz datasets), in chunks; unchanged when they are at it."""
    if pre.size is None or tuple(x.shape[2:]) == pre.size:
        return x
    height, width = x.shape[2], x.shape[3]
    if too_small(width, height, pre):
        raise small_image_error(what, width, height, pre)
    mode = MODES[pre.interpolation]
    out = []
    for chunk in x.split(RESIZE_CHUNK):
        if pre.crop == "center":
            assert pre.resize is not None
            chunk = TF.resize(chunk, [pre.resize], interpolation=mode, antialias=True)
            chunk = TF.center_crop(chunk, list(pre.size))
        else:
            chunk = TF.resize(chunk, list(pre.size), interpolation=mode, antialias=True)
        out.append(chunk.contiguous())
    return torch.cat(out)


def statistics(pre: Preprocess, dataset_mean: tuple[float, ...], dataset_std: tuple[float, ...]) -> Preprocess:
    """``pre`` with the mean/std images are normalised with: the dataset's, ImageNet's, none, or the given ones."""
    channels = len(dataset_mean)
    if pre.normalize == "dataset":
        return pre.with_stats(dataset_mean, dataset_std)
    if pre.normalize == "none":
        return pre.with_stats((0.0,) * channels, (1.0,) * channels)
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if pre.normalize == "imagenet" else (pre.mean, pre.std)
    assert mean is not None and std is not None
    if len(mean) != channels:
        given = "ImageNet's statistics" if pre.normalize == "imagenet" else "input.mean and input.std"
        raise SpecError(
            f"{given} have {len(mean)} values but the model's inputs have {channels} channels: give --mean and "
            f"--std with {channels} values each, or --normalize dataset"
        )
    return pre.with_stats(mean, std)
