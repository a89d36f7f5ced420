"""Paths, the machine description and small helpers shared by the benchmark modules.

Light to import (torch and onnxruntime are imported when a function needs them), so that the
tables can be rendered, and tested, without them.
"""

from __future__ import annotations

import json
import os
import platform
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from autoprune import prune_step

ROOT = Path(__file__).resolve().parent
CACHE = ROOT / ".cache"
RESULTS = ROOT / "results"
CIFAR = ROOT.parent.parent / "shared" / "data" / "cifar10"


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next(
        (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor()
    )


def machine() -> str:
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"
    )


def versions() -> dict[str, str]:
    import onnxruntime
    import torch

    # torch_pruning.__version__ says 1.6.0 in the 1.6.1 wheel: the package metadata is right
    return {
        "torch": torch.__version__,
        "torch_pruning": metadata.version("torch-pruning"),
        "onnxruntime": onnxruntime.__version__,
    }


def today() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%d")


def load_average() -> float:
    """The 1-minute load average, recorded next to timings: on a shared machine they swing with it."""
    return round(os.getloadavg()[0], 2)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def stage_printer(name: str) -> prune_step.Progress:
    """Print each stage once, as it starts: long runs show where they are."""
    seen: set[str] = set()

    def progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        if stage not in seen:
            seen.add(stage)
            print(f"  [{time.strftime('%H:%M:%S')}] {name}: {stage}", flush=True)

    return progress
