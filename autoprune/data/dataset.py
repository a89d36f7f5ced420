"""The in-memory image dataset every pipeline stage reads."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from autoprune.data.lazy import LazyImages, histograms
from autoprune.data.preprocess import Preprocess
from autoprune.errors import DataError

MIN_STD = 1e-3


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageData:
    """Train and test images kept as uint8 NCHW tensors (4x smaller than float; normalised per batch).

    ``mean``/``std`` are what batches are normalised with: per-channel statistics of ``train_x``
    on the 0–1 scale unless the input spec says otherwise (ImageNet's, given ones); ``std`` is floored at
    ``MIN_STD`` so a constant channel cannot cause a division by zero. ``eq=False`` because tensors
    have no single truth value.
    """

    name: str
    train_x: torch.Tensor | LazyImages  # LazyImages: a folder's files, decoded per batch
    train_y: torch.Tensor
    test_x: torch.Tensor | LazyImages
    test_y: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: Preprocess | None = None  # how the images were made and are normalised (set by load_data)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            _check_split(self.name, split, getattr(self, f"{split}_x"), getattr(self, f"{split}_y"), self.num_classes)
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images are {tuple(self.train_x.shape[1:])} but test images are "
                f"{tuple(self.test_x.shape[1:])} (C,H,W)"
            )
        channels = self.train_x.shape[1]
        if len(self.mean) != channels or len(self.std) != channels:
            raise DataError(f"dataset {self.name!r}: mean/std must have {channels} entries, one per channel")

    @classmethod
    def build(
        cls,
        *,
        name: str,
        train_x: torch.Tensor | LazyImages,
        train_y: torch.Tensor,
        test_x: torch.Tensor | LazyImages,
        test_y: torch.Tensor,
        num_classes: int | None = None,
        stats: bool = True,
    ) -> ImageData:
        """Make an ImageData, deriving mean/std from ``train_x`` and ``num_classes`` from the labels;
        ``stats=False`` leaves mean 0 / std 1 for the caller to set (no pass over images on disk)."""
        train_y, test_y = train_y.to(torch.int64), test_y.to(torch.int64)
        if len(train_y) == 0 or len(test_y) == 0:
            raise DataError(f"dataset {name!r} has an empty train or test split")
        if num_classes is None:
            num_classes = int(max(train_y.max(), test_y.max())) + 1
        if not stats:
            mean, std = (0.0,) * train_x.shape[1], (1.0,) * train_x.shape[1]
        elif isinstance(train_x, LazyImages):
            mean, std = _stats_of_counts(histograms(train_x))
        else:
            mean, std = channel_stats(train_x)
        return cls(
            name=name,
            train_x=train_x.contiguous(),
            train_y=train_y.contiguous(),
            test_x=test_x.contiguous(),
            test_y=test_y.contiguous(),
            num_classes=num_classes,
            mean=mean,
            std=std,
        )

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image, what a model's first layer must accept."""
        _, c, h, w = self.train_x.shape
        return (c, h, w)

    def subset(self, train: int | None, test: int | None, seed: int = 0) -> ImageData:
        """A deterministic random subset (``None`` keeps a split whole) for quick tests and benchmarks.

        Classes are ignored when drawing, and mean/std/num_classes are inherited so the subset
        normalises exactly like its parent and feeds the same classifier head.
        """
        generator = torch.Generator().manual_seed(seed)
        train_idx = _pick(len(self.train_y), train, generator, self.name, "train")
        test_idx = _pick(len(self.test_y), test, generator, self.name, "test")
        return replace(
            self,
            train_x=self.train_x[train_idx].contiguous(),
            train_y=self.train_y[train_idx].contiguous(),
            test_x=self.test_x[test_idx].contiguous(),
            test_y=self.test_y[test_idx].contiguous(),
        )


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean/std of uint8 images on the 0–1 scale, from 256-bin histograms.

    Histograms avoid materialising a float copy of the whole dataset.
    """
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"channel statistics need non-empty uint8 NCHW images, got {x.dtype} {tuple(x.shape)}")
    return _stats_of_counts(
        torch.stack([torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64) for c in range(x.shape[1])])
    )


def _stats_of_counts(per_channel: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std per channel from (C, 256) histograms of pixel values."""
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for counts in per_channel:
        total = counts.sum()
        mean = float((counts * values).sum() / total)
        var = float((counts * values.square()).sum() / total) - mean * mean
        means.append(mean)
        stds.append(max(max(var, 0.0) ** 0.5, MIN_STD))
    return tuple(means), tuple(stds)


def _check_split(name: str, split: str, x: torch.Tensor | LazyImages, y: torch.Tensor, num_classes: int) -> None:
    """Catch malformed tensors where the dataset is made rather than deep inside training."""
    where = f"dataset {name!r} {split} split"
    if isinstance(x, LazyImages):
        if len(y) != len(x):
            raise DataError(f"{where}: {len(x)} images but {len(y)} labels")
    elif x.dtype != torch.uint8 or x.ndim != 4 or not x.is_contiguous():
        raise DataError(f"{where}: images must be contiguous uint8 NCHW, got {x.dtype} {tuple(x.shape)}")
    if y.dtype != torch.int64 or y.ndim != 1 or len(y) != len(x):
        raise DataError(f"{where}: labels must be int64 of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(f"{where}: labels must lie in [0, {num_classes}), got [{int(y.min())}, {int(y.max())}]")


def _pick(size: int, count: int | None, generator: torch.Generator, name: str, split: str) -> torch.Tensor:
    """Sorted random indices, so a subset keeps the original order of the samples it keeps."""
    if count is None:
        return torch.arange(size)
    if count < 1:
        raise DataError(f"subset of dataset {name!r} needs at least 1 {split} image, not {count}")
    return torch.randperm(size, generator=generator)[: min(count, size)].sort().values
