"""NAP allocation (Zeng, Xiong & Urtasun, 2021; docs/methods.md#nap): one global ranking of saliencies.

Fed K-FAC/OBS saliencies (``importance/kfac.py``), every score is an estimate of the same scalar,
the increase of the training loss when the channel goes. So, unlike :class:`GlobalRank`, NAP does
*not* normalise per layer: scores (divided by the cost a unit saves, below) are ranked
network-wide, the lowest removed first, and the longest prefix of the ranking that fits the
budget is kept (bisection on the real cost). The
per-layer ratios fall out with no per-layer knobs.

- A unit of a group-conv group is ``blocks`` channels removed together; under the block-diagonal
  curvature their losses add, so a unit scores the *sum* of its channels (not the mean).
- ``per_cost=True`` (the default) ranks by loss increase per unit of cost saved, s / ΔC: the
  greedy solution of "least loss increase for the cost to remove", which is the budget. ΔC is
  the cost one unit of the group saves at full width (the marginal of the real cost function; it
  shrinks as neighbours are pruned, which the ranking ignores). NAP/MLPrune rank raw saliencies
  because their unit is a weight, and every weight costs one parameter; channels do not cost the
  same. Ranked raw under a MACs budget, channels of the late low-resolution stages (low loss
  each, few MACs each) went first and many of them were needed: on the benchmark's ResNet-20 at
  half the MACs stage 3 fell to the 10% floor, 20–30% of the parameters were left, and NAP lost
  to random channel choice (docs/methods.md#nap). ``per_cost=False`` is the raw ranking.
- The per-layer cap against layer collapse is the problem's ``min_units``.

NAP's iterative algorithm (prune a step, re-estimate the curvature, repeat) is a pipeline
schedule, not an allocator: each step builds a fresh problem from re-computed saliencies.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from solvers.base import Allocation, AllocationProblem, Allocator, GroupSpec
from solvers.global_rank import keep_best_prefix


class NAP(Allocator):
    """Keep the channels with the largest loss-increase saliency per cost saved network-wide, to the budget.

    Diagnostics: the ranking's (``ranked_units``, ``kept_units``, ``threshold``) and, for the
    report's plot, ``group_median_score``: the median ranked score of each group (4 digits).
    """

    default_criterion = "kfac"
    summary = "NAP: network-wide ranking of K-FAC/OBS loss increase per cost saved"

    def __init__(self, per_cost: bool = True) -> None:
        if not isinstance(per_cost, bool):
            raise ValueError(f"per_cost must be True or False, got {per_cost!r}")
        self.per_cost = per_cost

    def allocate(self, problem: AllocationProblem) -> Allocation:
        scores = {g.id: problem.unit_scores(g) * g.blocks for g in problem.groups}
        if self.per_cost:
            scores = {g.id: per_saving(scores[g.id], unit_saving(problem, g)) for g in problem.groups}
        allocation = keep_best_prefix(problem, scores)
        median = {gid: float(np.median(s)) for gid, s in scores.items()}
        shown = {gid: float(f"{m:.4g}") if np.isfinite(m) else None for gid, m in median.items()}  # inf: saves nothing
        return replace(allocation, diagnostics={**allocation.diagnostics, "group_median_score": shown})


def unit_saving(problem: AllocationProblem, group: GroupSpec) -> float:
    """Cost saved by removing one unit of ``group`` from the full network."""
    full = {g.id: g.units for g in problem.groups}
    return problem.cost_of_units(full) - problem.cost_of_units({**full, group.id: group.units - 1})


def per_saving(scores: np.ndarray, saving: float) -> np.ndarray:
    """Loss increase per cost saved; units whose removal saves nothing are kept first (inf)."""
    return scores / saving if saving > 0 else np.full_like(scores, np.inf)
