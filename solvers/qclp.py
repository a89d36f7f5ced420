"""ITPruner's allocation (Zheng et al., arXiv 2108.08532) as a convex program solved by cvxpy.

The paper: choose keep ratios x_i ∈ [0, 1], one per width variable, to maximise Σ α_i x_i
subject to F(x) = Σ a_i x_i + Σ q_i x_i² + Σ_{i<j} b_ij x_i x_j ≤ F_target, where α_i is the
nHSIC-based layer weight (``autoprune.importance.hsic.layer_importance``) and F the MACs. The
released code hands this to SLSQP from x = 1. With b_ij ≥ 0 the constraint set is not convex
(the quadratic form is indefinite), so SLSQP returns a local KKT point. Here the width
variables are the channel groups, F is the project's exact closed form
(``AllocationProblem.quadratic_cost``, in channels kept, turned into ratios), and one of two
convex programs is solved to global optimality (docs/methods.md#itpruner):

- ``"qclp"`` (default): the paper's objective Σ α_i x_i with each b_ij x_i x_j replaced by its
  upper bound b_ij (x_i² + x_j²)/2, a convex quadratic constraint. Exact when x_i = x_j,
  conservative otherwise, so the relaxed solution lands under budget and the repair below grows
  it back. With the cost-carried weights of :func:`ratio_program` and a cost without linear
  terms, the relaxed optimum is x_i ∝ α_i (clipped to the bounds): equal α give equal ratios.
- ``"gp"``: the geometric program max Π x_i^{α_i} (i.e. Σ α_i log x_i) s.t.
  F(x) − F(0) ≤ F_target − F(0), lower ≤ x ≤ 1. The constraint is the exact cost (a posynomial
  when every coefficient is ≥ 0), so the relaxed optimum sits on the budget. The objective is
  a log-utility version of ITPruner's Σ α_i x_i: at the optimum, x_i ∂F/∂x_i ∝ α_i, so the
  budget is shared in proportion to the layer weights. Deviation from the paper's objective.
  With cost-carried weights it is degenerate on residual networks: scaling a residual stream's
  ratio by t and its blocks' inner ratios by 1/t leaves every conv's MACs, and the objective,
  unchanged, so small differences in α decide the optimum along that direction. Until
  2026-12-03 it was the default (with α-only weights, which cut the residual streams).

Both: a lower bound ``min_units/units`` on every ratio (the released code's bound of 0 can
empty a layer); ratios rounded down to whole units (``blocks`` channels for group-conv groups);
then grown back greedily, one unit at a time, to the group with the best objective gain per unit
of exact cost that still fits, checked with ``problem.cost`` itself (if the solver's tolerance
left the rounded point over budget, units are first removed by the smallest loss per cost).
Beyond the paper's plain rounding, for ``"gp"`` a local search then tries exchanges (one more
unit in a group, paid for by shrinking the others) and keeps those that raise the objective:
rounding down a group near its lower bound can otherwise lose much more than one unit's worth.
Not for ``"qclp"``, whose linear objective on the exact cost is maximised at corners
(:func:`round_to_budget`).
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from solvers.base import Allocation, AllocationProblem, Allocator

if TYPE_CHECKING:  # cvxpy takes about a second to import: only ITPruner jobs pay for it
    import cvxpy as cp

FORMULATIONS = ("gp", "qclp")
ROUNDING_SLACK = 1e-6  # a relaxed ratio within this many units below an integer rounds up to it

Utility = Callable[[np.ndarray], np.ndarray]
"""The per-group utility of a keep ratio (elementwise); the objective is Σ α_i·utility(x_i)."""


@dataclass(frozen=True, kw_only=True)
class RatioProgram:
    """The allocation problem in keep ratios x (kept / total channels) of each group, in order.

    cost(x) = constant + linear·x + xᵀ·quadratic·x, ``quadratic`` upper-triangular (each pair
    once, diagonal = squares); ``units`` are the whole-unit counts ratios are rounded to.
    """

    alpha: np.ndarray
    lower: np.ndarray
    units: np.ndarray
    constant: float
    linear: np.ndarray
    quadratic: np.ndarray
    budget: float

    def cost(self, x: np.ndarray) -> float:
        return float(self.constant + self.linear @ x + x @ self.quadratic @ x)

    def unit_cost_up(self, x: np.ndarray) -> np.ndarray:
        """Exact cost added by one more unit in group i alone, for each i, from ratios ``x``."""
        step = 1.0 / self.units
        return step * (self.linear + (self.quadratic + self.quadratic.T) @ x) + np.diag(self.quadratic) * step**2

    def unit_cost_down(self, x: np.ndarray) -> np.ndarray:
        """Exact cost saved by one unit less in group i alone, for each i, from ratios ``x``."""
        step = 1.0 / self.units
        return step * (self.linear + (self.quadratic + self.quadratic.T) @ x) - np.diag(self.quadratic) * step**2


def build_program(
    alpha: np.ndarray,
    lower: np.ndarray,
    linear: np.ndarray,
    quadratic: np.ndarray,
    budget: float,
    formulation: str = "qclp",
) -> tuple[cp.Problem, cp.Variable]:
    """The cvxpy program over ratios x for the variable part of the cost: cost(x) − cost(0) ≤ budget.

    ``quadratic`` is upper-triangular (pairs once, squares on the diagonal). For a well-scaled
    solve, cost coefficients are divided by ``budget`` (the constraint reads ≤ 1) and α by its
    maximum (neither objective's maximiser depends on a common factor of α).
    """
    alpha, lower, linear = (np.asarray(a, dtype=np.float64) for a in (alpha, lower, linear))
    quadratic = np.triu(np.asarray(quadratic, dtype=np.float64))
    _check_arrays(alpha, lower, linear, quadratic, budget, formulation)
    alpha, linear, quadratic = alpha / alpha.max(), linear / budget, quadratic / budget
    if formulation == "gp":
        return _geometric_program(alpha, lower, linear, quadratic)
    return _convexified_program(alpha, lower, linear, quadratic)


def solve_program(problem: cp.Problem, x: cp.Variable, solver: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Solve; ValueError naming the status unless it is (possibly inaccurately) optimal.

    ``optimal_inaccurate`` is accepted: the relaxed widths only seed the rounding, which checks
    every candidate against the exact cost, so a slightly inaccurate optimum can cost objective
    value but never the budget. The status is reported in the diagnostics.
    """
    import cvxpy as cp

    start = time.perf_counter()
    try:
        problem.solve(gp=not problem.is_dcp(), solver=solver)
    except cp.SolverError as exc:
        raise ValueError(f"cvxpy solver {solver} failed: {exc}") from exc
    seconds = time.perf_counter() - start
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE) or x.value is None:
        raise ValueError(f"cvxpy solver {solver} returned status {problem.status!r}, not optimal")
    info = {
        "solver": problem.solver_stats.solver_name,
        "status": problem.status,
        "solve_time_s": seconds,
        "objective": float(problem.value),
    }
    return np.asarray(x.value, dtype=np.float64), info


