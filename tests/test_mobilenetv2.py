"""The CIFAR MobileNetV2: size, small inputs, and pruning through the graph and surgery (depthwise groups)."""

from __future__ import annotations

import torch
from torch import nn

from autoprune.graph import build_graph
from autoprune.measure import CostModel, count_cost
from autoprune.models import create_model
from autoprune.surgery import PruningPlan, apply_plan

X = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("cifar_mobilenetv2", num_classes=10).eval()


def test_builds_with_the_documented_size_and_runs_on_32_and_8_pixels() -> None:
    net = model()
    cost = count_cost(net, X[:1])
    assert (cost.macs, cost.params) == (87_976_448, 2_236_682)
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    with torch.no_grad():
        assert net(X).shape == (2, 10)
        assert net(torch.randn(2, 3, 8, 8)).shape == (2, 10)
    assert create_model("cifar_mobilenetv2", num_classes=4, in_channels=1)(torch.randn(1, 1, 32, 32)).shape == (1, 4)


def test_prunes_to_a_smaller_model_with_depthwise_convs_kept_consistent() -> None:
    net = model()
    graph = build_graph(net, X[:1])
    depthwise = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1}
    for name in depthwise:  # each depthwise conv is pruned with the conv that feeds it, in one group
        (group,) = [g for g in graph.groups if any(m.module == name for m in g.members)]
        assert group.blocks == 1 and any(m.dim == "out" and m.module not in depthwise for m in group.members)
    keep = {g.id: list(range(0, g.channels, 2)) for g in graph.groups}  # every other channel
    channels = {g.id: g.channels for g in graph.groups}
    plan = PruningPlan.from_keep(keep, channels, ignore=graph.ignore, skipped=graph.skipped)
    pruned = apply_plan(net, X[:1], plan)
    before, after = count_cost(net, X[:1]), count_cost(pruned, X[:1])
    assert after.macs < 0.3 * before.macs and after.params < 0.3 * before.params
    assert CostModel(graph, before).cost(plan.widths()) == (after.macs, after.params)
    for m in pruned.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels
    assert pruned.classifier.out_features == 10
    with torch.no_grad():
        assert pruned(X).shape == (2, 10) and torch.isfinite(pruned(X)).all()
