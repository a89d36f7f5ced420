"""NAP's weight compensation: the kept weights absorb the removed ones (OBS under K-FAC)."""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn

from autoprune.device import model_device
from autoprune.graph import PruneGraph
from autoprune.importance.kfac import KronFactors, obs_compensation
from autoprune.surgery import PruningPlan, apply_plan


def compensated_cut(
    model: nn.Module,
    graph: PruneGraph,
    factors: Mapping[nn.Module, KronFactors],
    plan: PruningPlan,
    example_input: torch.Tensor,
) -> nn.Module:
    """Cut ``plan`` from a copy of ``model`` after the OBS update of its remaining weights.

    The update changes conv/linear weights, so batch-norm statistics need re-estimating
    afterwards (docs/methods.md#obs-compensation); the pipeline does that after every cut
    (:func:`autoprune.prune_step.reestimate_bn`). ``model`` itself is untouched. All of it runs on
    the model's device (the pruned copy is left there), wherever the factors and the example are.
    """
    example_input = example_input.to(model_device(model))
    names = {module: name for name, module in model.named_modules()}
    updated = copy.deepcopy(model)
    updated_graph = PruneGraph(updated, example_input, ignore=graph.ignore, skipped=graph.skipped)
    moved = {updated.get_submodule(names[m]): f for m, f in factors.items()}
    with torch.no_grad():
        obs_compensation(updated_graph, moved, plan.keep)
    return apply_plan(updated, example_input, plan)
