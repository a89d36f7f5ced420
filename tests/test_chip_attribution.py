"""CHIP and the attribution criteria against direct computations on tiny nets, plus their contract."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from conftest import build
from torch import nn

from autoprune.graph import build_graph
from autoprune.importance.attribution import Attribution, TaylorGuided
from autoprune.importance.chip import CHIP, channel_independence, following_activations
from autoprune.importance.taylor import feature_points

X = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
Y = torch.randint(0, 4, (8,), generator=torch.Generator().manual_seed(1))


def tiny(copy_filter: bool = False) -> nn.Sequential:
    """conv → BN → in-place ReLU → pool → fc; optionally filter 1 an exact copy of filter 0."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, bias=False),
        nn.BatchNorm2d(6),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():  # non-trivial BN, so post-ReLU maps have zeros and differ from BN outputs
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
        net[1].running_mean.uniform_(-0.2, 0.2)
        if copy_filter:
            net[0].weight[1] = net[0].weight[0]
            for p in (net[1].weight, net[1].bias, net[1].running_mean, net[1].running_var):
                p[1] = p[0]
    return net.eval()


def batches():
    yield X[:4], Y[:4]
    yield X[4:], Y[4:]


def nuclear_drop(maps: np.ndarray) -> np.ndarray:
    """CHIP's calculate_ci.py: per example, ‖A‖_* − ‖A with row i zeroed‖_*, by plain SVDs."""
    a = maps.reshape(maps.shape[0], maps.shape[1], -1).astype(np.float64)
    out = np.zeros(a.shape[:2])
    for n in range(a.shape[0]):
        full = np.linalg.svd(a[n], compute_uv=False).sum()
        for i in range(a.shape[1]):
            masked = a[n].copy()
            masked[i] = 0
            out[n, i] = full - np.linalg.svd(masked, compute_uv=False).sum()
    return out


@pytest.mark.parametrize(
    "shape", [(3, 6, 20), (3, 8, 5), (2, 16, 64), (2, 5, 1)], ids=["wide", "tall", "square-ish", "vector"]
)
def test_channel_independence_is_the_nuclear_norm_drop(shape):
    a = torch.randn(*shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64).relu()
    a = a * torch.logspace(-2, 2, shape[1], dtype=torch.float64)[None, :, None]  # wide dynamic range
    expected = nuclear_drop(a.numpy())
    np.testing.assert_allclose(channel_independence(a).numpy(), expected, rtol=1e-9, atol=1e-11 * expected.max())


def test_channel_independence_on_rank_deficient_maps():
    """Dead channels, exact copies and linear combinations make A rank-deficient: still exact."""
    a = torch.randn(3, 12, 40, generator=torch.Generator().manual_seed(4), dtype=torch.float64).relu()
    a[:, 2] = 0
    a[:, 5] = a[:, 4] + 1e-6 * a[:, 3]
    a[:, 7] = 2 * a[:, 6]
    expected = nuclear_drop(a.numpy())
    got = channel_independence(a).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-11 * expected.max())
    assert np.all(got[:, 2] <= 1e-20 * expected.max())  # a dead channel: zero up to rounding
    np.testing.assert_allclose(channel_independence(torch.zeros(2, 4, 9)).numpy(), 0)


def test_chip_matches_svd_definition_on_post_relu_maps():
    net = tiny()
    scores = CHIP().score(build_graph(net, X[:1]), batches)
    # Direct: CHIP hooks the ReLU output; same batch split so the float32 maps are bit-identical.
    with torch.no_grad():
        maps = torch.cat([net[2](net[1](net[0](x))) for x, _ in batches()])
    expected = nuclear_drop(maps.numpy()).mean(0)
    np.testing.assert_allclose(scores["0"], expected, rtol=1e-9)
    assert not np.allclose(scores["0"], nuclear_drop(net[1](net[0](X)).detach().numpy()).mean(0), rtol=1e-3)


def test_chip_batches_caps_the_calibration_batches():
    net = tiny()
    graph = build_graph(net, X[:1])
    first_only = CHIP(batches=1).score(graph, batches)
    with torch.no_grad():
        maps = net[2](net[1](net[0](X[:4])))
    np.testing.assert_allclose(first_only["0"], nuclear_drop(maps.numpy()).mean(0), rtol=1e-9)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_chip_rejects_bad_batches(bad):
    with pytest.raises(ValueError, match="batches"):
        CHIP(batches=bad)


@pytest.mark.parametrize("criterion", [CHIP(), Attribution(), TaylorGuided()], ids=["chip", "attr", "tg"])
def test_needs_data_and_leaves_no_state_behind(criterion):
    net = tiny().train()
    graph = build_graph(net, X[:1])
    net.train()
    with pytest.raises(ValueError, match="calibration batches"):
        criterion.score(graph, None)
    with pytest.raises(ValueError, match="no calibration batches"):
        criterion.score(graph, lambda: iter([]))
    first = criterion.score(graph, batches)
    second = criterion.score(graph, batches)
    np.testing.assert_array_equal(first["0"], second["0"])
    assert net.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in net.modules())
    assert all(p.grad is None for p in net.parameters())


