"""The criterion interface: per-channel scores for every channel group."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from autoprune.device import model_device
from autoprune.graph import PruneGraph

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
"""A callable that yields fresh (inputs, labels) calibration batches each time it is called."""

GroupScores = dict[str, np.ndarray]
"""Group id → non-negative score per channel (length = the group's channel count)."""


class Criterion(abc.ABC):
    """Scores channels: higher means more important, kept first.

    ``needs_data`` criteria get calibration batches; the others score from weights alone.
    ``provides_curvature`` criteria also return the curvature factors they scored with
    (``score_with_curvature``), which a cut can use to compensate the kept weights (NAP's OBS
    update, ``autoprune.compensate``).
    """

    needs_data: ClassVar[bool] = False
    provides_curvature: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores: ...

    def score_with_curvature(self, graph: PruneGraph, batches: Batches) -> tuple[GroupScores, Any]:
        """Scores and the curvature factors behind them (``provides_curvature`` criteria only)."""
        raise NotImplementedError(f"{type(self).__name__} provides no curvature factors")


def scatter_to_channels(
    graph: PruneGraph, group_id: str, per_member: Callable[[torch.nn.Module, str], torch.Tensor | None]
) -> np.ndarray:
    """Sum a per-index statistic of each member module into the group's channels.

    ``per_member(module, dim)`` returns a vector over the module's channels along ``dim`` (or None
    to skip the member), on any device; entries are added, on the CPU, to the group channel each
    index belongs to.
    """
    total = torch.zeros(graph.group(group_id).channels, dtype=torch.float64)
    for module, dim, idxs, root_idxs in graph.channel_map(group_id):
        values = per_member(module, dim)
        if values is None:
            continue
        values = values.detach().to("cpu", torch.float64).flatten()
        total.index_add_(0, torch.tensor(root_idxs), values[torch.tensor(idxs)])
    return total.numpy()


Statistic = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(activation, gradient), both (N, C, positions) float64 → one value per example and channel (N, C)."""

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits, labels) → a scalar summed over the batch, so each example's gradient is its own."""


def gradient_statistics(
    model: nn.Module, modules: set[nn.Module], batches: Batches, objective: Objective, statistic: Statistic
) -> dict[nn.Module, torch.Tensor]:
    """Mean over examples of ``statistic`` on each module's output and the gradient of ``objective``.

    Runs in eval mode (BN running statistics, nothing updated) on the model's device, where the
    batches are moved; the means are returned on the CPU. Hooks, gradients and the model's mode
    are restored whatever happens.
    """
    device = model_device(model)
    totals: dict[nn.Module, torch.Tensor] = {}
    examples = 0

    def on_forward(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        activation = output.detach().clone()  # a later in-place ReLU must not change it

        def on_grad(grad: torch.Tensor) -> None:
            flat = (t.reshape(t.shape[0], t.shape[1], -1).to(torch.float64) for t in (activation, grad))
            value = statistic(*flat).sum(0)
            totals[module] = totals[module] + value if module in totals else value

        output.register_hook(on_grad)

    hooks = [m.register_forward_hook(on_forward) for m in modules]
    was_training = model.training
    model.eval()
    try:
        for x, y in batches():
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            model.zero_grad(set_to_none=True)
            objective(model(x), y).backward()
            examples += len(x)
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration batches were given")
    return {m: (t / examples).cpu() for m, t in totals.items()}
