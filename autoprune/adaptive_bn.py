"""EagleEye's adaptive-BN evaluation (docs/methods.md#adaptive-bn): a cheap score of a candidate allocation.

A candidate is cut from the trained model with inherited weights (best-scored channels kept, as
:func:`autoprune.allocate.make_plan` does), its BatchNorm running statistics are re-estimated on
training batches, and its top-1 accuracy on a held-out part of the training split is the score.
EagleEye shows this score ranks candidates like their accuracy after fine-tuning does, while
the stale statistics inherited from the unpruned model do not.

Choices (docs/methods.md#adaptive-bn):

- The statistics are **reset** and re-estimated with ``momentum=None`` (a cumulative average
  over the batches), as MetaPruning's code does; EagleEye's code
  keeps momentum 0.1 without a reset, which weighs the last batches most and leaks the stale
  statistics into the estimate.
- Only the BatchNorm layers run in train mode during calibration; the rest of the network
  stays in eval mode, so dropout cannot bias the statistics toward training-time
  activations (EagleEye and MetaPruning put the whole model in train mode; for networks
  without dropout the two are the same).
- The score is measured on a fixed subset of the **training** split, never the test split:
  the search picks one network out of many by this score, and choosing by test accuracy would
  fit the choice to the test set and make the reported test accuracy optimistic. MetaPruning
  (a 50k "sub-val" carved from ImageNet train) and EagleEye (``imagenet_train_val_split``) do
  the same. The held-out examples are disjoint from the calibration batches, so the
  statistics are never estimated on the very images they are scored on.
- ``calibration_batches=0`` skips the re-estimation: the "vanilla" evaluation with inherited
  statistics that EagleEye compares against.

Deterministic: the held-out subset and the calibration batches are drawn from fixed seeds and
are the same for every candidate. Candidates are cut, calibrated and scored on the device of
the model they are cut from; the batches (drawn on the CPU) are moved there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

import torch
from torch import nn

from autoprune.data import ImageData, iterate_batches
from autoprune.device import model_device
from autoprune.graph import PruneGraph
from autoprune.importance import GroupScores
from autoprune.surgery import apply_plan, make_plan

EVAL_BATCH = 256


def make_evaluator(
    model: nn.Module,
    graph: PruneGraph,
    scores: GroupScores,
    data: ImageData,
    *,
    calibration_batches: int = 10,
    eval_examples: int = 512,
    batch_size: int = 64,
    seed: int = 0,
) -> Callable[[Mapping[str, int]], float]:
    """A function of keep counts per group → adaptive-BN top-1 accuracy of that pruned model.

    ``model`` is never modified: each call prunes a copy. ``batch_size`` is the calibration
    batch size; EagleEye reports that small batches make adaptive BN ineffective.
    """
    if calibration_batches < 0:
        raise ValueError(f"calibration_batches must be non-negative, not {calibration_batches}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    if not 1 <= eval_examples < len(data.train_y):
        raise ValueError(
            f"eval_examples must lie in [1, {len(data.train_y)}): the rest of the training split calibrates BN"
        )
    held_idx, calibration_idx = split_training(len(data.train_y), eval_examples, seed)
    held_out, calibration = training_part(data, held_idx), training_part(data, calibration_idx)

    def evaluate(keep: Mapping[str, int]) -> float:
        modes = [(m, m.training) for m in model.modules()]
        example = graph.example_input.to(model_device(model))  # the graph may have been traced elsewhere
        try:
            pruned = apply_plan(model, example, make_plan(graph, scores, keep))
        finally:
            for m, training in modes:  # apply_plan's forward check puts the original in eval mode
                m.training = training
        if calibration_batches:
            generator = torch.Generator().manual_seed(seed)
            batches = iterate_batches(
                calibration, "train", batch_size, shuffle=True, generator=generator, limit=calibration_batches
            )
            recalibrate(pruned, batches)
        return accuracy(pruned, held_out)

    return evaluate


def split_training(size: int, eval_examples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices into a training split of ``size``: (held out, calibration), disjoint, seeded, sorted."""
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:eval_examples].sort().values, order[eval_examples:].sort().values


def training_part(data: ImageData, idx: torch.Tensor) -> ImageData:
    """``data`` with only the training examples ``idx`` (normalisation inherited from the parent)."""
    return replace(data, train_x=data.train_x[idx].contiguous(), train_y=data.train_y[idx].contiguous())


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def recalibrate(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Reset every BN's running statistics and re-estimate them as the plain average over ``batches``.

    Leaves ``model`` in eval mode with the BN momenta it had. Batches are moved to the model's device.
    """
    device = model_device(model)
    norms = batch_norms(model)
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
        m.train()
    try:
        with torch.no_grad():
            for x, _ in batches:
                model(x.to(device, non_blocking=True))
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def accuracy(model: nn.Module, data: ImageData) -> float:
    """Top-1 accuracy on the training split of ``data`` (here: the held-out part), in eval mode."""
    return float(correct(model, data).float().mean())


def correct(model: nn.Module, data: ImageData) -> torch.Tensor:
    """Whether ``model``'s top-1 is right, per example of the training split of ``data`` (on the CPU).

    Per example, so that two models scored on the same examples can be compared pairwise.
    """
    device = model_device(model)
    model.eval()
    hits = []
    with torch.inference_mode():
        for x, y in iterate_batches(data, "train", EVAL_BATCH):
            logits = model(x.to(device, non_blocking=True))
            hits.append((logits.argmax(1) == y.to(device, non_blocking=True)).cpu())
    return torch.cat(hits)