def test_copied_channel_is_less_independent():
    """Filter 1 = filter 0 (same BN): both maps are explained by the other, so both lose independence
    against the same net with filter 1 an independent random filter of the same norm."""
    copy = tiny(copy_filter=True)
    control = tiny(copy_filter=True)
    with torch.no_grad():
        r = torch.randn(control[0].weight[1].shape, generator=torch.Generator().manual_seed(5))
        control[0].weight[1] = r * control[0].weight[0].norm() / r.norm()
    ci = CHIP().score(build_graph(copy, X[:1]), batches)["0"]
    independent = CHIP().score(build_graph(control, X[:1]), batches)["0"]
    assert ci[0] == pytest.approx(ci[1], rel=1e-9)
    assert ci[0] < 0.7 * independent[0] and ci[1] < 0.7 * independent[1]
    np.testing.assert_allclose(ci[2:], independent[2:], rtol=0.1)  # the other channels barely move


def test_activation_is_found_only_when_it_reads_the_unmodified_output():
    """CHIP's maps are ReLU outputs: relu1 follows bn1; relu2 reads bn2 + shortcut, not bn2."""
    model = build("resnet20")
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    points = set().union(*(feature_points(graph, g.id) for g in graph.groups))
    found = following_activations(model, points, graph.example_input)
    block = model.layer1[0]
    assert found[model.bn1] is model.relu and found[block.bn1] is block.relu1
    assert block.bn2 not in found and model.layer2[0].downsample[1] not in found

    class InPlaceResidual(nn.Module):  # torchvision style: out = bn(x); out += x; relu(out)
        def __init__(self) -> None:
            super().__init__()
            self.bn = nn.BatchNorm2d(3)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.bn(x)
            out += x
            return self.relu(out)

    net = InPlaceResidual().eval()
    assert following_activations(net, {net.bn}, torch.ones(1, 3, 2, 2)) == {}


def attribution_direct(net: nn.Sequential, statistic: str) -> np.ndarray:
    """Per example: A = BN output, ∂(true-class logit)/∂A by autograd; mean over examples, unit L2."""
    total = np.zeros(6)
    for n in range(8):
        a = net[1](net[0](X[n : n + 1]))
        a.retain_grad()
        logits = net[5](net[4](net[3](net[2](a.clone()))))
        logits[0, Y[n]].backward()
        act, grad = a.detach()[0].double().numpy().reshape(6, -1), a.grad[0].double().numpy().reshape(6, -1)
        if statistic == "gradcam":
            cam = np.maximum((grad.mean(1, keepdims=True) * act).sum(0), 0)
            rect = np.maximum(act, 0)
            total += rect @ cam / (np.linalg.norm(rect, axis=1) * np.linalg.norm(cam) + 1e-12)
        else:
            total += np.maximum(act * grad, 0).sum(1)
    mean = total / 8
    return mean / np.linalg.norm(mean)


@pytest.mark.parametrize("criterion,statistic", [(Attribution(), "gradcam"), (TaylorGuided(), "taylor")])
def test_attribution_matches_autograd_per_example(criterion, statistic):
    net = tiny()
    scores = criterion.score(build_graph(net, X[:1]), batches)
    expected = attribution_direct(net, statistic)
    assert np.ptp(expected) > 0.05  # not a degenerate (constant) score
    np.testing.assert_allclose(scores["0"], expected, rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(scores["0"]) == pytest.approx(1.0)


@pytest.mark.parametrize("criterion", [CHIP(), Attribution(), TaylorGuided()], ids=["chip", "attr", "tg"])
@pytest.mark.parametrize("arch", ["resnet20", "tiny_densenet"])
def test_contract(criterion, arch):
    """One finite, non-negative score per channel of every group, not all zero, deterministic."""
    model = build(arch)
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    data = lambda: iter([(x, torch.arange(4))])  # noqa: E731
    first = criterion.score(graph, data)
    second = criterion.score(graph, data)
    assert set(first) == {g.id for g in graph.groups}
    for g in graph.groups:
        assert first[g.id].shape == (g.channels,)
        assert np.all(np.isfinite(first[g.id])) and np.all(first[g.id] >= 0) and first[g.id].max() > 0
        np.testing.assert_allclose(first[g.id], second[g.id])


@pytest.mark.slow
def test_chip_resnet56_timing():
    """Prints CHIP's wall time on ResNet-56, 4 batches of 64 CIFAR-size inputs (no time assertion)."""
    model = build("resnet56")
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    gen = torch.Generator().manual_seed(0)
    data = [(torch.randn(64, 3, 32, 32, generator=gen), torch.randint(0, 10, (64,), generator=gen)) for _ in range(4)]
    start = time.perf_counter()
    scores = CHIP().score(graph, lambda: iter(data))
    print(f"CHIP resnet56, 4x64 at 32x32, {torch.get_num_threads()} thread(s): {time.perf_counter() - start:.1f} s")
    assert all(np.all(np.isfinite(s)) for s in scores.values())
