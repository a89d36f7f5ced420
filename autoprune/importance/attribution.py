"""Attribution-based filter scores (Zhang, Yang, Sang, Yu, "基于特征归因重要度评价的卷积网络剪枝",
Scientia Sinica Informationis 51(1):13–26, 2021; docs/methods.md#attribution).

The paper scores each filter by how well what it detects agrees with the evidence an attribution
method assigns to the decision ("attribution pruning"), and, as a second criterion, by the
positively correlated part of activation × gradient ("Taylor-guided pruning"). Each score is
L2-normalised per layer before ranking. Which attribution method it uses (Grad-CAM or IBA) could
not be checked; we implement the Grad-CAM form (docs/methods.md#attribution), for the layer's feature maps
A_k (the group's feature points, as in :mod:`~autoprune.importance.taylor`: BN outputs, or conv
outputs without BN) and the logit y^c of the example's true class c:

* :class:`Attribution`:  ω_k = mean_ij ∂y^c/∂A_k^ij,  M = ReLU(Σ_k ω_k A_k) (the layer's Grad-CAM
  map), s_k = E_x[⟨ReLU(A_k), M⟩ / (‖ReLU(A_k)‖ ‖M‖ + ε)], the cosine agreement of channel k's
  rectified map with the map of the evidence. Grad-CAM's rescaling of M to [0, 1] is left out:
  a cosine ignores scale, and min-subtraction would zero the map of 1×1 layers.
* :class:`TaylorGuided`:  s_k = E_x[Σ_ij ReLU(A_k^ij ∂y^c/∂A_k^ij)].

Both are ≥ 0. The IBA variant (a per-example information-bottleneck mask optimised for ~10
steps) is not implemented. The paper's schedule is iterative (score, cut τ filters below a
threshold, fine-tune, repeat); here a criterion scores once and an allocator sets the ratios.
Coupled layers (residual adds, concatenations) are scored per layer, normalised per layer as the
paper says, then summed into the group's channels.
"""

from __future__ import annotations

import torch

from autoprune.graph import PruneGraph
from autoprune.importance.base import (
    Batches,
    Criterion,
    GroupScores,
    Statistic,
    gradient_statistics,
    scatter_to_channels,
)
from autoprune.importance.taylor import feature_points

EPS = 1e-12


def gradcam_agreement(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """Cosine between each rectified channel map and the layer's Grad-CAM map."""
    weights = gradient.mean(2, keepdim=True)
    cam = (weights * activation).sum(1, keepdim=True).relu()
    rectified = activation.relu()
    inner = (rectified * cam).sum(2)
    return inner / (rectified.norm(dim=2) * cam.norm(dim=2) + EPS)


def positive_taylor(activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The positively correlated part of activation × gradient, summed over positions."""
    return (activation * gradient).relu().sum(2)


class Attribution(Criterion):
    """Grad-CAM agreement of each channel (the paper's attribution criterion), L2-normalised per layer."""

    needs_data = True

    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        return layer_normalised_scores(graph, batches, gradcam_agreement, "attribution")


class TaylorGuided(Criterion):
    """Positive activation × gradient of the target logit (the paper's Taylor-guided criterion)."""

    needs_data = True

    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        return layer_normalised_scores(graph, batches, positive_taylor, "taylor_guided")


def layer_normalised_scores(graph: PruneGraph, batches: Batches | None, statistic: Statistic, name: str) -> GroupScores:
    """Mean statistic per feature-point channel, divided by its layer's L2 norm, summed into groups."""
    if batches is None:
        raise ValueError(f"the {name} criterion needs calibration batches")
    points = {g.id: feature_points(graph, g.id) for g in graph.groups}
    means = gradient_statistics(graph.model, set().union(*points.values()), batches, target_logit, statistic)
    normalised = {m: _unit(v) for m, v in means.items()}
    return {
        gid: scatter_to_channels(graph, gid, lambda m, dim, mods=mods: normalised.get(m) if m in mods else None)
        for gid, mods in points.items()
    }


def _unit(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm()
    return v / norm if norm > 0 else v


def target_logit(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ over the batch of the true-class logit: in eval mode each example's gradient is its own ∂y^c/∂A."""
    return logits.gather(1, y.reshape(-1, 1).to(device=logits.device, dtype=torch.long)).sum()
