"""Top-1 accuracy and mean cross-entropy on a split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autoprune.data import ImageData, iterate_batches
from autoprune.device import model_device


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float


def evaluate(model: nn.Module, data: ImageData, *, split: str = "test", batch_size: int = 256) -> Evaluation:
    """Accuracy and mean loss of ``model`` on ``split``, computed on the model's device (batches are moved there)."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    correct, loss, seen = 0, 0.0, 0
    try:
        with torch.inference_mode():
            for x, y in iterate_batches(data, split, batch_size):  # type: ignore[arg-type]
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                logits = model(x)
                loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
                correct += int((logits.argmax(1) == y).sum())
                seen += len(y)
    finally:
        model.train(was_training)
    return Evaluation(accuracy=correct / max(seen, 1), loss=loss / max(seen, 1))
