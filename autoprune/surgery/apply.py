"""Apply a PruningPlan: a new, genuinely smaller dense model (never masks)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from autoprune.errors import SurgeryError
from autoprune.graph import PruneGraph
from autoprune.surgery.plan import PruningPlan


def apply_plan(model: nn.Module, example_input: torch.Tensor, plan: PruningPlan) -> nn.Module:
    """Return a pruned copy of ``model``; ``model`` is untouched.

    The copy's graph is built with the plan's ignored and skipped layers, so replaying a saved
    plan on a fresh instance sees the same groups. After the cut a forward pass must run and give
    the original output shape, or :class:`SurgeryError` is raised.
    """
    pruned = copy.deepcopy(model)
    target = PruneGraph(pruned, example_input, ignore=plan.ignore, skipped=plan.skipped)
    known = {g.id: g for g in target.groups}
    for group_id, keep in plan.keep.items():
        group = known.get(group_id)
        if group is None:
            raise SurgeryError(f"plan names group {group_id!r}, which this model does not have")
        if group.channels != plan.channels[group_id]:
            raise SurgeryError(
                f"plan expects {plan.channels[group_id]} channels in {group_id!r}, the model has {group.channels}"
            )
        if len(keep) % group.blocks:
            raise SurgeryError(f"{group_id!r} feeds a group conv: keep a multiple of {group.blocks} channels")
        try:
            target.prune(group_id, keep)
        except Exception as exc:  # torch-pruning errors are untyped
            raise SurgeryError(f"removing channels of {group_id!r} failed: {exc}") from exc
    check_forward(model, pruned, example_input)
    return pruned


def check_forward(original: nn.Module, pruned: nn.Module, example_input: torch.Tensor) -> None:
    """A pruned model must run and keep the output shape; a silently corrupt model is never returned."""
    try:
        with torch.inference_mode():
            expected = original.eval()(example_input).shape
            got = pruned.eval()(example_input).shape
    except Exception as exc:
        raise SurgeryError(f"the pruned model does not run: {exc}") from exc
    if got != expected:
        raise SurgeryError(f"the pruned model outputs {tuple(got)}, expected {tuple(expected)}")
