"""Global ranking: keep the best-scored channels network-wide until the budget is spent.

Scores are made comparable across groups by dividing each group's scores by their root mean
square: the per-layer L2 normalisation of Molchanov et al. 2017 (applied to every criterion)
times √n for a group of n units. **Simplification of the paper, on purpose:** after plain L2
normalisation a group's scores average about 1/√n, so wide layers look unimportant because they
are wide. Molchanov prunes one map at a time with fine-tuning and a FLOPs penalty in between,
which hides that; cut in one shot it collapses them (measured: docs/methods.md#global).
Torch-Pruning's default ``normalizer="mean"`` removes the same bias.
Each group keeps
at least its ``min_units`` best units; the remaining units are ranked together and the longest
prefix of the ranking that fits the budget is kept (bisection on the real cost function, which
is monotone in the prefix length). Per-layer ratios fall out of the ranking.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from solvers.base import Allocation, AllocationProblem, Allocator, largest_feasible


def keep_best_prefix(problem: AllocationProblem, unit_scores: Mapping[str, np.ndarray]) -> Allocation:
    """Keep the longest prefix of the network-wide ranking of ``unit_scores`` that fits the budget.

    Each group keeps its ``min_units`` best units unconditionally; the rest compete in one
    ranking (higher kept first, ties in group order). Scores must already be comparable across
    groups: this is the part shared by every global-ranking allocator.
    """
    problem.check_feasible()
    floor: dict[str, int] = {}
    pool: list[tuple[float, str]] = []
    for g in problem.groups:
        ranked = np.sort(np.asarray(unit_scores[g.id], dtype=np.float64))[::-1]
        floor[g.id] = g.min_units
        pool.extend((float(s), g.id) for s in ranked[g.min_units :])
    pool.sort(key=lambda item: -item[0])

    def units_at(k: int) -> dict[str, int]:
        units = dict(floor)
        for _, gid in pool[:k]:
            units[gid] += 1
        return units

    k = largest_feasible(len(pool), lambda k: problem.cost_of_units(units_at(k)), problem.budget)
    units = units_at(k)
    return Allocation(
        keep=problem.channels(units),
        cost=problem.cost_of_units(units),
        diagnostics={"ranked_units": len(pool), "kept_units": k, "threshold": pool[k - 1][0] if k else None},
    )


class GlobalRank(Allocator):
    """One network-wide ranking of per-layer RMS-normalised channel scores, kept best-first to the budget."""

    default_criterion = "taylor"
    summary = "one network-wide ranking of normalised channel scores (fast, data-driven widths)"

    def allocate(self, problem: AllocationProblem) -> Allocation:
        return keep_best_prefix(problem, {g.id: rms_normalised(problem.unit_scores(g)) for g in problem.groups})


def rms_normalised(scores: np.ndarray) -> np.ndarray:
    """``scores`` over their root mean square (all ones when they are all zero)."""
    rms = float(np.sqrt(np.mean(np.square(scores))))
    return scores / rms if rms > 0 else np.ones_like(scores)
