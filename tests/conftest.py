from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from nets import TinyDenseNet, TinyResNeXt  # noqa: E402

from autoprune.models import create_model  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


# `make test` runs two pytest-xdist workers: one torch thread each keeps them from oversubscribing
# two cores (OpenMP threads that outnumber the cores stall each other); alone, pytest uses two.
DEFAULT_THREADS = "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2"


@pytest.fixture(autouse=True)
def _threads() -> None:
    torch.set_num_threads(int(os.environ.get("AUTOPRUNE_TEST_THREADS", DEFAULT_THREADS)))


def build(name: str) -> torch.nn.Module:
    """The architectures the surgery tests cover, seeded."""
    torch.manual_seed(0)
    if name == "tiny_densenet":
        return TinyDenseNet().eval()
    if name == "tiny_resnext":
        return TinyResNeXt().eval()
    return create_model(name, num_classes=10).eval()


@pytest.fixture(scope="session")
def digits():
    from autoprune.data import load_data

    return load_data("digits")


@pytest.fixture(scope="session")
def trained_resnet20(tmp_path_factory) -> Path:
    """ResNet-20 trained for three epochs on digits (≈85% top-1): a real model to prune."""
    from autoprune.pipeline import BASELINE_RECIPE, train_baseline

    path = tmp_path_factory.mktemp("weights") / "resnet20-digits.safetensors"
    result = train_baseline("resnet20", "digits", path, epochs=3, cfg=BASELINE_RECIPE)
    assert result["accuracy"] > 0.5
    return path
