"""Folder images read from disk when a batch needs them, not decoded into one array up front.

:class:`LazyImages` stands where an in-memory dataset keeps its uint8 NCHW tensor: it has a
shape, is indexed by a tensor of positions (giving a subset, nothing decoded), and decodes a
batch on demand. Batches are decoded in DataLoader worker processes, one batch per worker, so
memory holds a few batches, whatever the dataset's size.

Training augmentation follows torchvision's classification reference at 64 px and above
(RandomResizedCrop, scale 0.08–1, ratio 3/4–4/3, then a horizontal flip, on the decoded image
at its own resolution); below that, the CIFAR pad-crop + flip of ``loader.random_crop_flip``
runs on the batch, exactly as for in-memory data. Crops are seeded per batch from the caller's
generator, so a run is reproducible whatever the number of workers.
"""

from __future__ import annotations

import math
import os
import shutil
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from autoprune.data.preprocess import PIL_RESAMPLE, Preprocess, pil_image
from autoprune.errors import DataError

IMAGE_ERRORS = (OSError, SyntaxError, ValueError, EOFError)  # what PIL raises for broken files
RANDOM_RESIZED_CROP_SIDE = 64  # at and above this input side, RandomResizedCrop; below, pad-crop
SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)  # torchvision's RandomResizedCrop defaults
MIN_BATCHES_FOR_WORKERS = 4  # fewer batches are decoded in this process (workers cost a fork each)
STATS_SAMPLE = 10_000  # dataset mean/std from at most this many training images (all of a smaller set)


def loader_workers() -> int:
    """Decoding processes: ``AUTOPRUNE_LOADER_WORKERS``, else up to 4, leaving one core to training."""
    given = os.environ.get("AUTOPRUNE_LOADER_WORKERS", "")
    if given.isdigit():
        return int(given)
    return max(1, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True, eq=False)
class LazyImages:
    """Image files of one split, brought to ``pre.size`` (which must be set) when decoded."""

    files: tuple[str, ...]
    pre: Preprocess
    keep: object = None  # what must live while the files are read (an ExtractedDir)
    dtype: torch.dtype = torch.uint8
    ndim: int = 4

    @property
    def shape(self) -> torch.Size:
        assert self.pre.size is not None
        return torch.Size((len(self.files), 3, *self.pre.size))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: torch.Tensor) -> LazyImages:
        """The images at positions ``idx`` (or where a boolean mask is set), still on disk."""
        if idx.dtype == torch.bool:
            idx = idx.nonzero().flatten()
        return LazyImages(tuple(self.files[int(i)] for i in idx), self.pre, self.keep)

    def kept_by(self, keep: object) -> LazyImages:
        return LazyImages(self.files, self.pre, keep)

    def contiguous(self) -> LazyImages:
        return self

    def is_contiguous(self) -> bool:
        return True

    def tensor(self) -> torch.Tensor:
        """Every image decoded into one uint8 NCHW tensor (small sets only: what laziness avoids)."""
        return self.decode(range(len(self)))

    def decode(self, positions: Sequence[int], seed: int | None = None) -> torch.Tensor:
        """uint8 NCHW images at ``positions``; with ``seed``, randomly resized crops and flips."""
        assert self.pre.size is not None
        height, width = self.pre.size
        out = np.empty((len(positions), height, width, 3), dtype=np.uint8)
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for row, i in enumerate(positions):
            path = self.files[i]
            try:
                with Image.open(path) as img:
                    rgb = img.convert("RGB")
            except IMAGE_ERRORS as exc:
                raise DataError(f"could not read image {path}: {exc}") from None
            rgb = random_resized_crop(rgb, self.pre, generator) if generator is not None else pil_image(rgb, self.pre)
            out[row] = np.asarray(rgb, dtype=np.uint8)
        return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def random_resized_crop(img: Image.Image, pre: Preprocess, generator: torch.Generator) -> Image.Image:
    """torchvision's RandomResizedCrop + RandomHorizontalFlip, drawn from ``generator``."""
    assert pre.size is not None
    height, width = pre.size
    area = img.width * img.height
    box = None
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(*SCALE, generator=generator))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(RATIO[0]), math.log(RATIO[1]), generator=generator)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= img.width and 0 < h <= img.height:
            top = int(torch.randint(0, img.height - h + 1, (1,), generator=generator))
            left = int(torch.randint(0, img.width - w + 1, (1,), generator=generator))
            box = (left, top, left + w, top + h)
            break
    if box is None:  # torchvision's fallback: the whole image, its ratio clamped, centred
        side = min(img.width, img.height)
        box = ((img.width - side) // 2, (img.height - side) // 2, (img.width + side) // 2, (img.height + side) // 2)
    out = img.resize((width, height), PIL_RESAMPLE[pre.interpolation], box=box)
    if bool(torch.randint(0, 2, (1,), generator=generator)):
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


class _Batches(Dataset[torch.Tensor | str]):
    """Item ``b``: batch ``b`` decoded (or the error's message, raised again in the main process)."""

    def __init__(self, images: LazyImages, chunks: list[list[int]], seeds: list[int] | None) -> None:
        self.images, self.chunks, self.seeds = images, chunks, seeds

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, b: int) -> torch.Tensor | str:
        try:
            return self.images.decode(self.chunks[b], self.seeds[b] if self.seeds is not None else None)
        except DataError as exc:
            return str(exc)


def decoded_batches(images: LazyImages, chunks: list[list[int]], seeds: list[int] | None) -> Iterator[torch.Tensor]:
    """uint8 batches of ``images`` at ``chunks`` (lists of positions), in order, decoded by workers."""
    workers = loader_workers() if len(chunks) >= MIN_BATCHES_FOR_WORKERS else 0
    loader = DataLoader(_Batches(images, chunks, seeds), batch_size=None, shuffle=False, num_workers=workers)
    for batch in loader:
        if isinstance(batch, str):
            raise DataError(batch)
        yield batch


def augments_by_crop(images: LazyImages) -> bool:
    """Whether training batches are RandomResizedCrops (large inputs) rather than pad-crops."""
    assert images.pre.size is not None
    return min(images.pre.size) >= RANDOM_RESIZED_CROP_SIDE


def histograms(images: LazyImages, batch_size: int = 256) -> torch.Tensor:
    """(3, 256) pixel-value counts over up to ``STATS_SAMPLE`` training images (seeded sample)."""
    count = len(images)
    positions = (
        torch.arange(count) if count <= STATS_SAMPLE else torch.randperm(count, generator=_seeded())[:STATS_SAMPLE]
    )
    chunks = [positions[i : i + batch_size].tolist() for i in range(0, len(positions), batch_size)]
    counts = torch.zeros(3, 256, dtype=torch.float64)
    for batch in decoded_batches(images, chunks, None):
        for c in range(3):
            counts[c] += torch.bincount(batch[:, c].reshape(-1), minlength=256).to(torch.float64)
    return counts


def _seeded() -> torch.Generator:
    return torch.Generator().manual_seed(0)


class ExtractedDir:
    """A directory of extracted files, removed when the last dataset reading it is gone (or at exit)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        weakref.finalize(self, shutil.rmtree, str(path), True)


def files_of(paths: Sequence[Path]) -> tuple[str, ...]:
    return tuple(str(p) for p in paths)
