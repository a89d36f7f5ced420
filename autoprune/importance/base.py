"""The criterion interface: per-channel scores for every channel group."""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable
from typing import ClassVar

import numpy as np
import torch

from autoprune.graph import PruneGraph

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
"""A callable that yields fresh (inputs, labels) calibration batches each time it is called."""

GroupScores = dict[str, np.ndarray]
"""Group id → non-negative score per channel (length = the group's channel count)."""


class Criterion(abc.ABC):
    """Scores channels: higher means more important, kept first.

    ``needs_data`` criteria get calibration batches; the others score from weights alone.
    """

    needs_data: ClassVar[bool] = False

    @abc.abstractmethod
    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores: ...


def scatter_to_channels(
    graph: PruneGraph, group_id: str, per_member: Callable[[torch.nn.Module, str], torch.Tensor | None]
) -> np.ndarray:
    """Sum a per-index statistic of each member module into the group's channels.

    ``per_member(module, dim)`` returns a vector over the module's channels along ``dim`` (or None
    to skip the member); entries are added to the group channel each index belongs to.
    """
    total = torch.zeros(graph.group(group_id).channels, dtype=torch.float64)
    for module, dim, idxs, root_idxs in graph.channel_map(group_id):
        values = per_member(module, dim)
        if values is None:
            continue
        values = values.detach().to(torch.float64).flatten()
        total.index_add_(0, torch.tensor(root_idxs), values[torch.tensor(idxs)])
    return total.numpy()
