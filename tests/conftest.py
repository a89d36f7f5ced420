from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from nets import TinyDenseNet, TinyResNeXt  # noqa: E402

from autoprune.models import create_model  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


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
