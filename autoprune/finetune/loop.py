"""Training loop for fine-tuning pruned models (and training baselines), with distillation.

SGD with (optionally Nesterov) momentum or AdamW, a cosine learning-rate schedule over all steps, and
Hinton et al.'s distillation loss from the unpruned model when a teacher is given:
``w·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1−w)·CE(s, y)``. Deterministic under a seed on the CPU.

Training runs on the model's device (batches are moved there); the batch order and the
augmentations are drawn on the CPU, so they are the same on every device.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from autoprune.data import ImageData, iterate_batches
from autoprune.device import model_device
from autoprune.errors import CancelledError
from autoprune.spec import FinetuneConfig

ProgressFn = Callable[[float, dict[str, float]], None]
# After each epoch: {"optimizer", "scheduler", "generator", "rng", "history"}, enough to resume.
TrainingState = dict[str, Any]


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float
    train_accuracy: float
    lr: float


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²-scaled KL divergence of the softened teacher and student distributions (batch mean)."""
    t = temperature
    return nn.functional.kl_div(
        nn.functional.log_softmax(student / t, dim=1),
        nn.functional.log_softmax(teacher / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def _optimizer(model: nn.Module, cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
        weight_decay=cfg.weight_decay,
    )  # fmt: skip


def steps_per_epoch(data: ImageData, cfg: FinetuneConfig) -> int:
    steps = math.ceil(len(data.train_y) / cfg.batch_size)
    return min(steps, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else steps


def finetune(
    model: nn.Module,
    data: ImageData,
    cfg: FinetuneConfig,
    *,
    teacher: nn.Module | None = None,
    seed: int = 0,
    on_progress: ProgressFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: TrainingState | None = None,
    on_epoch: Callable[[TrainingState], None] | None = None,
) -> list[EpochStats]:
    """Train ``model`` in place for ``cfg.epochs`` epochs; returns per-epoch statistics.

    ``on_epoch`` receives the training state after each epoch; passing one back as ``resume``
    (with the model's weights of that moment) continues exactly where it stopped: the same
    batches, augmentations and learning rates as an uninterrupted run. A ``teacher`` on another
    device than ``model`` is copied to the model's device; the caller's teacher stays where it is.
    """
    device = model_device(model)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    per_epoch = steps_per_epoch(data, cfg)
    total = max(1, cfg.epochs * per_epoch)
    optimizer = _optimizer(model, cfg)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    teacher = _distillation_teacher(teacher, cfg, device)
    history = [] if resume is None else _restore(resume, optimizer, schedule, generator)
    step = len(history) * per_epoch
    for epoch in range(len(history), cfg.epochs):
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iterate_batches(
            data, "train", cfg.batch_size, shuffle=True, augment=cfg.augment, generator=generator, limit=per_epoch
        )
        for x, y in batches:
            if should_stop is not None and should_stop():
                raise CancelledError("fine-tuning was cancelled")
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            logits = model(x)
            loss = nn.functional.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
            if teacher is not None:
                with torch.no_grad():
                    target = teacher(x)
                w = cfg.distill_weight
                loss = w * distillation_loss(logits, target, cfg.temperature) + (1 - w) * loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            if on_progress is not None:
                on_progress(step / total, {"epoch": epoch + 1, "loss": loss.item()})
        history.append(
            EpochStats(
                epoch=epoch + 1,
                loss=loss_sum / max(seen, 1),
                train_accuracy=correct / max(seen, 1),
                lr=schedule.get_last_lr()[0],
            )
        )
        if on_epoch is not None:
            on_epoch({
                "optimizer": optimizer.state_dict(), "scheduler": schedule.state_dict(),
                "generator": generator.get_state(), "rng": torch.get_rng_state(),
                "history": [asdict(h) for h in history],
            })  # fmt: skip
    model.eval()
    return history


def _distillation_teacher(teacher: nn.Module | None, cfg: FinetuneConfig, device: torch.device) -> nn.Module | None:
    """The teacher to distil from, on ``device`` and in eval mode; None when not distilling."""
    if teacher is None or not cfg.distill or not cfg.distill_weight > 0:
        return None
    if model_device(teacher) != device:
        teacher = copy.deepcopy(teacher).to(device)
    teacher.eval()
    return teacher


def _restore(
    resume: TrainingState,
    optimizer: torch.optim.Optimizer,
    schedule: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> list[EpochStats]:
    """Put the optimizer, schedule and random streams back as ``resume`` has them; its epoch history."""
    optimizer.load_state_dict(resume["optimizer"])
    schedule.load_state_dict(resume["scheduler"])
    generator.set_state(resume["generator"])
    torch.set_rng_state(resume["rng"])
    return [EpochStats(**h) for h in resume["history"]]
