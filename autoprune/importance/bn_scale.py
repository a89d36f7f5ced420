"""|γ| of the batch-norm layers of a group (Network Slimming, Liu et al. 2017).

A group with no batch-norm layer (e.g. a plain VGG) falls back to the L1 norm of its filters, so
every group gets a score.
"""

from __future__ import annotations

import torch
from torch import nn

from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, scatter_to_channels
from autoprune.importance.l1 import filter_l1

NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_gamma(module: nn.Module, dim: str) -> torch.Tensor | None:
    if isinstance(module, NORMS) and module.affine:
        return module.weight.detach().abs()
    return None


class BNScale(Criterion):
    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        scores = {}
        for group in graph.groups:
            has_bn = any(isinstance(m, NORMS) and m.affine for m, *_ in graph.channel_map(group.id))
            scores[group.id] = scatter_to_channels(graph, group.id, bn_gamma if has_bn else filter_l1)
        return scores
