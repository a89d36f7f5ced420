"""autoprune: structured channel pruning with automatic per-layer ratios.

The package imports nothing heavy at import time (the job service imports ``autoprune.errors``
without torch); ``autoprune.load_pruned`` is resolved on first use.
"""

from __future__ import annotations

from typing import Any

__all__ = ["load_pruned"]


def __getattr__(name: str) -> Any:
    if name == "load_pruned":
        from autoprune.export import load_pruned

        return load_pruned
    raise AttributeError(f"module 'autoprune' has no attribute {name!r}")