class ITPruner(Allocator):
    """Layer-weighted widths under an exact MACs/params quadratic, via a convex program (see module).

    Diagnostics: ``solver``, ``status``, ``solve_time_s`` (compile + solve), ``objective`` (the
    solver's value of the normalised program), ``relaxed_cost_over_budget`` (exact cost of the
    relaxed ratios / budget), both objectives with the program's weights at the relaxed and at
    the final ratios (``relaxed_objective_linear``/``_log``, ``objective_linear``/``_log``), and
    what the rounding repair did (``grown_units``, ``exchanges``); ``layer_weights``: the nHSIC α
    per group, divided by its maximum (for the report's plot).

    ``weigh_by_cost`` (default True): each group's weight is α times the cost it carries
    (:func:`ratio_program`); False weighs by α alone, as before 2026-12-03.
    """

    needs = frozenset({"quadratic_cost", "layer_importance"})
    budgets = frozenset({"flops", "params"})
    summary = "ITPruner: nHSIC layer importance, widths from a convex program"

    def __init__(self, formulation: str = "qclp", solver: str = "CLARABEL", weigh_by_cost: bool = True) -> None:
        import cvxpy as cp

        if formulation not in FORMULATIONS:
            raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
        if solver not in cp.installed_solvers():
            raise ValueError(f"solver {solver!r} is not installed; installed: {cp.installed_solvers()}")
        if not isinstance(weigh_by_cost, bool):
            raise ValueError(f"weigh_by_cost must be True or False, got {weigh_by_cost!r}")
        self.formulation = formulation
        self.solver = solver
        self.weigh_by_cost = weigh_by_cost

    def allocate(self, problem: AllocationProblem) -> Allocation:
        problem.check_feasible()
        program = ratio_program(problem, self.weigh_by_cost)
        cvx, x = build_program(
            program.alpha,
            program.lower,
            program.linear,
            program.quadratic,
            program.budget - program.constant,
            self.formulation,
        )
        relaxed, info = solve_program(cvx, x, self.solver)
        relaxed = np.clip(relaxed, program.lower, 1.0)
        utility: Utility = np.log if self.formulation == "gp" else np.asarray
        units, rounding = round_to_budget(problem, program, relaxed, utility, exchange=self.formulation == "gp")
        final = units / program.units
        importance = np.array([float(problem.layer_importance[g.id]) for g in problem.groups])  # type: ignore[index]
        weights = importance / importance.max()
        diagnostics = {
            "formulation": self.formulation,
            **info,
            "relaxed_cost_over_budget": program.cost(relaxed) / problem.budget,
            "relaxed_objective_linear": float(program.alpha @ relaxed),
            "relaxed_objective_log": float(program.alpha @ np.log(relaxed)),
            "objective_linear": float(program.alpha @ final),
            "objective_log": float(program.alpha @ np.log(final)),
            **rounding,
            "layer_weights": {g.id: round(float(w), 4) for g, w in zip(problem.groups, weights, strict=True)},
        }
        keep_units = {g.id: int(u) for g, u in zip(problem.groups, units, strict=True)}
        return Allocation(
            keep=problem.channels(keep_units), cost=problem.cost_of_units(keep_units), diagnostics=diagnostics
        )


