"""ITPruner: nHSIC against its definition, layer weights on real nets, the cvxpy program against brute force."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import build
from torch import nn

from autoprune.allocate import group_specs
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.importance.hsic import importance_from_similarity, layer_importance, layer_similarity, nhsic
from autoprune.measure import CostModel, count_cost
from autoprune.surgery import apply_plan, make_plan
from solvers import AllocationProblem, GroupSpec, InfeasibleBudget
from solvers.base import QuadraticCost
from solvers.qclp import ITPruner, build_program, ratio_program, solve_program

X32 = torch.zeros(1, 3, 32, 32)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- nHSIC


def hsic_by_definition(x: np.ndarray, y: np.ndarray) -> float:
    """tr(K_X H K_Y H)/(n−1)² with K = X Xᵀ and H = I − 11ᵀ/n, written out."""
    n = len(x)
    h = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(x @ x.T @ h @ y @ y.T @ h)) / (n - 1) ** 2


def test_nhsic_is_the_normalised_linear_hsic():
    x = torch.randn(12, 2, 3, 3, generator=generator(0), dtype=torch.float64)
    y = torch.tanh(x.flatten(1) @ torch.randn(18, 4, generator=generator(1), dtype=torch.float64))
    y = y + 0.5 * torch.randn(12, 4, generator=generator(2), dtype=torch.float64)
    xf, yf = x.flatten(1).numpy(), y.numpy()
    expected = hsic_by_definition(xf, yf) / math.sqrt(hsic_by_definition(xf, xf) * hsic_by_definition(yf, yf))
    assert 0.05 < expected < 0.95  # a case that is neither trivial extreme
    assert nhsic(x, y) == pytest.approx(expected, rel=1e-10)


def test_nhsic_properties():
    x = torch.randn(64, 10, generator=generator(3), dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(10, 10, generator=generator(4), dtype=torch.float64))
    assert nhsic(x, x) == pytest.approx(1.0, abs=1e-12)
    assert nhsic(x, x @ rotation) == pytest.approx(1.0, abs=1e-12)
    big_x = torch.randn(1000, 3, generator=generator(5), dtype=torch.float64)
    big_y = torch.randn(1000, 3, generator=generator(6), dtype=torch.float64)
    assert nhsic(big_x, big_y) < 0.02  # E ≈ d/n for independent Gaussians
    assert nhsic(big_x, big_x + big_y) > 0.4
    for seed in range(5):
        y = x[:, :4] * seed + torch.randn(64, 4, generator=generator(10 + seed), dtype=torch.float64)
        value = nhsic(x, y)
        assert 0.0 <= value <= 1.0
        assert nhsic(y, x) == pytest.approx(value, rel=1e-12)
        assert nhsic(7.5 * x, y) == pytest.approx(value, rel=1e-10)
        assert nhsic(x, 1e-3 * y) == pytest.approx(value, rel=1e-10)
    assert nhsic(x, torch.ones(64, 3)) == 0.0  # nothing varies: no dependence to measure
    with pytest.raises(ValueError, match="examples"):
        nhsic(x, x[:10])


def test_layer_weights_are_the_released_formula():
    s = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.4], [0.2, 0.4, 1.0]])
    # s_i = Σ_{j≠i} S_ij = (1.1, 1.3, 0.6), s̃ = s / 3, α = exp(−β s̃), here divided by its max.
    expected = np.exp(-10.0 * np.array([1.1, 1.3, 0.6]) / 3.0)
    np.testing.assert_allclose(importance_from_similarity(s, 10.0), expected / expected.max(), rtol=1e-12)
    np.testing.assert_allclose(importance_from_similarity(s, 0.0), np.ones(3))
    np.testing.assert_allclose(importance_from_similarity(np.eye(3), 50.0), np.ones(3))


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.Conv2d(6, 5, 3, padding=1),
        nn.BatchNorm2d(5),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(5, 4),
    )
    with torch.no_grad():
        for bn in (net[1], net[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_mean.uniform_(-0.2, 0.2)
    return net.eval()


def test_layer_similarity_compares_the_groups_feature_maps():
    net = tiny()
    x = torch.randn(12, 3, 8, 8, generator=generator(7))
    graph = build_graph(net, x[:1])

    def batches():
        yield x[:5], torch.zeros(5)
        yield x[5:], torch.zeros(7)

    with torch.no_grad():  # the direct computation: BN outputs of each group, first 10 examples
        first = net[1](net[0](x[:10]))
        second = net[4](net[3](torch.relu(first)))
    expected = nhsic(first.double(), second.double())
    for max_bytes in (2**30, 1):  # everything in one pass, or one feature point per pass
        ids, s = layer_similarity(graph, batches, max_examples=10, max_feature_bytes=max_bytes)
        assert sorted(ids) == ["0", "3"]
        np.testing.assert_allclose(s, [[1.0, expected], [expected, 1.0]], rtol=1e-5)


@pytest.mark.parametrize("arch", ["resnet20", "tiny_densenet", "tiny_resnext"])
def test_layer_importance_contract(arch):
    """One finite weight in (0, 1] per group, max 1, deterministic; the model is left as it was."""
    model = build(arch).train()
    graph = build_graph(model, X32)
    x = torch.randn(16, 3, 32, 32, generator=generator(8))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def batches():
        yield x[:8], torch.zeros(8)
        yield x[8:], torch.zeros(8)

    weights = layer_importance(graph, batches)
    assert list(weights) == [g.id for g in graph.groups]
    values = np.array(list(weights.values()))
    assert np.all(np.isfinite(values)) and np.all(values > 0) and values.max() == 1.0
    assert values.min() < 1.0  # the groups are told apart
    assert layer_importance(graph, batches) == weights
    assert model.training  # mode restored, BN statistics untouched, no hooks left
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks for m in model.modules())


def test_hooks_are_removed_when_the_forward_fails():
    model = build("resnet20")
    graph = build_graph(model, X32)
    with pytest.raises(RuntimeError):
        layer_importance(graph, lambda: iter([(torch.zeros(4, 5, 32, 32), torch.zeros(4))]))
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- the program


def chain(alpha: tuple[float, float, float], fraction: float) -> AllocationProblem:
    """Three layers in a chain: conv 3→a (64 positions), a→b (64), b→c (16), then a c→10 head.

    MACs are 27·64·a + 9·64·a·b + 9·16·b·c + 10·c (+ a constant); b is consumed in 2 blocks.
    """
    groups = (GroupSpec(id="a", channels=24), GroupSpec(id="b", channels=32, blocks=2), GroupSpec(id="c", channels=16))
    cost = QuadraticCost(
        constant=100.0,
        linear={"a": 27.0 * 64, "b": 0.0, "c": 10.0},
        quadratic={("a", "b"): 9.0 * 64, ("b", "c"): 9.0 * 16},
    )
    return AllocationProblem(
        groups=groups,
        scores={g.id: np.ones(g.channels) for g in groups},
        cost=cost,
        budget=fraction * cost({"a": 24, "b": 32, "c": 16}),
        quadratic_cost=cost,
        layer_importance=dict(zip("abc", alpha, strict=True)),
    )


def brute_force(problem: AllocationProblem, utility) -> tuple[float, dict[str, int]]:
    """The best Σ α·utility(ratio) over every whole-unit allocation within budget."""
    units = np.stack(np.meshgrid(*[np.arange(g.min_units, g.units + 1) for g in problem.groups], indexing="ij"), -1)
    units = units.reshape(-1, len(problem.groups))
    keep = units * np.array([g.blocks for g in problem.groups])
    q = problem.quadratic_cost
    cost = q.constant + keep @ np.array([q.linear[g] for g in "abc"])
    cost = cost + q.quadratic[("a", "b")] * keep[:, 0] * keep[:, 1] + q.quadratic[("b", "c")] * keep[:, 1] * keep[:, 2]
    alpha = np.array([problem.layer_importance[g] for g in "abc"])
    value = utility(units / np.array([g.units for g in problem.groups])) @ alpha
    value[cost > problem.budget] = -np.inf
    best = int(np.argmax(value))
    return float(value[best]), dict(zip("abc", (int(k) for k in keep[best]), strict=True))


def check_allocation(problem: AllocationProblem, keep: dict[str, int]) -> None:
    assert problem.cost(keep) <= problem.budget
    for g in problem.groups:
        assert keep[g.id] % g.blocks == 0 and g.min_units * g.blocks <= keep[g.id] <= g.channels


INSTANCES = [
    ((0.655, 0.306, 0.089), 0.16),
    ((0.9, 0.5, 0.7), 0.3),
    ((0.2, 1.0, 0.4), 0.5),
    ((0.59, 0.905, 0.475), 0.455),
    ((0.707, 0.917, 0.832), 0.284),
]


@pytest.mark.parametrize(("alpha", "fraction"), INSTANCES)
def test_geometric_program_matches_brute_force(alpha, fraction):
    problem = chain(alpha, fraction)
    best, _ = brute_force(problem, np.log)
    program = ratio_program(problem, weigh_by_cost=False)  # the solver's math, on the given α
    variable_budget = program.budget - program.constant
    cvx, x = build_program(program.alpha, program.lower, program.linear, program.quadratic, variable_budget, "gp")
    relaxed, info = solve_program(cvx, x, "CLARABEL")
    assert info["status"] == "optimal"
    assert program.cost(relaxed) == pytest.approx(problem.budget, rel=1e-6)  # exact cost, on the budget
    assert program.alpha @ np.log(relaxed) >= best - 1e-9  # the relaxation bounds the integer optimum
    allocation = ITPruner("gp", weigh_by_cost=False).allocate(problem)
    check_allocation(problem, dict(allocation.keep))
    assert best - 0.01 * sum(alpha) <= allocation.diagnostics["objective_log"] <= best + 1e-12


def test_geometric_program_is_exact_when_the_optimum_is_integral():
    # α_i = x_i ∂F/∂x_i at x* = k*/C is the KKT condition (λ = 1) of max Σ α log x s.t. F(x) ≤ F(x*):
    # x* is then the unique optimum, relaxed and integer alike, and nothing is lost to rounding.
    target = {"a": 18, "b": 20, "c": 12}
    x = np.array([18 / 24, 20 / 32, 12 / 16])
    ab, bc = 9 * 64 * 24 * 32, 9 * 16 * 32 * 16  # the cross coefficients in ratios
    grad = np.array([27 * 64 * 24 + ab * x[1], ab * x[0] + bc * x[2], 10 * 16 + bc * x[1]])
    problem = chain(tuple(x * grad), 0.5)
    problem = dataclasses.replace(problem, budget=problem.cost(target))
    assert brute_force(problem, np.log)[1] == target
    allocation = ITPruner("gp", weigh_by_cost=False).allocate(problem)
    assert dict(allocation.keep) == target and allocation.cost == problem.budget


def surrogate_by_water_filling(alpha, lower, linear, d, budget) -> np.ndarray:
    """max α·x s.t. Σ linear_i x_i + d_i x_i² ≤ budget, lower ≤ x ≤ 1, by its KKT conditions."""

    def x_at(lam: float) -> np.ndarray:
        return np.clip((alpha / lam - linear) / (2 * d), lower, 1.0)

    lo, hi = 1e-12, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if linear @ x_at(mid) + d @ x_at(mid) ** 2 > budget else (lo, mid)
    return x_at(hi)


@pytest.mark.parametrize(("alpha", "fraction"), INSTANCES)
def test_convexified_program_is_the_paper_objective_under_the_convex_bound(alpha, fraction):
    problem = chain(alpha, fraction)
    program = ratio_program(problem, weigh_by_cost=False)  # the solver's math, on the given α
    variable_budget = program.budget - program.constant
    cvx, x = build_program(program.alpha, program.lower, program.linear, program.quadratic, variable_budget, "qclp")
    relaxed, _ = solve_program(cvx, x, "CLARABEL")
    ab, bc = program.quadratic[0, 1], program.quadratic[1, 2]  # b x_i x_j ≤ b (x_i² + x_j²)/2
    d = np.array([ab / 2, (ab + bc) / 2, bc / 2])
    expected = surrogate_by_water_filling(program.alpha, program.lower, program.linear, d, variable_budget)
    np.testing.assert_allclose(relaxed, expected, atol=1e-4)
    assert program.alpha @ relaxed == pytest.approx(program.alpha @ expected, rel=1e-6)
    assert program.cost(relaxed) <= problem.budget * (1 + 1e-7)  # conservative: the exact cost fits
    allocation = ITPruner("qclp", weigh_by_cost=False).allocate(problem)
    check_allocation(problem, dict(allocation.keep))
    loss_bound = float(np.sum(program.alpha / program.units))  # rounding down loses < 1 unit per group
    assert allocation.diagnostics["objective_linear"] >= program.alpha @ relaxed - loss_bound
    assert allocation.diagnostics["objective_linear"] <= brute_force(problem, lambda r: r)[0] + 1e-12


def test_equal_layer_weights_give_uniform_ratios_whatever_cost_a_group_carries():
    # A chain a → b → c with equal MACs per conv: b sits between two convs and carries twice the
    # cost of a or c. Weighted by the cost it carries, equal α keep the same ratio everywhere (the
    # paper's per-layer variables): the relaxed optimum is x = ½ for all, and the whole-unit
    # repair may trade one unit along the objective's flat direction (7, 9, 7 scores as 8, 8, 8).
    # Weighted by α alone, a and c kept twice b's ratio.
    groups = tuple(GroupSpec(id=g, channels=16) for g in "abc")
    cost = QuadraticCost(constant=0.0, linear={}, quadratic={("a", "b"): 9.0, ("b", "c"): 9.0})
    problem = AllocationProblem(
        groups=groups, scores={g.id: np.ones(16) for g in groups}, cost=cost,
        budget=0.25 * cost({"a": 16, "b": 16, "c": 16}), quadratic_cost=cost,
        layer_importance={"a": 1.0, "b": 1.0, "c": 1.0},
    )  # fmt: skip
    allocation = ITPruner("qclp").allocate(problem)
    assert all(abs(n - 8) <= 1 for n in allocation.keep.values())
    assert allocation.diagnostics["relaxed_objective_linear"] == pytest.approx(
        0.5 * sum(ratio_program(problem).alpha), rel=1e-4
    )


def test_default_beta_is_the_number_of_groups():
    # β·s̃_i = s_i / mean(s): a group's redundancy relative to the average (released default: 246).
    net = tiny()
    x = torch.randn(12, 3, 8, 8, generator=generator(7))
    graph = build_graph(net, x[:1])
    batches = lambda: iter([(x, torch.zeros(12))])  # noqa: E731
    ids, s = layer_similarity(graph, batches)
    expected = importance_from_similarity(s, float(len(ids)))
    np.testing.assert_allclose(list(layer_importance(graph, batches).values()), expected, rtol=1e-12)
    assert layer_importance(graph, batches, beta=246.0) != layer_importance(graph, batches)


@pytest.fixture(scope="module")
def resnet20():
    model = build("resnet20")
    graph = build_graph(model, X32)
    report = count_cost(model, X32)
    x = torch.randn(16, 3, 32, 32, generator=generator(9))
    weights = layer_importance(graph, lambda: iter([(x, torch.zeros(16))]))
    return model, graph, CostModel(graph, report), report, get_criterion("l1").score(graph), weights


@pytest.mark.parametrize("formulation", ["gp", "qclp"])
@pytest.mark.parametrize(("kind", "fraction"), [("flops", 0.3), ("flops", 0.5), ("flops", 0.8), ("params", 0.5)])
def test_budget_is_met_within_one_percent_below_on_resnet20(resnet20, formulation, kind, fraction):
    model, graph, cost_model, report, scores, weights = resnet20
    index, reference = (0, report.macs) if kind == "flops" else (1, report.params)
    problem = AllocationProblem(  # as autoprune.allocate builds it
        groups=group_specs(graph, 0.1),
        scores=scores,
        cost=lambda keep: cost_model.cost(keep)[index],
        budget=fraction * reference,
        quadratic_cost=cost_model.quadratic("macs" if kind == "flops" else "params"),
        layer_importance=weights,
    )
    allocation = ITPruner(formulation).allocate(problem)
    check_allocation(problem, dict(allocation.keep))
    assert fraction - 0.01 <= allocation.cost / reference <= fraction
    d = allocation.diagnostics
    assert d["status"] == "optimal" and d["solver"] == "CLARABEL" and d["solve_time_s"] > 0
    assert math.isfinite(d["objective"])
    if formulation == "gp":
        assert d["relaxed_cost_over_budget"] == pytest.approx(1.0, abs=1e-5)
    else:
        assert d["relaxed_cost_over_budget"] <= 1.0 + 1e-7
    if (formulation, kind, fraction) == ("gp", "flops", 0.5):  # the real pruned model costs that
        pruned = apply_plan(model, X32, make_plan(graph, scores, allocation.keep))
        assert count_cost(pruned, X32).macs == allocation.cost


@pytest.mark.parametrize("formulation", ["gp", "qclp"])
def test_a_status_other_than_optimal_is_a_value_error(formulation):
    cvx, x = build_program([1.0, 1.0], [0.9, 0.9], [1.0, 1.0], np.zeros((2, 2)), 1.0, formulation)
    with pytest.raises(ValueError, match="infeasible"):
        solve_program(cvx, x, "CLARABEL")
    with pytest.raises(InfeasibleBudget):
        ITPruner(formulation).allocate(chain((1.0, 1.0, 1.0), 0.001))


def test_bad_inputs_are_clear_errors():
    problem = chain((1.0, 1.0, 1.0), 0.5)
    with pytest.raises(ValueError, match="quadratic_cost"):
        ITPruner().allocate(dataclasses.replace(problem, quadratic_cost=None))
    with pytest.raises(ValueError, match="layer_importance"):
        ITPruner().allocate(dataclasses.replace(problem, layer_importance={"a": 1.0}))
    doubled = dataclasses.replace(problem.quadratic_cost, constant=200.0)
    with pytest.raises(ValueError, match="full width"):
        ITPruner().allocate(dataclasses.replace(problem, quadratic_cost=doubled))
    with pytest.raises(ValueError, match="non-negative"):
        build_program([1.0, 1.0], [0.1, 0.1], [1.0, 1.0], np.array([[0.0, -1.0], [0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match="formulation"):
        ITPruner("slsqp")
    with pytest.raises(ValueError, match="solver"):
        ITPruner(solver="NOT_A_SOLVER")
