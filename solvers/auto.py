"""``auto`` for MACs and params budgets: run several allocators, keep the one whose network scores best.

No allocator wins everywhere (docs/methods.md#auto): which layer widths a net tolerates depends on
the net, and the proxy that ranks candidate networks, EagleEye's adaptive-BN accuracy on a
held-out part of the training split (``problem.evaluate``, the same evaluation the evolution
search uses), is cheap next to fine-tuning. So each candidate allocator solves the same problem
(same channel scores, per-layer limits and budget), its keep counts are snapped to the job's
channel step as the job would snap them, the network is scored, and the best score wins (ties:
the earlier candidate, global ranking first). A candidate that fails (e.g. a solver status) is
reported and skipped; an infeasible budget is infeasible for all, so it is raised.

Simplification: every candidate ranks channels with the job's one criterion (Taylor by default),
so ``nap`` here ranks raw Taylor saliencies, not K-FAC ones with OBS compensation, and the
candidates differ only in their widths.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from solvers.base import (
    Allocation,
    AllocationProblem,
    Allocator,
    AllocatorContext,
    InfeasibleBudget,
    snap_to_step,
)
from solvers.evolution import Evolution
from solvers.global_rank import GlobalRank
from solvers.nap import NAP
from solvers.qclp import ITPruner
from solvers.uniform import Uniform

EVOLUTION_TRIALS = 8  # a short search warm-started at uniform: its cost next to a fine-tune, docs/methods.md#auto


def default_candidates(search_trials: int = EVOLUTION_TRIALS) -> dict[str, Allocator]:
    """The candidates, in tie-break order; the evolution search only with ``search_trials`` > 0."""
    candidates: dict[str, Allocator] = {
        "global": GlobalRank(),
        "uniform": Uniform(),
        "nap": NAP(),
        "itpruner": ITPruner(),
    }
    if search_trials > 0:
        candidates["evolution"] = Evolution(trials=search_trials, population=min(4, max(2, search_trials)))
    return candidates


class Auto(Allocator):
    """Chooses among candidate allocators by ``problem.evaluate``; diagnostics list every candidate.

    Diagnostics: the chosen allocator's own, plus ``auto_chosen`` (its name) and
    ``auto_candidates``: per candidate its ``score``, ``cost_over_budget``, ``seconds`` (allocation
    and evaluation) and ``chosen``, or its ``error``.
    """

    needs = frozenset({"evaluate", "quadratic_cost", "layer_importance"})
    budgets = frozenset({"flops", "params"})
    default_criterion = "taylor"
    summary = "the default: global, uniform, nap, itpruner, a short evolution; best adaptive-BN accuracy kept"

    @dataclass(frozen=True)
    class Options:
        auto_search_trials: int | None = field(
            default=None,
            metadata={
                "help": f"trials of its evolution candidate (default {EVOLUTION_TRIALS}; 0: none)",
                "min": 0,
                "max": 500,
            },
        )

    @classmethod
    def configure(cls, options: Any, context: AllocatorContext) -> Auto:
        """Candidates are scored at the widths the job keeps: snapped to its channel step. With
        ``context.candidate`` (a re-solve of a problem auto solved before), only that one runs."""
        trials = EVOLUTION_TRIALS if options.auto_search_trials is None else options.auto_search_trials
        candidates = default_candidates(trials)
        if context.candidate is not None:
            candidates = {context.candidate: candidates[context.candidate]}
        return cls(candidates, channel_step=context.channel_step)

    def __init__(self, candidates: Mapping[str, Allocator] | None = None, channel_step: int = 1) -> None:
        self.candidates = dict(default_candidates() if candidates is None else candidates)
        if not self.candidates:
            raise ValueError("auto needs at least one candidate allocator")
        self.channel_step = channel_step

    def allocate(self, problem: AllocationProblem) -> Allocation:
        problem.check_feasible()
        if problem.evaluate is None:
            raise ValueError("auto needs problem.evaluate (a score of keep counts) to compare candidates")
        rows: list[dict[str, Any]] = []
        best: tuple[float, str, Allocation] | None = None
        for name, allocator in self.candidates.items():
            start = time.perf_counter()
            try:
                allocation = allocator.allocate(problem)
            except InfeasibleBudget:  # infeasible for one is infeasible for all
                raise
            except ValueError as exc:
                rows.append({"method": name, "error": str(exc), "seconds": round(time.perf_counter() - start, 3)})
                continue
            keep = snap_to_step(problem, allocation.keep, self.channel_step)
            searched = allocation.diagnostics.get("best_score")
            score = float(searched) if searched is not None and keep == dict(allocation.keep) else None
            score = float(problem.evaluate(keep)) if score is None else score  # a search scored its best already
            cost = problem.cost(keep)
            rows.append(
                {
                    "method": name,
                    "score": round(score, 4),
                    "cost_over_budget": round(cost / problem.budget, 4),
                    "seconds": round(time.perf_counter() - start, 3),
                }
            )
            if best is None or score > best[0]:
                best = (score, name, replace(allocation, keep=keep, cost=cost))
        if best is None:
            raise ValueError("every candidate failed: " + "; ".join(f"{r['method']}: {r['error']}" for r in rows))
        _, chosen, allocation = best
        for row in rows:
            row["chosen"] = row["method"] == chosen
        diagnostics = {**allocation.diagnostics, "auto_chosen": chosen, "auto_candidates": rows}
        return replace(allocation, diagnostics=diagnostics)
