"""build_graph: the prune graph, with groups torch-pruning cannot cut faithfully left out.

A trial cut on a copy removes one block of channels from every group in turn. A group is left
unpruned (with a warning naming it) when the cut raises, breaks the forward pass, or changes the
model's MACs/params differently from what the group's member list predicts: the last catches
reshapes that torch-pruning maps to more (or fewer) channels than the group declares.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import torch
from torch import nn

from autoprune.graph.build import PruneGraph, find_output_layers
from autoprune.measure.cost import CostModel, count_cost

log = logging.getLogger(__name__)


def _first_unfaithful_group(
    model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str], skipped: Sequence[str]
) -> str | None:
    trial = copy.deepcopy(model)
    graph = PruneGraph(trial, example_input, ignore=ignore, skipped=skipped)
    predict = CostModel(graph, count_cost(trial, example_input))
    with torch.no_grad():
        expected_shape = trial.eval()(example_input).shape
    keep: dict[str, int] = {}
    for group in graph.groups:
        kept = [i for i in range(group.channels) if i % group.block_size != group.block_size - 1]
        keep[group.id] = len(kept)
        try:
            graph.prune(group.id, kept)
            with torch.no_grad():
                shape = trial(example_input).shape
            measured = count_cost(trial, example_input)
        except Exception as exc:  # any failure means torch-pruning cannot cut this group
            log.debug("trial cut of %s failed: %s", group.id, exc)
            return group.id
        if shape != expected_shape or predict.cost(keep) != (measured.macs, measured.params):
            return group.id
    return None


def build_graph(
    model: nn.Module, example_input: torch.Tensor, *, ignore: Sequence[str] = (), probe: bool = True
) -> PruneGraph:
    """The prune graph of ``model``; the output head is never pruned."""
    ignore = tuple(dict.fromkeys((*ignore, *find_output_layers(model, example_input))))
    skipped: list[str] = []
    while probe:
        bad = _first_unfaithful_group(model, example_input, ignore, skipped)
        if bad is None:
            break
        log.warning("layer %s cannot be pruned faithfully by the dependency graph; it is left unpruned", bad)
        skipped.append(bad)
    return PruneGraph(model, example_input, ignore=ignore, skipped=skipped)
