"""Where computation runs: batches follow the model.

Every stage that feeds data to a model moves each batch to :func:`model_device` of that model,
so the caller chooses the device by placing the model; the data pipeline (shuffling,
augmentation, their random generators) stays on the CPU and does not change with the device.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from autoprune.errors import BudgetError

_CUDA = re.compile(r"cuda(:[0-9]+)?")


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (the CPU for a model without parameters)."""
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def check_device_name(name: str) -> None:
    """BudgetError unless ``name`` is "auto", "cpu", "cuda" or "cuda:N".

    Looks at the name only, never at CUDA: a job can be checked where it is submitted, on a
    machine without the GPU of the worker that will run it.
    """
    if not isinstance(name, str) or (name not in ("auto", "cpu") and _CUDA.fullmatch(name) is None):
        raise BudgetError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N', not {name!r}")


def resolve_device(name: str) -> torch.device:
    """``"auto"`` (CUDA when available, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` → a device.

    A CUDA device is returned with its index, so it compares equal to :func:`model_device` of a
    model moved there. Raises BudgetError for a malformed name or a GPU this machine lacks,
    before any work is done.
    """
    check_device_name(name)
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise BudgetError(
            f"device {name!r} was asked for, but this machine has no usable CUDA GPU; use 'cpu' or 'auto'"
        )
    number = name.partition(":")[2]  # "" for "auto" and "cuda"
    index = int(number) if number else torch.cuda.current_device()
    if index >= torch.cuda.device_count():
        raise BudgetError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return torch.device("cuda", index)


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Move ``model`` in place to ``device`` for the block, and back to where it was afterwards.

    For stages that compute (scoring, search, fine-tuning, evaluation) in a pipeline whose
    structural stages (tracing, surgery, cost counting, timing, export) keep the model on the
    CPU. Parameters may be new objects after a move: build optimizers inside the block.
    """
    home = model_device(model)
    model.to(device)
    try:
        yield model
    finally:
        model.to(home)
