"""Allocators: exact budgets on real cost models, known optima on toy problems, clear infeasibility."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from conftest import build

from autoprune.allocate import ProblemInputs, allocate
from autoprune.data import iterate_batches
from autoprune.errors import BudgetError, UnknownNameError
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.measure import count_cost
from autoprune.spec import Budget
from autoprune.surgery import apply_plan, make_plan
from solvers import ALLOCATORS, AllocationProblem, GroupSpec, InfeasibleBudget, get_allocator
from solvers.auto import Auto
from solvers.evolution import Evolution
from solvers.global_rank import GlobalRank
from solvers.uniform import Uniform

X = torch.zeros(1, 3, 32, 32)
QUICK = {  # the contract, not the search quality
    "evolution": Evolution(trials=3, population=2),
    "auto": Auto({"global": GlobalRank(), "uniform": Uniform()}),
}


def make_setup(arch: str, digits):
    model = build(arch)
    graph = build_graph(model, X)
    scores = get_criterion("l1").score(graph)
    small = digits.subset(train=192, test=32)
    inputs = ProblemInputs.measure(
        model, graph, scores, X, data=small, batches=lambda: iterate_batches(small, "train", 64, limit=2)
    )
    return model, inputs


@pytest.fixture(scope="module")
def resnet20(digits):
    return make_setup("resnet20", digits)


@pytest.fixture(scope="module")
def vgg(digits):
    return make_setup("cifar_vgg16_bn", digits)


@pytest.mark.parametrize("method", sorted(ALLOCATORS))
@pytest.mark.parametrize("kind", ["flops", "params"])
@pytest.mark.parametrize("fraction", [0.3, 0.5, 0.8])
def test_every_allocator_meets_the_budget_within_one_percent_below(resnet20, method, kind, fraction):
    check_budget(resnet20, method, kind, fraction)


@pytest.mark.parametrize("method", sorted(ALLOCATORS))
def test_every_allocator_meets_the_budget_on_vgg(vgg, method):
    check_budget(vgg, method, "flops", 0.5)


def check_budget(setup, method, kind, fraction):
    model, inputs = setup
    allocation = allocate(QUICK.get(method, method), inputs, Budget(kind=kind, value=fraction))
    pruned = apply_plan(model, X, make_plan(inputs.graph, inputs.scores, allocation.keep))
    measured = count_cost(pruned, X)
    achieved = (measured.macs if kind == "flops" else measured.params) / inputs.reference[kind]
    assert fraction - 0.01 <= achieved <= fraction


def test_impossible_budget_is_a_clear_error(resnet20):
    with pytest.raises(BudgetError, match="cannot be met"):
        allocate("global", resnet20[1], Budget(kind="flops", value=0.001))


def test_unknown_allocator_lists_the_known_ones(resnet20):
    with pytest.raises(UnknownNameError, match="uniform"):
        allocate("nope", resnet20[1], Budget(kind="flops", value=0.5))


def test_latency_budget_needs_a_latency_aware_method(resnet20):
    with pytest.raises(BudgetError, match="does not take latency_ms"):
        allocate("global", resnet20[1], Budget(kind="latency_ms", value=1.0))


def test_a_relative_latency_budget_is_a_fraction_priced_in_ms_of_the_unpruned_model():
    budget = Budget.parse("latency=0.7").evolve(runtime="onnxruntime", batch_size=8)
    assert budget.measured and Budget.parse("latency_ms=3").measured and not Budget.parse("flops=0.5").measured
    assert Budget.from_dict(budget.to_dict()) == budget
    assert budget.to_dict() == {"latency": 0.7, "runtime": "onnxruntime", "batch_size": 8}
    in_ms = budget.in_ms(20.0)
    assert (in_ms.kind, in_ms.runtime, in_ms.batch_size) == ("latency_ms", "onnxruntime", 8)
    assert in_ms.value == pytest.approx(14.0)
    assert Budget.parse("flops=0.5").in_ms(20.0) == Budget.parse("flops=0.5")
    for bad in ("latency=1.2", "latency=0", "latency=-0.5"):
        with pytest.raises(BudgetError, match="fraction"):
            Budget.parse(bad)
    with pytest.raises(BudgetError, match="does not take latency budgets; methods that do: evolution, halp"):
        allocate("global", None, budget)  # refused by name, before any inputs are looked at


def toy(budget: float, scores: dict[str, list[float]], blocks: int = 1) -> AllocationProblem:
    groups = tuple(GroupSpec(id=k, channels=len(v), blocks=blocks) for k, v in scores.items())
    return AllocationProblem(
        groups=groups,
        scores={k: np.array(v) for k, v in scores.items()},
        cost=lambda keep: float(sum(keep.values())),  # cost = channels kept
        budget=budget,
    )


def test_global_ranking_keeps_the_best_normalised_channels():
    # After per-group RMS normalisation: a = [1.39, 1.04, 0], b = [.40, 1.36]; each group keeps its
    # best one, and the best 2 of the rest are a: 1.04 and b: .40 → budget 4.
    problem = toy(4, {"a": [4, 3, 0], "b": [1, 3.43]})
    allocation = get_allocator("global").allocate(problem)
    assert dict(allocation.keep) == {"a": 2, "b": 2}
    assert allocation.cost == 4


def test_global_ranking_does_not_penalise_a_group_for_being_wide():
    # b is a four times over. Plain L2 normalisation scales b's scores down by 2 against a's and
    # keeps a: 4 (all), b: 6 of 16; RMS normalisation keeps both at half.
    problem = toy(10, {"a": [2, 2, 1, 1], "b": [2] * 8 + [1] * 8})
    assert dict(get_allocator("global").allocate(problem).keep) == {"a": 2, "b": 8}


def test_uniform_keeps_equal_ratios_up_to_one_unit():
    problem = toy(6, {"a": [1.0] * 4, "b": [1.0] * 8})
    keep = get_allocator("uniform").allocate(problem).keep
    assert sum(keep.values()) == 6 and abs(keep["a"] / 4 - keep["b"] / 8) <= 1 / 4


def test_blocks_move_together():
    problem = toy(4, {"a": [5, 1, 5, 1]}, blocks=2)  # 2 units of 2 channels
    assert get_allocator("global").allocate(problem).keep["a"] in (2, 4)
    assert get_allocator("uniform").allocate(problem).keep["a"] == 4


def test_infeasible_and_invalid_problems():
    with pytest.raises(InfeasibleBudget):
        get_allocator("global").allocate(toy(1, {"a": [1, 2], "b": [1, 2]}))
    with pytest.raises(ValueError):
        toy(3, {"a": [1.0, float("nan")]})
    with pytest.raises(ValueError):
        GroupSpec(id="a", channels=6, blocks=4)
    with pytest.raises(KeyError):
        get_allocator("nap-that-does-not-exist")


def test_snapping_to_a_channel_step_keeps_multiples_and_the_budget():
    """Nearest multiples when they fit; else the cheapest score loss per cost saved steps down."""
    from solvers.base import snap_to_step

    groups = (GroupSpec(id="a", channels=32), GroupSpec(id="b", channels=20), GroupSpec(id="c", channels=16))
    scores = {g.id: np.linspace(1.0, 2.0, g.channels) for g in groups}
    cost = lambda keep: float(sum(keep.values()))  # noqa: E731 - a linear toy cost
    fits = AllocationProblem(groups=groups, scores=scores, cost=cost, budget=48.0)
    assert snap_to_step(fits, {"a": 21, "b": 13, "c": 12}, 8) == {"a": 24, "b": 16, "c": 8}  # 12 → 8 (tie → narrower)
    assert snap_to_step(fits, {"a": 21, "b": 13, "c": 12}, 1) == {"a": 21, "b": 13, "c": 12}
    full = AllocationProblem(groups=groups, scores=scores, cost=cost, budget=68.0)
    assert snap_to_step(full, {"a": 30, "b": 19, "c": 16}, 8) == {"a": 32, "b": 20, "c": 16}  # full widths allowed
    tight = AllocationProblem(groups=groups, scores=scores, cost=cost, budget=45.0)
    snapped = snap_to_step(tight, {"a": 21, "b": 13, "c": 11}, 8)  # nearest (48) is over: one group steps down
    assert all(n % 8 == 0 or n == g.channels for g, n in zip(groups, snapped.values(), strict=True))
    assert cost(snapped) <= 45.0
    # brute force over the allowed widths: the greedy step-down loses the least score here
    options = {"a": [8, 16, 24, 32], "b": [8, 16, 20], "c": [8, 16]}

    def kept_score(keep):
        return sum(np.sort(scores[g])[::-1][: keep[g]].sum() for g in keep)

    feasible = [dict(zip("abc", k, strict=True)) for k in itertools.product(*options.values()) if sum(k) <= 45]
    assert kept_score(snapped) == pytest.approx(max(kept_score(k) for k in feasible))


def test_the_default_method_follows_the_budget_kind():
    """``auto`` (the default) is the chooser for MACs/params budgets and HALP for latency; names pass through."""
    from autoprune.spec import DEFAULT_METHOD, Budget, JobSpec

    def spec(budget: str, **method) -> JobSpec:
        return JobSpec(arch="resnet20", data="digits", budget=Budget.parse(budget), out_dir="-", **method)

    assert DEFAULT_METHOD == "auto"
    assert spec("flops=0.5").method == spec("params=0.6").method == "auto"
    assert spec("latency_ms=2").method == spec("latency=0.7").method == "halp"
    assert spec("flops=0.5", method="evolution").method == "evolution"
    assert spec("flops=0.5").evolve(seed=3).method == "auto"
    assert spec("flops=0.5", method="global").method == "global"
