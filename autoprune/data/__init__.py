"""Dataset intake: safe loading of image datasets and batching them for training."""

from __future__ import annotations

from autoprune.data.archive import ArchiveLimits, extract_archive
from autoprune.data.dataset import ImageData
from autoprune.data.loader import iterate_batches
from autoprune.data.sources import DataLimits, load_data

__all__ = ["ArchiveLimits", "DataLimits", "ImageData", "extract_archive", "iterate_batches", "load_data"]
