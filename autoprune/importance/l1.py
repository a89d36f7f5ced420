"""L1 norm of filters (Li et al., 2017), summed over the coupled layers of a group."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, scatter_to_channels


def filter_l1(module: nn.Module, dim: str) -> torch.Tensor | None:
    """L1 norm of each output filter of a conv/linear layer; other members do not vote."""
    if dim != "out" or not isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
        return None
    return module.weight.detach().abs().flatten(1).sum(1)


class L1(Criterion):
    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        return {g.id: scatter_to_channels(graph, g.id, filter_l1) for g in graph.groups}
