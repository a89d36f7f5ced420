"""Bridge from a real model to a solver: build the AllocationProblem, turn keep counts into a plan."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from autoprune import catalog
from autoprune.adaptive_bn import make_evaluator
from autoprune.budget import Budget
from autoprune.data import ImageData
from autoprune.errors import BudgetError, SolverError
from autoprune.graph import ChannelGroup, PruneGraph
from autoprune.importance import Batches, GroupScores
from autoprune.importance.hsic import layer_importance
from autoprune.measure import CostModel, count_cost
from autoprune.spec import SpecError
from solvers import Allocation, AllocationProblem, Allocator, GroupSpec, InfeasibleBudget
from solvers.base import snap_to_step

DEFAULT_FLOOR = "default"  # the floor's name when no user limit sets it: ``min_keep_fraction`` of each group


@dataclass(frozen=True, kw_only=True)
class LayerLimits:
    """Per-group limits a user sets (``--max-layer-prune``, ``--keep``, ``layer_limits``).

    A limit is a fraction F a group may lose at most: it keeps at least ⌈(1 − F)·units⌉ units of
    its *original* width (an iterative schedule's later cuts count from the unpruned model).
    ``max_prune`` applies to every group and replaces the default floor (``min_keep_fraction``);
    ``per_group`` maps glob patterns to F for the groups they match, the smallest F of those
    that match winning; ``keep`` patterns leave their groups whole (F = 0). A pattern matches a
    group by its id or by a layer producing its channels (``Member.dim == "out"``), so ``layer1.*``
    also reaches a residual stream that ``layer1``'s blocks write to. A pattern that matches no
    group is an error: it is a typo, or a layer the graph cannot prune.
    """

    max_prune: float | None = None
    keep: tuple[str, ...] = ()
    per_group: Mapping[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.max_prune is not None or bool(self.keep) or bool(self.per_group)

    def describe(self) -> str:
        parts = [f"--max-layer-prune {self.max_prune:g}"] if self.max_prune is not None else []
        parts += [f"--keep {p}" for p in self.keep]
        parts += [f"--layer-limit {p}={f:g}" for p, f in self.per_group.items()]
        return ", ".join(parts)

    def fractions(self, graph: PruneGraph) -> dict[str, tuple[float, str]]:
        """Groups a limit applies to: (the most they may lose, the limit's name)."""
        names = {g.id: [g.id, *(m.module for m in g.members if m.dim == "out")] for g in graph.groups}
        rules = [(p, 0.0, f"--keep {p}") for p in self.keep]
        rules += [(p, f, f"--layer-limit {p}={f:g}") for p, f in self.per_group.items()]
        out: dict[str, tuple[float, str]] = {}
        for pattern, fraction, label in rules:
            hits = [gid for gid, ns in names.items() if any(fnmatch.fnmatchcase(n, pattern) for n in ns)]
            if not hits:
                shown = ", ".join(list(names)[:12]) + (", ..." if len(names) > 12 else "")
                raise SpecError(f"{label} matches no prunable layer group; the groups are: {shown}")
            for gid in hits:
                if gid not in out or fraction < out[gid][0]:
                    out[gid] = (fraction, label)
        if self.max_prune is not None:
            for gid in names:
                out.setdefault(gid, (self.max_prune, f"--max-layer-prune {self.max_prune:g}"))
        return out


def group_specs(
    graph: PruneGraph,
    min_keep_fraction: float,
    limits: LayerLimits | None = None,
    original: Mapping[str, int] | None = None,
) -> tuple[GroupSpec, ...]:
    """Solver view of the groups; each keeps at least ``min_keep_fraction`` of its units (≥ 1), or
    what ``limits`` ask of its ``original`` width (default: its width now)."""
    return tuple(GroupSpec(id=g.id, channels=g.channels, blocks=g.blocks, min_units=n) for g, n, _ in
                 floors(graph, min_keep_fraction, limits, original))  # fmt: skip


def floors(
    graph: PruneGraph,
    min_keep_fraction: float,
    limits: LayerLimits | None = None,
    original: Mapping[str, int] | None = None,
) -> list[tuple[ChannelGroup, int, str]]:
    """Each group, the fewest units it may keep, and the name of the limit that sets it."""
    fractions = limits.fractions(graph) if limits else {}
    out = []
    for g in graph.groups:
        if g.id not in fractions:
            out.append((g, max(1, math.ceil(min_keep_fraction * g.block_size)), DEFAULT_FLOOR))
            continue
        fraction, label = fractions[g.id]
        units = (original or {}).get(g.id, g.channels) // g.blocks
        out.append((g, min(g.block_size, max(1, math.ceil((1 - fraction) * units - 1e-9))), label))
    return out


def bound_groups(
    groups: tuple[GroupSpec, ...], labels: Mapping[str, str], keep: Mapping[str, int]
) -> list[dict[str, Any]]:
    """The groups an allocation left at their floor, with the limit that held them (for the report)."""
    return [
        {"group": g.id, "channels": keep[g.id], "of": g.channels, "limit": labels[g.id]}
        for g in groups
        if keep.get(g.id, g.channels) == g.min_units * g.blocks
    ]


def check_method(method: str | Allocator, budget: Budget) -> Allocator:
    """The allocator named ``method`` (or given), if it exists and takes this kind of budget."""
    allocator = method if isinstance(method, Allocator) else catalog.allocator(method)()
    kind = budget.rule.priced_as  # a relative latency is priced in ms too
    if kind not in allocator.budgets:
        accepting = [name for name in catalog.allocator_names() if kind in catalog.allocator(name).budgets]
        raise BudgetError(
            f"method {method!r} does not take {budget.kind} budgets; methods that do: {', '.join(accepting)}"
        )
    return allocator


@dataclass(kw_only=True)
class ProblemInputs:
    """What an allocation problem is built from. Optional inputs (adaptive-BN evaluation,
    nHSIC layer importance, a latency table) are computed only for allocators that need them."""

    graph: PruneGraph
    scores: GroupScores
    cost_model: CostModel
    reference: Mapping[str, float]  # unpruned model's "flops" (MACs), "params" and, if known, "latency_ms"
    model: nn.Module | None = None
    data: ImageData | None = None
    batches: Batches | None = None
    calibration_batches: int = 8  # how many ``batches`` yields; the search re-estimates BN on as many
    latency: Callable[[Mapping[str, int]], float] | None = None  # predicted ms of a width vector
    storage: str | None = None
    study_name: str | None = None
    seed: int = 0
    report: Callable[[float], None] | None = None  # progress of a long search
    limits: LayerLimits = field(default_factory=LayerLimits)  # the user's per-group limits
    original: Mapping[str, int] | None = None  # groups' unpruned widths, which limits count from (default: now)

    @classmethod
    def measure(
        cls, model: nn.Module, graph: PruneGraph, scores: GroupScores, example_input: torch.Tensor, **optional: Any
    ) -> ProblemInputs:
        """Inputs for pruning ``model`` itself (the reference is its own measured cost)."""
        report = count_cost(model, example_input)
        return cls(
            graph=graph,
            scores=scores,
            cost_model=CostModel(graph, report),
            reference={"flops": report.macs, "params": report.params, **optional.pop("reference", {})},
            model=model,
            **optional,
        )

    def cost_and_budget(self, budget: Budget) -> tuple[Callable[[Mapping[str, int]], float], float]:
        if budget.measured:
            if self.latency is None:
                raise BudgetError("a latency budget needs a latency table, which was not built")
            return self.latency, budget.value
        index = ("macs", "params").index(budget.rule.counted)  # CostModel.cost gives (MACs, params)
        return (lambda keep: self.cost_model.cost(keep)[index]), budget.value * self.reference[budget.kind]

    def optional(self, needs: frozenset[str], budget: Budget) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "quadratic_cost" in needs:
            if budget.measured:
                raise BudgetError("this method's program is written in MACs or params, not latency")
            out["quadratic_cost"] = self.cost_model.quadratic(budget.rule.counted)
        if "layer_importance" in needs:
            if self.batches is None:
                raise BudgetError("this method needs calibration data for its layer importance")
            out["layer_importance"] = layer_importance(self.graph, self.batches)
        if "evaluate" in needs:
            if self.model is None or self.data is None:
                raise BudgetError("this method needs the model and data to evaluate candidates")
            held_out = min(512, len(self.data.train_y) // 4)  # the rest re-estimates BN statistics
            out["evaluate"] = make_evaluator(
                self.model, self.graph, self.scores, self.data, eval_examples=held_out, seed=self.seed,
                calibration_batches=self.calibration_batches,
            )  # fmt: skip
        return out


def build_problem(
    allocator: Allocator, inputs: ProblemInputs, budget: Budget, *, min_keep_fraction: float = 0.1
) -> AllocationProblem:
    """The solver's view of pruning ``inputs`` under ``budget``, with what ``allocator`` needs."""
    cost, limit = inputs.cost_and_budget(budget)
    return AllocationProblem(
        groups=group_specs(inputs.graph, min_keep_fraction, inputs.limits, inputs.original),
        scores=inputs.scores,
        cost=cost,
        budget=limit,
        storage=inputs.storage,
        study_name=inputs.study_name,
        seed=inputs.seed,
        report=inputs.report,
        **inputs.optional(allocator.needs, budget),
    )


def allocate(
    method: str | Allocator,
    inputs: ProblemInputs,
    budget: Budget,
    *,
    min_keep_fraction: float = 0.1,
    channel_step: int = 1,
) -> Allocation:
    """Run allocator ``method`` so that the pruned model meets ``budget``.

    Fractional budgets are fractions of ``inputs.reference`` (the unpruned model): in iterative
    pruning the current model is already smaller, but the budget is of the original. With
    ``channel_step`` > 1 the answer is snapped to widths in multiples of it (``snap_to_step``).
    """
    allocator = check_method(method, budget)
    problem = build_problem(allocator, inputs, budget, min_keep_fraction=min_keep_fraction)
    try:
        allocation = allocator.allocate(problem)
    except InfeasibleBudget as exc:
        floor = problem.cost_of_units({g.id: g.min_units for g in problem.groups})
        scale = inputs.reference.get(budget.kind) if not budget.measured else None
        reached = f"{floor / scale:.1%} of the {budget.kind}" if scale else f"{floor:.3g} {budget.kind}"
        allowed = f"{min_keep_fraction:.0%} of each layer, at least one channel"
        if inputs.limits:
            allowed = f"the layer limits {inputs.limits.describe()}; elsewhere {allowed}"
        raise BudgetError(f"{budget} cannot be met: the narrowest network allowed ({allowed}) needs {reached}") from exc
    except ValueError as exc:
        raise SolverError(f"allocator {method!r} failed: {exc}") from exc
    if channel_step > 1:
        keep = snap_to_step(problem, allocation.keep, channel_step)
        diagnostics = {**allocation.diagnostics, "channel_step": channel_step, "unsnapped_cost": allocation.cost}
        allocation = Allocation(keep=keep, cost=problem.cost(keep), diagnostics=diagnostics)
    labels = {g.id: label for g, _, label in floors(inputs.graph, min_keep_fraction, inputs.limits, inputs.original)}
    bound = bound_groups(problem.groups, labels, allocation.keep)
    return replace(allocation, diagnostics={**allocation.diagnostics, "bound": bound})


def join_search(
    method: str | Allocator,
    inputs: ProblemInputs,
    budget: Budget,
    *,
    label: str,
    seed: int,
    should_stop: Callable[[], bool],
) -> dict[str, Any]:
    """Add trials to the stored evolution search that ``allocate(method, inputs, budget)`` leads in
    another process; ``inputs`` must be built the same way (same model, scores and study name)."""
    allocator = check_method(method, budget)
    if not allocator.joinable or inputs.storage is None or inputs.study_name is None:
        raise BudgetError("only an evolution search kept in a shared storage can be joined")
    problem = build_problem(allocator, inputs, budget)
    try:
        return allocator.join(problem, label=label, seed=seed, should_stop=should_stop)
    except ValueError as exc:
        raise SolverError(f"joining the evolution search failed: {exc}") from exc