def ratio_program(problem: AllocationProblem, weigh_by_cost: bool = True) -> RatioProgram:
    """The problem's quadratic cost and layer weights as arrays over its groups' keep ratios.

    With ``weigh_by_cost`` a group's weight is its α times the cost it carries at full width
    (x_i ∂F/∂x_i at x = 1: its share of the cost's variable part). ITPruner's variables are
    single layers, each with its own α, and the CIFAR ResNets' layers all cost about the same
    MACs; a group here ties several layers together (a residual stream: every block's output
    and input), and tying layers sums their terms, so its weight is the sum of its layers'. With
    equal α the ``"qclp"`` optimum is then the uniform ratio for a cost without linear terms, as
    in the paper's released near-uniform CIFAR configurations; unweighted, the log-utility program gave
    every group the same cost share, so the residual streams, which carry several layers' MACs,
    were cut to a few channels (docs/methods.md#itpruner).
    """
    q, importance = problem.quadratic_cost, problem.layer_importance
    if q is None:
        raise ValueError("ITPruner needs problem.quadratic_cost (the closed-form cost)")
    if importance is None:
        raise ValueError("ITPruner needs problem.layer_importance (one weight per group)")
    ids = [g.id for g in problem.groups]
    index = {gid: i for i, gid in enumerate(ids)}
    missing = [gid for gid in ids if gid not in importance]
    if missing:
        raise ValueError(f"layer_importance has no weight for groups {missing}")
    unknown = sorted({*q.linear, *(g for pair in q.quadratic for g in pair)} - set(ids))
    if unknown:
        raise ValueError(f"quadratic_cost names groups the problem does not have: {unknown}")
    channels = np.array([g.channels for g in problem.groups], dtype=np.float64)
    quadratic = np.zeros((len(ids), len(ids)))
    for (g, h), c in q.quadratic.items():
        i, j = sorted((index[g], index[h]))
        quadratic[i, j] += c * channels[i] * channels[j]
    linear = np.array([q.linear.get(gid, 0.0) for gid in ids]) * channels
    alpha = np.array([float(importance[gid]) for gid in ids])
    if weigh_by_cost:
        alpha = alpha * (linear + (quadratic + quadratic.T) @ np.ones(len(ids)))
    program = RatioProgram(
        alpha=alpha,
        lower=np.array([g.min_units / g.units for g in problem.groups]),
        units=np.array([g.units for g in problem.groups], dtype=np.float64),
        constant=float(q.constant),
        linear=linear,
        quadratic=quadratic,
        budget=float(problem.budget),
    )
    full = float(problem.cost({g.id: g.channels for g in problem.groups}))
    at_full = program.cost(np.ones(len(ids)))
    if not math.isclose(at_full, full, rel_tol=1e-6, abs_tol=1.0):
        raise ValueError(f"quadratic_cost gives {at_full:.6g} at full width but cost gives {full:.6g}")
    return program


