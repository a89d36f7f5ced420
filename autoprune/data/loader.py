"""Batches of normalised tensors from ImageData, reproducible through one ``torch.Generator``.

An in-memory dataset (digits, npz) is a uint8 tensor, and indexing it is faster than a
DataLoader; a folder's images stay on disk and are decoded per batch by DataLoader workers
(``autoprune.data.lazy``), in the same order and with the same generator draws.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from autoprune.data.dataset import ImageData
from autoprune.data.lazy import LazyImages, augments_by_crop, decoded_batches
from autoprune.errors import DataError, UnknownNameError

CROP_PADDING = 4


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (..., C, H, W) → float32 ``(x/255 - mean)/std``, the form every model is fed."""
    if x.ndim < 3 or x.shape[-3] != len(mean) or len(mean) != len(std):
        raise DataError(f"cannot normalise images of shape {tuple(x.shape)} with {len(mean)} means and {len(std)} stds")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(-1, 1, 1)
    return x.to(torch.float32).div_(255.0).sub_(m).div_(s)


def iterate_batches(
    data: ImageData,
    split: Literal["train", "test"],
    batch_size: int,
    *,
    shuffle: bool = False,
    augment: bool = False,
    generator: torch.Generator | None = None,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (float32 NCHW images, int64 labels); ``limit`` caps the number of batches.

    Arguments are checked here, before the first batch is asked for, so mistakes surface at the call.
    """
    if split not in ("train", "test"):
        raise UnknownNameError(f"unknown split {split!r}; use 'train' or 'test'")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, not {batch_size}")
    if limit is not None and limit < 0:
        raise DataError(f"limit must be a non-negative number of batches, not {limit}")
    x, y = (data.train_x, data.train_y) if split == "train" else (data.test_x, data.test_y)
    order = torch.randperm(len(y), generator=generator) if shuffle else torch.arange(len(y))
    batches = math.ceil(len(y) / batch_size)
    if limit is not None:
        batches = min(batches, limit)
    return _batches(data, x, y, order, batch_size, batches, augment, generator)


def _batches(
    data: ImageData,
    x: torch.Tensor | LazyImages,
    y: torch.Tensor,
    order: torch.Tensor,
    batch_size: int,
    batches: int,
    augment: bool,
    generator: torch.Generator | None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """In-memory batches by indexing; a folder's decoded from disk, large inputs augmented while
    decoded (RandomResizedCrop, seeded per batch from ``generator``)."""
    chunks = [order[b * batch_size : (b + 1) * batch_size] for b in range(batches)]
    by_crop = augment and isinstance(x, LazyImages) and augments_by_crop(x)
    if isinstance(x, LazyImages):
        seeds = torch.randint(0, 2**31 - 1, (batches,), generator=generator).tolist() if by_crop else None
        raws: Iterator[torch.Tensor] = decoded_batches(x, [c.tolist() for c in chunks], seeds)
    else:
        raws = (x[idx] for idx in chunks)
    for idx, raw in zip(chunks, raws, strict=True):
        xb = normalize(raw, data.mean, data.std)
        yield (random_crop_flip(xb, generator) if augment and not by_crop else xb), y[idx]


def random_crop_flip(x: torch.Tensor, generator: torch.Generator | None, padding: int = CROP_PADDING) -> torch.Tensor:
    """Standard CIFAR augmentation on a normalised batch: zero-padded random crop, random h-flip.

    One gather does both per sample (flipping reverses the crop's column indices), so there is
    no Python loop over images.
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    rows = top[:, None] + torch.arange(h)
    cols = left[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    out = padded[torch.arange(n)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()
