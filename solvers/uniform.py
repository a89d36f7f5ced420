"""The same keep ratio in every group: the baseline every results table needs."""

from __future__ import annotations

from solvers.base import Allocation, AllocationProblem, Allocator, ceil_units


class Uniform(Allocator):
    """Bisect the common keep ratio on the real cost, then top up by single units.

    Rounding to whole channels makes the cost jump in steps; the top-up adds one unit at a time
    to the group with the lowest keep ratio that still fits, so the budget is met to within one
    unit while ratios stay equal up to one unit per group.
    """

    summary = "the same keep ratio in every layer (the baseline)"

    def __init__(self, iterations: int = 40) -> None:
        self.iterations = iterations

    def allocate(self, problem: AllocationProblem) -> Allocation:
        problem.check_feasible()
        groups = problem.groups
        lo, hi = 0.0, 1.0
        for _ in range(self.iterations):
            mid = (lo + hi) / 2
            if problem.cost_of_units({g.id: ceil_units(mid, g) for g in groups}) <= problem.budget:
                lo = mid
            else:
                hi = mid
        units = {g.id: ceil_units(lo, g) for g in groups}
        growing = True
        while growing:
            growing = False
            for g in sorted(groups, key=lambda g: (units[g.id] / g.units, g.id)):
                if units[g.id] < g.units:
                    trial = {**units, g.id: units[g.id] + 1}
                    if problem.cost_of_units(trial) <= problem.budget:
                        units = trial
                        growing = True
                        break
        return Allocation(
            keep=problem.channels(units),
            cost=problem.cost_of_units(units),
            diagnostics={"ratio": lo},
        )
