"""First-order Taylor criterion (Molchanov et al., ICLR 2017).

The saliency of feature map k is the absolute first-order change of the loss when the map is
zeroed, Θ(z_k) = |Σ_m ∂C/∂z_{k,m} · z_{k,m}| over the M positions of the map, computed per
example and averaged over the calibration examples (the absolute value is taken per example, so
opposite signs in a batch do not cancel). The paper writes 1/M Σ_m; it then L2-normalises per
layer, where a per-layer factor cancels. Scores compared *across* layers without normalisation
(HALP's knapsack, NAP's ranking, the channel-step repair) need the loss change itself: with the
mean, a 32×32 map's channel scored 16× less than an 8×8 map's for the same loss change, and
HALP cut ResNet-20's first stage to the floor (docs/methods.md#halp). The sum is also what HALP's
BN form computes: γ·∂C/∂γ + β·∂C/∂β = Σ_m ∂C/∂z_m · z_m for the BN output z. The feature map of a group is the
output of its batch-norm layers (what the next layer sees when a channel is removed), or of its
conv/linear layers where it has no batch norm; coupled maps (residual adds) are summed. The
per-layer L2 normalisation the paper applies before global ranking is done by the global
allocator (scaled by √n, see ``solvers/global_rank.py``), for every criterion alike.
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, gradient_statistics, scatter_to_channels

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
        modules = set().union(*points.values())
        sums = gradient_statistics(graph.model, modules, batches, summed_cross_entropy, taylor_saliency)
        return {
            gid: scatter_to_channels(graph, gid, lambda m, dim, mods=mods: sums.get(m) if m in mods else None)
            for gid, mods in points.items()
        }


def taylor_saliency(activation: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """|sum over positions of activation × gradient| per example and channel: the first-order loss change."""
    return (activation * grad).sum(2).abs()


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Summed over the batch so each example's gradient is its own ∂C_n/∂z, not divided by N.
    return nn.functional.cross_entropy(logits, y, reduction="sum")
