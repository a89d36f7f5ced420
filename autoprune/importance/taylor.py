"""First-order Taylor criterion (Molchanov et al., ICLR 2017).

The saliency of feature map k is the absolute first-order change of the loss when the map is
zeroed, Θ(z_k) = |1/M Σ_m ∂C/∂z_{k,m} · z_{k,m}| over the M positions of the map, computed per
example and averaged over the calibration examples (the paper's definition; the absolute value is
taken per example, so opposite signs in a batch do not cancel). The feature map of a group is the
output of its batch-norm layers (what the next layer sees when a channel is removed), or of its
conv/linear layers where it has no batch norm; coupled maps (residual adds) are summed. The
per-layer L2 normalisation the paper applies before global ranking is done by the global
allocator, for every criterion alike.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from torch import nn

from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, scatter_to_channels

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def feature_points(graph: PruneGraph, group_id: str) -> set[nn.Module]:
    """The modules whose outputs are the group's feature maps."""
    members = graph.channel_map(group_id)
    norms = {m for m, *_ in members if isinstance(m, NORMS)}
    return norms or {m for m, dim, *_ in members if dim == "out" and isinstance(m, LAYERS)}


class Taylor(Criterion):
    needs_data = True

    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        if batches is None:
            raise ValueError("the taylor criterion needs calibration batches")
        points = {g.id: feature_points(graph, g.id) for g in graph.groups}
        sums = taylor_sums(graph.model, set().union(*points.values()), batches)
        return {
            gid: scatter_to_channels(graph, gid, lambda m, dim, mods=mods: sums.get(m) if m in mods else None)
            for gid, mods in points.items()
        }


def taylor_sums(model: nn.Module, modules: set[nn.Module], batches: Batches) -> dict[nn.Module, torch.Tensor]:
    """Mean over examples of |mean over positions of activation × gradient|, per module output channel."""
    totals: dict[nn.Module, torch.Tensor] = defaultdict(lambda: torch.zeros(()))
    examples = 0

    def on_forward(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        activation = output.detach().clone()  # a later in-place ReLU must not change it

        def on_grad(grad: torch.Tensor) -> None:
            product = (activation * grad).flatten(2).mean(2) if grad.dim() > 2 else activation * grad
            totals[module] = totals[module] + product.abs().sum(0)

        output.register_hook(on_grad)

    hooks = [m.register_forward_hook(on_forward) for m in modules]
    was_training = model.training
    model.eval()
    try:
        for x, y in batches():
            model.zero_grad(set_to_none=True)
            # Sum over the batch so each example's gradient is its own ∂C_n/∂z, not divided by N.
            loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
            loss.backward()
            examples += len(x)
    finally:
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration batches were given")
    return {m: t / examples for m, t in totals.items()}
