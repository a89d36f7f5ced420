"""HALP: the latency lookup table against its own timings, the knapsack against brute force, budgets met."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from conftest import build

from autoprune.allocate import group_specs
from autoprune.graph import build_graph
from autoprune.importance import get_criterion
from autoprune.measure import CostModel, count_cost, torch_latency_ms
from autoprune.measure.latency_table import LatencyTable
from autoprune.surgery import apply_plan, make_plan
from solvers.base import AllocationProblem, GroupSpec, InfeasibleBudget, allowed_units
from solvers.knapsack import HALP, multiple_choice_knapsack

X = torch.zeros(1, 3, 32, 32)


@pytest.fixture(scope="module")
def resnet20(tmp_path_factory):
    """ResNet-20, its graph, L1 scores and a coarse single-thread latency table (saved to a file)."""
    model = build("resnet20")
    graph = build_graph(model, X)
    path = tmp_path_factory.mktemp("lut") / "lut.json"
    table = LatencyTable.build(model, graph, X, grid=4, repeats=15, threads=1, cache=path)
    return model, graph, get_criterion("l1").score(graph), table, path


# --- the importance ----------------------------------------------------------------------------


def test_taylor_scores_are_halps_bn_form_the_loss_change_of_the_whole_map():
    # HALP: I_c = |γ_c ∂C/∂γ_c + β_c ∂C/∂β_c| = |Σ_positions z ∂C/∂z| at the BN output z. The mean
    # over positions (until 2026-12-03) scored a 32×32 map's channel 16× less than an 8×8 map's
    # for the same loss change, and HALP's knapsack cut ResNet-20's first stage to the floor.
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3),
    ).eval()  # fmt: skip
    with torch.no_grad():
        net[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    scores = get_criterion("taylor").score(build_graph(net, x[:1]), lambda: iter([(x, y)]))
    expected = torch.zeros(4, dtype=torch.float64)
    bn = net[1]
    for n in range(6):
        net.zero_grad()
        torch.nn.functional.cross_entropy(net(x[n : n + 1]), y[n : n + 1]).backward()
        expected += (bn.weight * bn.weight.grad + bn.bias * bn.bias.grad).abs().double().detach()
    np.testing.assert_allclose(scores["0"], (expected / 6).numpy(), rtol=1e-6)


# --- the knapsack ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_knapsack_dp_is_the_brute_force_optimum(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=4)
    values = [rng.uniform(0, 10, n) for n in sizes]
    weights = [rng.integers(0, 9, n) for n in sizes]
    capacity = int(rng.integers(sum(w.min() for w in weights), sum(w.max() for w in weights) + 1))
    picks = multiple_choice_knapsack(values, weights, capacity)
    best = max(
        sum(v[k] for v, k in zip(values, combo))
        for combo in itertools.product(*(range(n) for n in sizes))
        if sum(w[k] for w, k in zip(weights, combo)) <= capacity
    )
    assert sum(w[k] for w, k in zip(weights, picks)) <= capacity
    assert sum(v[k] for v, k in zip(values, picks)) == pytest.approx(best)


def test_knapsack_rejects_a_capacity_nothing_fits():
    with pytest.raises(InfeasibleBudget):
        multiple_choice_knapsack([np.array([1.0, 2.0])], [np.array([3, 5])], 2)


def test_halp_is_optimal_when_costs_are_separable():
    # Cost = 3·a + 5·b channels: fixing the other group is exact, so one knapsack solve is the
    # optimum over all keep counts. Budget 20.5 leaves slack for the capacity's rounding.
    scores = {"a": np.array([9.0, 1.0, 4.0, 2.0]), "b": np.array([8.0, 7.0, 0.5])}
    problem = AllocationProblem(
        groups=(GroupSpec(id="a", channels=4), GroupSpec(id="b", channels=3)),
        scores=scores,
        cost=lambda keep: 3.0 * keep["a"] + 5.0 * keep["b"],
        budget=20.5,
    )
    allocation = HALP(steps=1).allocate(problem)

    def value(keep):
        return sum(np.sort(scores[g])[::-1][:n].sum() for g, n in keep.items())

    feasible = [{"a": a, "b": b} for a in range(1, 5) for b in range(1, 4) if 3 * a + 5 * b <= 20.5]
    best = max(feasible, key=value)
    assert dict(allocation.keep) == best == {"a": 3, "b": 2}
    assert allocation.diagnostics["value"] == pytest.approx(value(best))


def test_saliency_per_cost_is_what_a_group_can_give_up_over_the_cost_it_carries():
    """The report's diagnostic, against a direct computation: group a can drop channels worth
    1+2+4 (it keeps its best, 9) that carry 3 x 3 of the cost; b drops 7+0.5 carrying 2 x 5; c costs nothing."""
    problem = AllocationProblem(
        groups=(GroupSpec(id="a", channels=4), GroupSpec(id="b", channels=3), GroupSpec(id="c", channels=2)),
        scores={"a": np.array([9.0, 1.0, 4.0, 2.0]), "b": np.array([8.0, 7.0, 0.5]), "c": np.array([1.0, 1.0])},
        cost=lambda keep: 3.0 * keep["a"] + 5.0 * keep["b"],
        budget=20.5,
    )
    ratio = HALP(steps=1).allocate(problem).diagnostics["saliency_per_cost"]
    assert ratio == {"a": pytest.approx(7 / 9, rel=1e-3), "b": pytest.approx(7.5 / 10, rel=1e-3), "c": None}


def test_channel_step_keeps_multiples_or_the_whole_group():
    group = GroupSpec(id="g", channels=20, min_units=3)
    assert allowed_units(group, 8).tolist() == [8, 16, 20]
    problem = AllocationProblem(
        groups=(group, GroupSpec(id="h", channels=16)),
        scores={"g": np.arange(20.0), "h": np.arange(16.0)},
        cost=lambda keep: float(sum(keep.values())),
        budget=25,
    )
    keep = HALP(channel_step=8).allocate(problem).keep
    assert all(n % 8 == 0 for n in keep.values()) and sum(keep.values()) <= 25


@pytest.mark.parametrize("kind", ["flops", "params"])
def test_halp_meets_a_macs_or_params_budget_within_one_percent_below(resnet20, kind):
    model, graph, scores, _, _ = resnet20
    report = count_cost(model, X)
    index, reference = (0, report.macs) if kind == "flops" else (1, report.params)
    cost_model = CostModel(graph, report)
    problem = AllocationProblem(
        groups=group_specs(graph, 0.1),
        scores=scores,
        cost=lambda keep: cost_model.cost(keep)[index],
        budget=0.5 * reference,
    )
    allocation = HALP().allocate(problem)
    measured = count_cost(apply_plan(model, X, make_plan(graph, scores, allocation.keep)), X)
    assert 0.49 <= (measured.macs, measured.params)[index] / reference <= 0.5


# --- the latency table -------------------------------------------------------------------------


def test_table_is_its_monotone_envelope_at_grid_points(resnet20):
    _, _, _, table, _ = resnet20
    bs = table.context.batch_size
    for layer in table.layers:
        raw = np.array([[table.lut[layer.key(bs, i, o)] for o in layer.out_grid] for i in layer.in_grid])
        for (a, i), (b, o) in itertools.product(enumerate(layer.in_grid), enumerate(layer.out_grid)):
            envelope = raw[: a + 1, : b + 1].max()  # the slowest timing at or below (i, o)
            assert table.layer_latency(layer.name, i, o) == pytest.approx(layer.calls * envelope, rel=1e-12)


def test_table_interpolates_bilinearly_and_monotonically(resnet20):
    _, _, _, table, _ = resnet20
    layer = next(layer for layer in table.layers if len(layer.in_grid) > 2 and len(layer.out_grid) > 2)
    (i0, i1), (o0, o1) = layer.in_grid[1:3], layer.out_grid[1:3]
    corners = [table.layer_latency(layer.name, i, o) for i in (i0, i1) for o in (o0, o1)]
    mid = table.layer_latency(layer.name, (i0 + i1) / 2, (o0 + o1) / 2)
    assert mid == pytest.approx(sum(corners) / 4, rel=1e-12)
    ins, outs = np.linspace(1, layer.in_grid[-1], 40), np.linspace(1, layer.out_grid[-1], 40)
    for fixed_in, fixed_out in zip(
        (layer.in_grid[0], (i0 + i1) / 2, layer.in_grid[-1]), (layer.out_grid[0], (o0 + o1) / 2, layer.out_grid[-1])
    ):
        along_in = np.diff([table.layer_latency(layer.name, w, fixed_out) for w in ins])
        along_out = np.diff([table.layer_latency(layer.name, fixed_in, w) for w in outs])
        assert along_in.min() > -1e-12 and along_out.min() > -1e-12  # up to rounding where the table is flat


def test_prediction_passes_through_both_whole_model_measurements(resnet20):
    _, graph, _, table, _ = resnet20
    assert table.latency({g.id: g.channels for g in graph.groups}) == pytest.approx(table.measured_latency)
    assert table.latency(table.calibration_keep) == pytest.approx(table.calibration_latency)
    assert table.measured_latency > table.calibration_latency > 0 and table.scale > 0


def test_lut_file_round_trip_and_reuse(resnet20, tmp_path):
    model, graph, _, table, path = resnet20
    loaded = LatencyTable.load(path, graph)
    keeps = [{g.id: max(1, g.channels * k // 7) for g in graph.groups} for k in range(1, 8)]
    assert [loaded.latency(k) for k in keeps] == [table.latency(k) for k in keeps]
    assert loaded.context == table.context
    # A second build reuses every stored timing (a re-timing would not reproduce the floats),
    # and the file keeps the timings of other contexts.
    data = json.loads(path.read_text())
    data["luts"]["other-device|torch|batch=1|threads=1"] = {"Conv2d_x": 1.0}
    path.write_text(json.dumps(data))
    again = LatencyTable.build(model, graph, X, grid=4, repeats=3, threads=1, cache=path)
    assert all(again.lut[k] == v for k, v in table.lut.items())
    assert "other-device|torch|batch=1|threads=1" in json.loads(path.read_text())["luts"]
    with pytest.raises(ValueError, match="another model"):
        LatencyTable.load(path, build_graph(build("tiny_resnext"), X))


def test_group_conv_widths_stay_multiples_of_its_groups_and_onnxruntime_builds():
    model = build("tiny_resnext")
    graph = build_graph(model, X)
    table = LatencyTable.build(model, graph, X, runtime="onnxruntime", grid=3, repeats=5, threads=1)
    grouped = next(layer for layer in table.layers if layer.groups == 4)
    assert all(w % 4 == 0 for w in grouped.in_grid + grouped.out_grid)
    assert table.latency({}) == pytest.approx(table.measured_latency)


def test_bad_table_arguments_are_named():
    model = build("tiny_resnext")
    graph = build_graph(model, X)
    with pytest.raises(ValueError, match="grid"):
        LatencyTable.build(model, graph, X, grid=1)
    with pytest.raises(ValueError, match="runtime"):
        LatencyTable.build(model, graph, X, runtime="tensorrt")  # type: ignore[arg-type]


# --- HALP on a real latency budget -------------------------------------------------------------


def paired_latency_ms(a: torch.nn.Module, b: torch.nn.Module, rounds: int, repeats: int) -> tuple[float, float]:
    """Median latencies of two models timed in alternating rounds: other work on this shared
    machine slows both alike instead of whichever happened to run during a busy spell."""
    pairs = [
        tuple(torch_latency_ms(m, (3, 32, 32), repeats=repeats, warmup=3, threads=1) for m in (a, b))
        for _ in range(rounds)
    ]
    return tuple(float(np.median(column)) for column in zip(*pairs))  # type: ignore[return-value]


def test_halp_meets_a_latency_target_measured_on_this_cpu(resnet20):
    model, graph, scores, table, _ = resnet20
    target = 0.7 * table.measured_latency
    problem = AllocationProblem(groups=group_specs(graph, 0.1), scores=scores, cost=table.latency, budget=target)
    allocation = HALP().allocate(problem)
    assert allocation.cost == table.latency(allocation.keep) <= target  # the table's prediction: exact
    assert allocation.cost >= 0.95 * target
    pruned = apply_plan(model, X, make_plan(graph, scores, allocation.keep))
    full_ms, pruned_ms = paired_latency_ms(model, pruned, rounds=7, repeats=15)
    # The target is 70% of the full model's latency, re-measured alongside the pruned one. The
    # calibrated table predicted pruned ResNet-20s to within ~5% here; medians of ~1 ms runs on
    # a shared 2-core machine move by a few % more. 15% leaves room for both, and still fails a
    # model that was not pruned for latency (the unpruned one is 43% over).
    assert pruned_ms <= 1.15 * 0.7 * full_ms


@pytest.mark.slow
def test_halp_meets_a_latency_target_tightly_on_resnet56():
    model = build("resnet56")
    graph = build_graph(model, X)
    scores = get_criterion("l1").score(graph)
    table = LatencyTable.build(model, graph, X, grid=8, repeats=50, threads=1)
    allocation = HALP().allocate(
        AllocationProblem(
            groups=group_specs(graph, 0.1), scores=scores, cost=table.latency, budget=0.75 * table.measured_latency
        )
    )
    pruned = apply_plan(model, X, make_plan(graph, scores, allocation.keep))
    full_ms, pruned_ms = paired_latency_ms(model, pruned, rounds=11, repeats=50)
    assert pruned_ms <= 1.08 * 0.75 * full_ms  # observed 0.99-1.05 over repeated runs