def _gain(program: RatioProgram, utility: Utility, units: np.ndarray) -> np.ndarray:
    """Objective gained by one more unit in group i alone, for each i."""
    return program.alpha * (utility((units + 1) / program.units) - utility(units / program.units))


def round_to_budget(
    problem: AllocationProblem, program: RatioProgram, ratios: np.ndarray, utility: Utility, exchange: bool = True
) -> tuple[np.ndarray, dict[str, int]]:
    """Whole units from relaxed ratios with ``problem.cost`` ≤ budget, and what the repair did.

    Round down (shrinking further if the solver's tolerance left the point over budget), grow
    back greedily, then (``exchange``) try exchanges: one more unit in a group paid for by
    shrinking the others. Rounding down a group that sits near its lower bound can lose more
    objective than the greedy can regain (a knapsack effect, large when groups have few units);
    the exchanges recover it. Not for the linear objective ("qclp"): under the exact bilinear
    cost its optimum lies at corners (the non-convexity the convex bound avoids), and the
    exchanges walked there: on a partly trained ResNet-20 at half the MACs, 46 exchanges took the relaxed
    ratios 0.60–0.89 to 4 of 32 and 7 of 64 channels in some groups, whole in others.
    """
    low = np.array([g.min_units for g in problem.groups], dtype=np.float64)
    units = np.clip(np.floor(ratios * program.units + ROUNDING_SLACK), low, program.units)
    units = _shrink(problem, program, units, low, utility)
    if units is None:  # unreachable after check_feasible: the lower bounds fit the budget
        raise ValueError("no whole-unit allocation fits the budget")
    units, grown = _grow(problem, program, units, utility)
    units, exchanges = _exchange(problem, program, units, low, utility) if exchange else (units, 0)
    return units, {"grown_units": grown, "exchanges": exchanges}


def _objective(program: RatioProgram, utility: Utility, units: np.ndarray) -> float:
    return float(program.alpha @ utility(units / program.units))


def _cost(problem: AllocationProblem, units: np.ndarray) -> float:
    return problem.cost_of_units({g.id: int(u) for g, u in zip(problem.groups, units, strict=True)})


def _shrink(
    problem: AllocationProblem,
    program: RatioProgram,
    units: np.ndarray,
    low: np.ndarray,
    utility: Utility,
    frozen: int | None = None,
) -> np.ndarray | None:
    """Remove units (never from ``frozen``) until the real cost fits; None if it cannot.

    Each step removes the unit with the least objective lost per cost saved, counting no more
    saving than the excess still to remove: a unit that saves far more than needed is no better
    for it, and removing it would waste budget the greedy growth may not be able to refill.
    """
    while (excess := _cost(problem, units) - problem.budget) > 0:
        can = units > low
        if frozen is not None:
            can[frozen] = False
        if not can.any():
            return None
        lost = _gain(program, utility, np.where(can, units - 1, units))
        saved = np.minimum(program.unit_cost_down(units / program.units), excess)
        units = units.copy()
        units[int(np.argmin(np.where(can, lost / np.maximum(saved, 1e-300), np.inf)))] -= 1
    return units


def _grow(
    problem: AllocationProblem, program: RatioProgram, units: np.ndarray, utility: Utility
) -> tuple[np.ndarray, int]:
    """Add units, best objective gained per cost first, while the real cost stays within budget."""
    cost = _cost(problem, units)
    open_ = units < program.units
    added = 0
    while True:
        extra = program.unit_cost_up(units / program.units)
        fits = open_ & (extra <= (problem.budget - cost) * (1 + 1e-9) + 1e-9)
        if not fits.any():
            return units, added
        value = np.where(fits, _gain(program, utility, units) / np.maximum(extra, 1e-300), -np.inf)
        i = int(np.argmax(value))
        trial = units.copy()
        trial[i] += 1
        trial_cost = _cost(problem, trial)
        if trial_cost <= problem.budget:
            units, cost, added = trial, trial_cost, added + 1
            open_[i] = units[i] < program.units[i]
        else:  # the cost is non-decreasing, so this group cannot grow later either
            open_[i] = False


