"""Bridge from a real model to a solver: build the AllocationProblem, turn keep counts into a plan."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from autoprune.errors import BudgetError, SolverError, UnknownNameError
from autoprune.graph import PruneGraph
from autoprune.importance import GroupScores
from autoprune.measure import CostModel
from autoprune.surgery import PruningPlan
from autoprune.types import Budget
from solvers import Allocation, AllocationProblem, Allocator, GroupSpec, InfeasibleBudget, get_allocator


def group_specs(graph: PruneGraph, min_keep_fraction: float) -> tuple[GroupSpec, ...]:
    """Solver view of the groups; each keeps at least ``min_keep_fraction`` of its units (≥ 1)."""
    return tuple(
        GroupSpec(
            id=g.id,
            channels=g.channels,
            blocks=g.blocks,
            min_units=max(1, math.ceil(min_keep_fraction * g.block_size)),
        )
        for g in graph.groups
    )


def check_method(method: str, budget: Budget) -> Allocator:
    """The allocator named ``method``, if it exists and takes this kind of budget."""
    try:
        allocator = get_allocator(method)
    except KeyError as exc:
        raise UnknownNameError(str(exc.args[0])) from None
    if budget.kind == "latency_ms":
        raise BudgetError(f"method {method!r} takes flops or params budgets; latency budgets need a latency-aware method")
    return allocator


def allocate(
    method: str,
    graph: PruneGraph,
    scores: GroupScores,
    cost_model: CostModel,
    budget: Budget,
    *,
    reference: tuple[int, int],
    min_keep_fraction: float = 0.1,
    seed: int = 0,
) -> Allocation:
    """Run allocator ``method`` so that the pruned model keeps ≤ ``budget`` of ``reference``.

    ``reference`` is (MACs, params) of the unpruned model: in iterative pruning the current
    model is already smaller, but the budget is always a fraction of the original.
    """
    allocator = check_method(method, budget)
    index = 0 if budget.kind == "flops" else 1
    problem = AllocationProblem(
        groups=group_specs(graph, min_keep_fraction),
        scores=scores,
        cost=lambda keep: cost_model.cost(keep)[index],
        budget=budget.value * reference[index],
        seed=seed,
    )
    try:
        return allocator.allocate(problem)
    except InfeasibleBudget as exc:
        floor = problem.cost_of_units({g.id: g.min_units for g in problem.groups}) / reference[index]
        raise BudgetError(
            f"{budget} cannot be met: the narrowest network allowed ({min_keep_fraction:.0%} of each "
            f"layer, at least one channel) keeps {floor:.1%} of the {budget.kind}"
        ) from exc
    except ValueError as exc:
        raise SolverError(f"allocator {method!r} failed: {exc}") from exc


def make_plan(graph: PruneGraph, scores: GroupScores, keep: Mapping[str, int]) -> PruningPlan:
    """Keep the best-scored channels of each group; group-conv blocks keep the same positions."""
    kept: dict[str, list[int]] = {}
    for g in graph.groups:
        n = keep.get(g.id, g.channels)
        if n >= g.channels:
            continue
        units = np.asarray(scores[g.id], dtype=np.float64).reshape(g.blocks, g.block_size).mean(0)
        best = np.sort(np.argsort(-units, kind="stable")[: n // g.blocks])
        kept[g.id] = [int(p) + b * g.block_size for b in range(g.blocks) for p in best]
    return PruningPlan.from_keep(
        kept, {g.id: g.channels for g in graph.groups}, ignore=graph.ignore, skipped=graph.skipped
    )
