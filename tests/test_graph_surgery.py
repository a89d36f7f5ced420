"""Dependency groups and surgery on real architectures: smaller dense models, exact costs, replay."""

from __future__ import annotations

import json
import random

import pytest
import torch
from conftest import build

from autoprune.errors import SurgeryError
from autoprune.graph import build_graph
from autoprune.measure import CostModel, count_cost
from autoprune.surgery import PruningPlan, apply_plan

ARCHS = ["resnet20", "cifar_vgg16_bn", "mobilenet_v2", "tiny_densenet", "tiny_resnext"]
X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def random_plan(graph, seed: int = 0) -> PruningPlan:
    rng = random.Random(seed)
    keep = {}
    for g in graph.groups:
        units = rng.randint(1, max(1, g.block_size - 1))
        positions = sorted(rng.sample(range(g.block_size), units))
        keep[g.id] = [p + b * g.block_size for b in range(g.blocks) for p in positions]
    return PruningPlan.from_keep(
        keep, {g.id: g.channels for g in graph.groups}, ignore=graph.ignore, skipped=graph.skipped
    )


@pytest.fixture(scope="module", params=ARCHS)
def case(request):
    model = build(request.param)
    graph = build_graph(model, X[:1])
    plan = random_plan(graph)
    return request.param, model, graph, plan, apply_plan(model, X[:1], plan)


def test_surgery_gives_a_smaller_dense_model_with_the_same_output_shape(case):
    _, model, graph, _, pruned = case
    before, after = count_cost(model, X), count_cost(pruned, X)
    assert after.params < before.params and after.macs < before.macs
    assert pruned(X).shape == model(X).shape
    assert not any(hasattr(m, "weight_mask") for m in pruned.modules())  # real removal, not masks
    assert graph.groups, "every test architecture has prunable groups"


def test_cost_model_predicts_the_measured_cost_exactly(case):
    _, model, graph, plan, pruned = case
    predicted = CostModel(graph, count_cost(model, X)).cost(plan.widths())
    measured = count_cost(pruned, X)
    assert predicted == (measured.macs, measured.params)


def test_output_layer_is_never_pruned(case):
    _, model, graph, _, pruned = case
    head = graph.ignore[-1]
    assert pruned.get_submodule(head).weight.shape[0] == model.get_submodule(head).weight.shape[0]
    assert all(m.module != head or m.dim == "in" for g in graph.groups for m in g.members)


def test_plan_replays_from_json_on_a_fresh_instance(case):
    name, model, _, plan, pruned = case
    replayed_plan = PruningPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    fresh = build(name)  # same seed → same weights as `model`
    replayed = apply_plan(fresh, X[:1], replayed_plan)
    with torch.no_grad():
        assert torch.equal(replayed(X), pruned(X))
    assert replayed.state_dict().keys() == pruned.state_dict().keys()


def test_group_conv_groups_keep_whole_blocks():
    model = build("tiny_resnext")
    graph = build_graph(model, X[:1])
    blocked = [g for g in graph.groups if g.blocks > 1]
    assert blocked and all(g.blocks == 4 for g in blocked)
    plan = random_plan(graph, seed=3)
    pruned = apply_plan(model, X[:1], plan)
    assert pruned.grouped[0].groups == 4
    assert pruned.grouped[0].in_channels % 4 == 0 and pruned(X).shape == (2, 10)


def test_concat_groups_map_into_the_consumer():
    model = build("tiny_densenet")
    graph = build_graph(model, X[:1])
    layer1 = graph.group("layer1.0")
    consumers = {(m.module, m.dim) for m in layer1.members}
    assert ("layer2.0", "in") in consumers and ("transition.0", "in") in consumers


def test_model_is_untouched_by_surgery():
    model = build("resnet20")
    reference = {k: v.clone() for k, v in model.state_dict().items()}
    graph = build_graph(model, X[:1])
    apply_plan(model, X[:1], random_plan(graph))
    assert all(torch.equal(reference[k], v) for k, v in model.state_dict().items())


def test_plan_for_another_model_is_refused():
    graph = build_graph(build("resnet20"), X[:1])
    plan = random_plan(graph)
    with pytest.raises(SurgeryError, match="does not have|expects"):
        apply_plan(build("tiny_densenet"), X[:1], plan)


def test_malformed_plans_are_refused():
    with pytest.raises(SurgeryError):
        PruningPlan.from_keep({"conv1": [3, 1, 1]}, {"conv1": 16})
    with pytest.raises(SurgeryError):
        PruningPlan.from_keep({"conv1": [0, 16]}, {"conv1": 16})
    with pytest.raises(SurgeryError):
        PruningPlan.from_dict({"version": 99, "groups": {}})


def test_layers_the_graph_cannot_cut_are_left_whole_with_a_warning_and_the_budget_still_met(caplog):
    from nets import FoldNet

    from autoprune.allocate import ProblemInputs, allocate
    from autoprune.importance import get_criterion
    from autoprune.spec import Budget
    from autoprune.surgery import make_plan

    torch.manual_seed(0)
    model = FoldNet().eval()
    graph = build_graph(model, X[:1])
    assert graph.skipped == ("b",) and "b" in caplog.text
    report = count_cost(model, X[:1])
    scores = get_criterion("l1").score(graph)
    allocation = allocate("global", ProblemInputs.measure(model, graph, scores, X[:1]), Budget(kind="flops", value=0.6))
    pruned = apply_plan(model, X[:1], make_plan(graph, scores, allocation.keep))
    assert pruned.b.out_channels == 8
    # one channel of `a` is ~11% of this net's MACs, so the budget is met to within that step
    assert 0.45 <= count_cost(pruned, X[:1]).macs / report.macs <= 0.6


def test_a_model_the_graph_cannot_trace_is_refused_clearly():
    from autoprune.errors import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="dependency graph"):
        build_graph(build("shufflenet_v2_x0_5"), X[:1])


def test_quadratic_form_of_the_cost_is_exact(case):
    _, model, graph, plan, pruned = case
    cost_model = CostModel(graph, count_cost(model, X))
    measured = count_cost(pruned, X)
    widths = {g.id: plan.widths().get(g.id, g.channels) for g in graph.groups}
    assert cost_model.quadratic("macs")(widths) == pytest.approx(measured.macs, rel=1e-9)
    assert cost_model.quadratic("params")(widths) == pytest.approx(measured.params, rel=1e-9)
