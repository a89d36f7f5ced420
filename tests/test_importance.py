"""Criteria against direct computations on tiny nets, plus a contract every criterion meets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build
from torch import nn

from autoprune.catalog import criterion_names
from autoprune.errors import UnknownNameError
from autoprune.graph import build_graph
from autoprune.importance import get_criterion

X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(1))


def tiny() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():  # non-trivial BN so the Taylor check is not degenerate
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-0.2, 0.2)
    return net.eval()


def batches():
    yield X[:4], Y[:4]
    yield X[4:], Y[4:]


def test_l1_is_the_filter_l1_norm():
    net = tiny()
    scores = get_criterion("l1").score(build_graph(net, X[:1]))
    np.testing.assert_allclose(scores["0"], net[0].weight.detach().abs().sum((1, 2, 3)).double().numpy(), rtol=1e-6)


def test_bn_scale_is_abs_gamma():
    net = tiny()
    with torch.no_grad():
        net[1].weight[2] = -3.0
    scores = get_criterion("bn_scale").score(build_graph(net, X[:1]))
    np.testing.assert_allclose(scores["0"], net[1].weight.detach().abs().double().numpy(), rtol=1e-6)


def test_taylor_matches_per_example_activation_times_gradient():
    net = tiny()
    scores = get_criterion("taylor").score(build_graph(net, X[:1]), batches)
    # Direct: z = BN output, per example |sum_{h,w} z * dC_n/dz|, mean over the 8 examples.
    expected = torch.zeros(6, dtype=torch.float64)
    for n in range(8):
        z = net[1](net[0](X[n : n + 1]))
        z.retain_grad()
        loss = nn.functional.cross_entropy(net[5](net[4](net[3](net[2](z.clone())))), Y[n : n + 1])
        loss.backward()
        expected += (z * z.grad).sum((2, 3)).abs()[0].double().detach()
    np.testing.assert_allclose(scores["0"], (expected / 8).numpy(), rtol=1e-4)


def test_taylor_leaves_no_hooks_or_gradients_behind():
    net = tiny()
    get_criterion("taylor").score(build_graph(net, X[:1]), batches)
    assert all(not m._forward_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_unknown_criterion_suggests_names():
    with pytest.raises(UnknownNameError, match="taylor"):
        get_criterion("talyor")


@pytest.mark.parametrize("name", criterion_names())
@pytest.mark.parametrize("arch", ["resnet20", "tiny_densenet", "tiny_resnext"])
def test_criterion_contract(name, arch):
    """Every criterion: one finite, non-negative score per channel of every group, deterministic."""
    model = build(arch)
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    data = lambda: iter([(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2)), torch.arange(4))])  # noqa: E731
    criterion = get_criterion(name)
    first = criterion.score(graph, data if criterion.needs_data else None)
    second = criterion.score(graph, data if criterion.needs_data else None)
    assert set(first) == {g.id for g in graph.groups}
    for g in graph.groups:
        assert first[g.id].shape == (g.channels,)
        assert np.all(np.isfinite(first[g.id])) and np.all(first[g.id] >= 0)
        np.testing.assert_allclose(first[g.id], second[g.id])
