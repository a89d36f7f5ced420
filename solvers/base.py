"""The allocation problem and the allocator interface. Pure numbers: no torch here.

An allocator decides how many channels each group keeps. It sees groups as counts of *units*: a
unit is one channel, or, for a group consumed by a group convolution with ``blocks`` blocks, the
same position in every block (``blocks`` channels that go together).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np


class InfeasibleBudget(ValueError):
    """No allocation within the width limits meets the budget."""


@dataclass(frozen=True, kw_only=True)
class GroupSpec:
    id: str
    channels: int
    blocks: int = 1
    min_units: int = 1

    def __post_init__(self) -> None:
        if self.channels < 1 or self.blocks < 1 or self.channels % self.blocks:
            raise ValueError(f"group {self.id}: {self.channels} channels do not split into {self.blocks} blocks")
        if not 1 <= self.min_units <= self.units:
            raise ValueError(f"group {self.id}: min_units must lie in [1, {self.units}]")

    @property
    def units(self) -> int:
        return self.channels // self.blocks


@dataclass(frozen=True, kw_only=True)
class QuadraticCost:
    """cost(k) = constant + Σ_g linear[g]·k_g + Σ_(g,h) quadratic[(g, h)]·k_g·k_h, k = channels kept.

    MACs and params of a CNN have this form: each layer costs in-width × out-width, and each width
    is affine in the keep counts of the groups that feed it. Pairs are stored once, g <= h.
    """

    constant: float
    linear: Mapping[str, float]
    quadratic: Mapping[tuple[str, str], float]

    def __call__(self, keep: Mapping[str, int]) -> float:
        total = self.constant + sum(c * keep[g] for g, c in self.linear.items())
        return total + sum(c * keep[g] * keep[h] for (g, h), c in self.quadratic.items())


@dataclass(frozen=True, kw_only=True)
class AllocationProblem:
    """Keep counts to choose so that ``cost(channels kept per group) <= budget``.

    ``scores`` holds one non-negative score per channel of each group. The optional inputs are
    built only for allocators that declare them in ``Allocator.needs``:

    - ``evaluate`` (search methods): a quality proxy, higher is better, of a channel allocation;
    - ``quadratic_cost``: ``cost`` in closed form, for mathematical programs;
    - ``layer_importance``: one non-negative weight per group (e.g. ITPruner's nHSIC-based one).
    """

    groups: tuple[GroupSpec, ...]
    scores: Mapping[str, np.ndarray]
    cost: Callable[[Mapping[str, int]], float]
    budget: float
    evaluate: Callable[[Mapping[str, int]], float] | None = None
    quadratic_cost: QuadraticCost | None = None
    layer_importance: Mapping[str, float] | None = None
    storage: str | None = None  # an SQLAlchemy URL where a search may keep its study
    study_name: str | None = None  # with ``storage``: a search finding this study continues it
    seed: int = 0
    report: Callable[[float], None] | None = None  # a long search's progress, 0-1, after each trial

    def __post_init__(self) -> None:
        for g in self.groups:
            s = self.scores.get(g.id)
            if s is None or len(s) != g.channels or not np.all(np.isfinite(s)):
                raise ValueError(f"group {g.id}: needs {g.channels} finite scores")

    def unit_scores(self, group: GroupSpec) -> np.ndarray:
        """Score of each unit: the mean over the blocks of the channel scores at that position."""
        return np.asarray(self.scores[group.id], dtype=np.float64).reshape(group.blocks, group.units).mean(0)

    def channels(self, units: Mapping[str, int]) -> dict[str, int]:
        by_id = {g.id: g for g in self.groups}
        return {gid: n * by_id[gid].blocks for gid, n in units.items()}

    def cost_of_units(self, units: Mapping[str, int]) -> float:
        return float(self.cost(self.channels(units)))

    def check_feasible(self) -> None:
        floor = self.cost_of_units({g.id: g.min_units for g in self.groups})
        if floor > self.budget:
            raise InfeasibleBudget(f"even the narrowest allowed network costs {floor:.4g} > budget {self.budget:.4g}")


@dataclass(frozen=True, kw_only=True)
class Allocation:
    """Channels kept per group, the predicted cost, and what the solver wants reported."""

    keep: Mapping[str, int]
    cost: float
    diagnostics: Mapping[str, Any] = field(default_factory=dict)


def allowed_units(group: GroupSpec, channel_step: int) -> np.ndarray:
    """Unit counts a group may keep: from ``min_units`` to all, channels a multiple of ``channel_step``
    (all units is always allowed: a width that is not a multiple may stay unpruned)."""
    units = np.arange(group.min_units, group.units + 1)
    allowed = ((units * group.blocks) % channel_step == 0) | (units == group.units)
    return units[allowed]


def snap_to_step(problem: AllocationProblem, keep: Mapping[str, int], channel_step: int) -> dict[str, int]:
    """Any allocator's keep counts, moved to widths in multiples of ``channel_step`` within the budget.

    Fast CPU/GPU kernels (onnxruntime's, cuDNN's) are tuned for channel counts in multiples of 8,
    and an odd width can make a pruned model slower than its parent. Each group first goes to
    its nearest allowed width (ties: the narrower); while that costs more than the budget, the
    group whose next narrower width gives up the least channel score per unit of cost saved
    steps down; then, while a wider step fits, the one gaining the most score per unit of cost
    steps up. Greedy, not optimal. A budget that even this cannot meet is left to the caller's
    measured check.
    """
    if channel_step == 1:
        return dict(keep)
    options = {g.id: allowed_units(g, channel_step) for g in problem.groups}
    units = {}
    for g in problem.groups:
        opts = options[g.id]
        units[g.id] = int(opts[np.argmin(np.abs(opts - keep[g.id] / g.blocks))])  # first minimum: the narrower
    ranked = {g.id: np.sort(np.asarray(problem.scores[g.id], dtype=float).reshape(-1))[::-1] for g in problem.groups}
    while (current := problem.cost_of_units(units)) > problem.budget:
        best: tuple[str, int] | None = None
        best_rate = math.inf
        for g in problem.groups:
            lower = options[g.id][options[g.id] < units[g.id]]
            if not len(lower):
                continue
            down = int(lower[-1])
            saved = current - problem.cost_of_units({**units, g.id: down})
            lost = float(ranked[g.id][down * g.blocks : units[g.id] * g.blocks].sum())
            if saved > 0 and lost / saved < best_rate:
                best, best_rate = (g.id, down), lost / saved
        if best is None:
            break
        units[best[0]] = best[1]
    while True:  # then spend what is left: the best score gained per unit of cost, while it fits
        current = problem.cost_of_units(units)
        best, best_rate = None, 0.0
        for g in problem.groups:
            higher = options[g.id][options[g.id] > units[g.id]]
            if not len(higher):
                continue
            up = int(higher[0])
            added = problem.cost_of_units({**units, g.id: up}) - current
            gained = float(ranked[g.id][units[g.id] * g.blocks : up * g.blocks].sum())
            if current + added <= problem.budget and gained / max(added, 1e-12) > best_rate:
                best, best_rate = (g.id, up), gained / max(added, 1e-12)
        if best is None:
            return problem.channels(units)
        units[best[0]] = best[1]


@dataclass(frozen=True)
class NoOptions:
    """An allocator without options of its own."""


@dataclass(frozen=True, kw_only=True)
class AllocatorContext:
    """What a job decides for every allocator: the width step kept widths snap to, the runtime a
    latency budget is measured in (None for MACs and params budgets), and for a chooser such as
    ``auto`` the candidate an earlier solve of the same problem chose (a re-solve at another
    step asks that one again instead of all)."""

    channel_step: int = 1
    latency_runtime: str | None = None
    candidate: str | None = None


class Allocator(abc.ABC):
    """Chooses keep counts for an :class:`AllocationProblem`; a plug-in that describes itself.

    ``needs`` names the optional problem inputs the allocator uses ("evaluate",
    "quadratic_cost", "layer_importance"), so callers build only those. ``budgets`` are the
    budget kinds it accepts ("flops", "params", "latency_ms"). ``default_criterion`` is the
    channel importance it is meant to rank with, ``summary`` a line for help texts. ``Options``
    is a frozen dataclass of the method's own user options: the CLI flags and HTTP form fields
    are generated from its fields (``metadata``: ``help``, and ``min``/``max`` for numbers), and
    ``configure`` builds the allocator from them. ``joinable`` allocators can take trials from
    other processes into one stored search (``join``).
    """

    needs: ClassVar[frozenset[str]] = frozenset()
    budgets: ClassVar[frozenset[str]] = frozenset({"flops", "params"})
    default_criterion: ClassVar[str] = "l1"
    summary: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    joinable: ClassVar[bool] = False

    @classmethod
    def configure(cls, options: Any, context: AllocatorContext) -> Allocator:
        """The allocator for one job, from an instance of ``Options`` and the job's context."""
        return cls()

    def join(
        self, problem: AllocationProblem, *, label: str, seed: int, should_stop: Callable[[], bool]
    ) -> dict[str, Any]:
        """Add trials to the stored search that another process leads (``joinable`` allocators)."""
        raise NotImplementedError(f"{type(self).__name__} cannot join a search")

    @abc.abstractmethod
    def allocate(self, problem: AllocationProblem) -> Allocation: ...


def largest_feasible(n: int, cost_at: Callable[[int], float], budget: float) -> int:
    """Largest k in [0, n] with cost_at(k) <= budget, for cost non-decreasing in k (bisection)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost_at(mid) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def ceil_units(ratio: float, group: GroupSpec) -> int:
    return min(group.units, max(group.min_units, math.ceil(ratio * group.units - 1e-9)))