def _exchange(
    problem: AllocationProblem, program: RatioProgram, units: np.ndarray, low: np.ndarray, utility: Utility
) -> tuple[np.ndarray, int]:
    """Local search: give a group one more unit, shrink the others to fit, grow back; keep if better."""
    value = _objective(program, utility, units)
    accepted = 0
    improved = True
    while improved:
        improved = False
        for i in np.flatnonzero(units < program.units):
            trial = units.copy()
            trial[i] += 1
            shrunk = _shrink(problem, program, trial, low, utility, frozen=int(i))
            if shrunk is None:
                continue
            trial, _ = _grow(problem, program, shrunk, utility)
            trial_value = _objective(program, utility, trial)
            if trial_value > value + 1e-12 * max(1.0, abs(value)):
                units, value, accepted, improved = trial, trial_value, accepted + 1, True
                break
    return units, accepted


def _check_arrays(
    alpha: np.ndarray, lower: np.ndarray, linear: np.ndarray, quadratic: np.ndarray, budget: float, formulation: str
) -> None:
    n = len(alpha)
    if formulation not in FORMULATIONS:
        raise ValueError(f"formulation must be one of {FORMULATIONS}, got {formulation!r}")
    if lower.shape != (n,) or linear.shape != (n,) or quadratic.shape != (n, n):
        raise ValueError(f"alpha, lower, linear must have shape ({n},) and quadratic ({n}, {n})")
    if not (np.all(np.isfinite(alpha)) and np.all(alpha >= 0) and alpha.sum() > 0):
        raise ValueError("alpha (layer importance) must be finite, non-negative and not all zero")
    if not np.all((lower > 0) & (lower <= 1)):
        raise ValueError("lower bounds on the ratios must lie in (0, 1]")
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"the budget left after the fixed cost must be positive, got {budget}")
    if not (np.all(np.isfinite(linear)) and np.all(np.isfinite(quadratic))):
        raise ValueError("cost coefficients must be finite")
    if np.any(quadratic < 0) or np.any(linear < 0):
        raise ValueError(
            "cost coefficients must be non-negative, as those of MACs and params are: otherwise the "
            "cost is not a posynomial (gp), its convex bound does not hold (qclp), and it is not monotone"
        )


def _geometric_program(
    alpha: np.ndarray, lower: np.ndarray, linear: np.ndarray, quadratic: np.ndarray
) -> tuple[cp.Problem, cp.Variable]:
    """max Π x_i^α_i s.t. linear·x + xᵀQx ≤ 1, lower ≤ x ≤ 1 (a GP: solve with gp=True)."""
    import cvxpy as cp

    n = len(alpha)
    x = cp.Variable(n, pos=True)
    utility = functools.reduce(operator.mul, [x[i] ** float(alpha[i]) for i in range(n) if alpha[i] > 0])
    terms = [float(linear[i]) * x[i] for i in range(n) if linear[i] > 0]
    terms += [float(quadratic[i, j]) * x[i] * x[j] for i, j in zip(*np.nonzero(quadratic), strict=True)]
    constraints = [x >= lower, x <= 1]
    if terms:
        constraints.append(functools.reduce(operator.add, terms) <= 1)
    return cp.Problem(cp.Maximize(utility), constraints), x


def _convexified_program(
    alpha: np.ndarray, lower: np.ndarray, linear: np.ndarray, quadratic: np.ndarray
) -> tuple[cp.Problem, cp.Variable]:
    """max α·x s.t. linear·x + Σ d_i x_i² ≤ 1, lower ≤ x ≤ 1, with d_i = Q_ii + ½ Σ_{j≠i} Q_ij.

    Each cross term b x_i x_j is replaced by its upper bound b (x_i² + x_j²)/2 (b ≥ 0).
    """
    import cvxpy as cp

    off = quadratic - np.diag(np.diag(quadratic))
    d = np.diag(quadratic) + 0.5 * (off.sum(0) + off.sum(1))
    x = cp.Variable(len(alpha))
    cost = linear @ x + cp.sum(cp.multiply(d, cp.square(x)))
    return cp.Problem(cp.Maximize(alpha @ x), [cost <= 1, x >= lower, x <= 1]), x
