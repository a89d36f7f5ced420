"""HALP: structural pruning via a latency-saliency knapsack (Shen et al., NeurIPS 2022; docs/methods.md#halp).

HALP keeps, in each group, the ``p_g`` channels of highest saliency, choosing the ``p_g`` to

    maximise  Σ_g Σ_{j ≤ p_g} I_g^(j)    subject to    latency(p) ≤ C,

with ``I_g^(1) ≥ I_g^(2) ≥ …`` the group's sorted channel scores (the paper uses Taylor scores;
any criterion's scores work, unnormalised as in the paper). The latency of a layer depends on its
input and output widths, so the paper fixes every *other* width at its current value ``p̂``: each
group's cost of keeping ``j`` channels is then a function of ``j`` alone, and the problem is a
knapsack in which the ``j``-th channel of a group may be kept only with channels ``1 … j-1``
(its "augmented knapsack"). Choosing the top-``j`` prefix of each group is exactly choosing one
option ``j`` per group, so it is solved here as a *multiple-choice knapsack* by exact dynamic
programming over a discretised capacity (HALP's own DP walks the same prefixes item by item).

Algorithm (as in NVlabs/HALP ``prune/pruner.py``, with the fine-tuning between steps left out,
since the scores here are fixed):

1. Latency targets fall from the full cost to the budget on HALP's exponential schedule,
   ``L_t = exp((t/K)·ln C + (1 − t/K)·ln L_0)``, over ``steps`` = K steps. HALP takes 30 steps
   with fine-tuning between them; with fixed scores a step only re-linearises the costs, and 8
   come close to the knapsack value of more steps (measured: docs/methods.md#halp).
2. At each step, for each group and each ``j`` up to its current width, the cost change of
   keeping ``j`` channels with all other groups at their current widths is read from the cost
   function; the knapsack picks one ``j`` per group to maximise the kept saliency within the
   step's target. Channels removed at a step stay removed (HALP masks them), so widths only fall.
3. After the last step, while the real cost still exceeds the budget (the fixed-neighbour
   approximation misses the joint effect of shrinking a layer's input and output together), the
   knapsack is re-solved around the new widths; its capacity is budget − real cost, so each
   re-solve works to a smaller effective budget. The result meets ``cost(keep) <= budget``.

Groups are chosen in units (``GroupSpec``): a group-conv group keeps the same positions in each
of its ``blocks``, and a unit's saliency is the blocks' mean at that position (times ``blocks`` in
the value). Options run from ``min_units`` (HALP's ``disable_layer_prune`` keeps one) to the
current width.

Deviations, and why:

- Cost curves come from the whole cost function (``problem.cost``, e.g. a latency table's
  ``latency`` or MACs) with one group's width changed, not from per-layer lookups. This keeps the
  solver independent of the cost's structure, and it counts the consumers' input-side saving of a
  removed channel, which HALP's per-layer ``T_l(p̂_{l-1}, j)`` books only at the next step. Both
  are exact at the current widths.
- Capacity is discretised into ``resolution`` steps of the step's cost range, weights rounded up,
  so a DP solution never exceeds its capacity (HALP rounds latency × 1000 to integers).
- ``channel_step`` is HALP's channel grouping ("group size"): keep counts are multiples of it
  (or the whole group), for runtimes whose fast kernels need channel multiples (onnxruntime's
  blocked layout wants 8).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from solvers.base import Allocation, AllocationProblem, Allocator, AllocatorContext, InfeasibleBudget, allowed_units


def multiple_choice_knapsack(values: Sequence[np.ndarray], weights: Sequence[np.ndarray], capacity: int) -> list[int]:
    """One option per class maximising Σ value with Σ weight ≤ ``capacity``: exact DP, O(options · capacity).

    ``weights`` are non-negative integers. Ties go to the later option (for HALP: more channels).
    Raises :class:`InfeasibleBudget` when even the lightest options do not fit.
    """
    if capacity < 0:
        raise InfeasibleBudget(f"knapsack capacity {capacity} is negative")
    best = np.zeros(capacity + 1)  # best[c]: the largest value of the classes so far within weight c
    choices = []
    for value, weight in zip(values, weights, strict=True):
        new = np.full(capacity + 1, -np.inf)
        choice = np.full(capacity + 1, -1, dtype=np.int64)
        for k, (v, w) in enumerate(zip(value, weight, strict=True)):
            w = int(w)
            if w < 0:
                raise ValueError(f"weights must be non-negative, got {w}")
            if w > capacity:
                continue
            candidate = best[: capacity + 1 - w] + v
            better = candidate >= new[w:]
            new[w:] = np.where(better, candidate, new[w:])
            choice[w:][better] = k
        best = new
        choices.append(choice)
    if not np.isfinite(best[capacity]):
        raise InfeasibleBudget(f"no choice of options fits capacity {capacity}")
    picks = []
    c = capacity
    for choice, weight in zip(reversed(choices), reversed(weights), strict=True):
        k = int(choice[c])
        picks.append(k)
        c -= int(weight[k])
    return picks[::-1]


def saliency_per_cost(
    problem: AllocationProblem, gains: Mapping[str, np.ndarray], options: Mapping[str, np.ndarray]
) -> dict[str, float | None]:
    """For the report: each group's removable saliency ÷ the cost it carries, both at full width
    (the group cut to its fewest units, every other group whole). It is the trade the knapsack
    makes, so a layer it guts shows a low ratio: cheap saliency held by costly channels. 4 digits;
    None where removing the group saves nothing."""
    whole = {g.id: g.units for g in problem.groups}
    full = problem.cost_of_units(whole)
    out: dict[str, float | None] = {}
    for g in problem.groups:
        fewest = int(options[g.id][0])
        carried = full - problem.cost_of_units({**whole, g.id: fewest})
        removable = float(gains[g.id][g.units] - gains[g.id][fewest])
        out[g.id] = float(f"{removable / carried:.4g}") if carried > 0 else None
    return out


class HALP(Allocator):
    """Latency-saliency knapsack with HALP's step schedule; takes any additive-ish cost (latency, MACs, params)."""

    needs: ClassVar[frozenset[str]] = frozenset()
    budgets: ClassVar[frozenset[str]] = frozenset({"flops", "params", "latency_ms"})
    default_criterion = "taylor"
    summary = "HALP: latency-saliency knapsack (prunes toward a measured latency)"
    # onnxruntime's fast conv kernels want channel counts in multiples of 8, as its latency table is built
    ONNXRUNTIME_STEP: ClassVar[int] = 8

    @classmethod
    def configure(cls, options: Any, context: AllocatorContext) -> HALP:
        """The job's channel step goes into the knapsack (others are snapped afterwards)."""
        step = context.channel_step
        if context.latency_runtime == "onnxruntime":
            step = math.lcm(step, cls.ONNXRUNTIME_STEP)
        return cls(channel_step=step)

    def __init__(self, steps: int = 8, resolution: int = 16384, max_resolves: int = 20, channel_step: int = 1) -> None:
        for name, value, least in (
            ("steps", steps, 1),
            ("resolution", resolution, 16),
            ("max_resolves", max_resolves, 1),
            ("channel_step", channel_step, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
        self.steps = steps
        self.resolution = resolution
        self.max_resolves = max_resolves
        self.channel_step = channel_step

    def allocate(self, problem: AllocationProblem) -> Allocation:
        problem.check_feasible()
        if problem.budget <= 0:
            raise ValueError(f"HALP's exponential schedule needs a positive budget, not {problem.budget}")
        options = {g.id: allowed_units(g, self.channel_step) for g in problem.groups}
        gains = {
            g.id: g.blocks * np.concatenate([[0.0], np.cumsum(np.sort(problem.unit_scores(g))[::-1])])
            for g in problem.groups
        }
        units = {g.id: g.units for g in problem.groups}
        full = problem.cost_of_units(units)
        targets: np.ndarray | list[float] = (
            np.geomspace(full, problem.budget, self.steps + 1)[1:] if full > problem.budget else []
        )
        solves = 0
        for target in targets:
            units = self._solve(problem, units, float(target), options, gains)
            solves += 1
        cost = problem.cost_of_units(units)
        while cost > problem.budget:
            if all(units[g] == options[g][0] for g in units):
                raise InfeasibleBudget(
                    f"the narrowest widths in multiples of {self.channel_step} channels cost {cost:.4g}"
                    f" > budget {problem.budget:.4g}"
                )
            if solves >= len(targets) + self.max_resolves:
                raise ValueError(f"HALP did not meet the budget after {self.max_resolves} re-solves (cost {cost:.4g})")
            units = self._solve(problem, units, problem.budget, options, gains)
            solves += 1
            cost = problem.cost_of_units(units)
        value = float(sum(gains[g][n] for g, n in units.items()))
        return Allocation(
            keep=problem.channels(units),
            cost=cost,
            diagnostics={
                "solves": solves,
                "steps": len(targets),
                "predicted": cost,
                "predicted_unpruned": full,
                "value": value,
                "saliency_per_cost": saliency_per_cost(problem, gains, options),
            },
        )

    def _solve(
        self,
        problem: AllocationProblem,
        units: Mapping[str, int],
        target: float,
        options: Mapping[str, np.ndarray],
        gains: Mapping[str, np.ndarray],
    ) -> dict[str, int]:
        """One knapsack around the current widths: each group's cost curve with the others fixed."""
        current = problem.cost_of_units(units)
        ids = list(units)
        choices = [options[g][options[g] <= units[g]] for g in ids]
        deltas = [
            np.array([problem.cost_of_units({**units, g: int(n)}) - current if n != units[g] else 0.0 for n in ns])
            for g, ns in zip(ids, choices, strict=True)
        ]
        lows = [d.min() for d in deltas]
        room = target - current - sum(lows)
        if room < 0:  # even the lightest choices overshoot this linearisation: take them, the caller re-solves
            return {g: int(ns[np.argmin(d)]) for g, ns, d in zip(ids, choices, deltas, strict=True)}
        span = sum(d.max() - low for d, low in zip(deltas, lows, strict=True))
        quantum = span / self.resolution if span > 0 else 1.0
        weights = [np.ceil((d - low) / quantum - 1e-9).astype(np.int64) for d, low in zip(deltas, lows, strict=True)]
        capacity = min(math.floor(room / quantum + 1e-9), int(sum(w.max() for w in weights)))
        picks = multiple_choice_knapsack([gains[g][ns] for g, ns in zip(ids, choices, strict=True)], weights, capacity)
        return {g: int(ns[k]) for g, ns, k in zip(ids, choices, picks, strict=True)}
