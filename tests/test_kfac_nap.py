"""NAP: K-FAC factors and OBS saliencies against explicit computations; the NAP allocator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import build
from torch import nn
from torch.nn import functional as F

from autoprune.allocate import ProblemInputs, allocate
from autoprune.graph import build_graph
from autoprune.importance.kfac import (
    KFAC,
    KronFactors,
    in_saliency,
    kfac_factors,
    kfac_hooks,
    obs_compensation,
    out_saliency,
    sample_labels,
)
from autoprune.measure import count_cost
from autoprune.spec import Budget
from autoprune.surgery import apply_plan, make_plan
from solvers import AllocationProblem, GroupSpec, get_allocator
from solvers.base import QuadraticCost
from solvers.nap import NAP

DOUBLE = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv_linear_net() -> nn.Sequential:
    """Grouped strided conv with bias (in-place ReLU after it) → flatten → linear with bias."""
    torch.manual_seed(0)
    return (
        nn.Sequential(
            nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2),
            nn.ReLU(inplace=True),
            nn.Flatten(),
            nn.Linear(6 * 3 * 3, 5),
        )
        .to(DOUBLE)
        .eval()
    )


X = torch.randn(5, 4, 6, 6, generator=gen(0), dtype=DOUBLE)
Y = torch.randint(0, 5, (5,), generator=gen(1))


def two_batches():
    yield X[:3], Y[:3]  # unequal batch sizes: expectations are over examples, not batches
    yield X[3:], Y[3:]


def explicit_factors(net: nn.Sequential, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """A and G by loops over examples and positions; G from per-example autograd gradients."""
    conv, lin = net[0], net[3]
    padded = F.pad(X, (1, 1, 1, 1))
    A_conv, G_conv = torch.zeros(2, 19, 19, dtype=DOUBLE), torch.zeros(2, 3, 3, dtype=DOUBLE)
    A_lin, G_lin = torch.zeros(1, 55, 55, dtype=DOUBLE), torch.zeros(1, 5, 5, dtype=DOUBLE)
    for n in range(len(X)):
        s = conv(X[n : n + 1])
        s.retain_grad()
        h = net[2](net[1](s.clone()))
        logits = lin(h)
        logits.retain_grad()
        F.cross_entropy(logits, labels[n : n + 1], reduction="sum").backward()
        for i in range(3):
            for j in range(3):
                patch = padded[n, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3]
                for b in range(2):
                    a = torch.cat([patch[2 * b : 2 * b + 2].flatten(), torch.ones(1, dtype=DOUBLE)])
                    A_conv[b] += torch.outer(a, a) / (len(X) * 9)
                    g = s.grad[0, 3 * b : 3 * b + 3, i, j]
                    G_conv[b] += torch.outer(g, g) / len(X)
        a = torch.cat([h[0].detach(), torch.ones(1, dtype=DOUBLE)])
        A_lin[0] += torch.outer(a, a) / len(X)
        G_lin[0] += torch.outer(logits.grad[0], logits.grad[0]) / len(X)
    return {"A_conv": A_conv, "G_conv": G_conv, "A_lin": A_lin, "G_lin": G_lin}


def assert_factors(
    factors: dict[nn.Module, KronFactors], net: nn.Sequential, expected: dict[str, torch.Tensor]
) -> None:
    torch.testing.assert_close(factors[net[0]].A, expected["A_conv"])
    torch.testing.assert_close(factors[net[0]].G, expected["G_conv"])
    torch.testing.assert_close(factors[net[3]].A, expected["A_lin"])
    torch.testing.assert_close(factors[net[3]].G, expected["G_lin"])


def test_factors_are_the_explicit_expectations_empirical_fisher():
    net = conv_linear_net()
    factors = kfac_factors(net, [net[0], net[3]], two_batches, fisher="empirical")
    assert_factors(factors, net, explicit_factors(net, Y))
    assert factors[net[0]].G.abs().sum() > 0 and factors[net[3]].G.abs().sum() > 0


def test_true_fisher_backpropagates_labels_sampled_from_the_model():
    net = conv_linear_net()
    generator = gen(7)
    with torch.no_grad():
        sampled = torch.cat([sample_labels(net(x), generator) for x, _ in two_batches()])
    factors = kfac_factors(net, [net[0], net[3]], two_batches, fisher="true", seed=7)
    assert_factors(factors, net, explicit_factors(net, sampled))


def test_damping_is_relative_to_each_blocks_mean_diagonal():
    net = conv_linear_net()
    raw = kfac_factors(net, [net[0]], two_batches, fisher="empirical")[net[0]]
    damped = kfac_factors(net, [net[0]], two_batches, damping=0.1, fisher="empirical")[net[0]]
    for b in range(2):
        torch.testing.assert_close(
            damped.A[b], raw.A[b] + 0.1 * raw.A[b].diagonal().mean() * torch.eye(19, dtype=DOUBLE)
        )
        torch.testing.assert_close(
            damped.G[b], raw.G[b] + 0.1 * raw.G[b].diagonal().mean() * torch.eye(3, dtype=DOUBLE)
        )


# --- saliencies and compensation against the explicit Kronecker-factored Fisher -------------


def spd(n: int, seed: int) -> torch.Tensor:
    q = torch.randn(n, n, generator=gen(seed), dtype=DOUBLE)
    return q @ q.T / n + 0.3 * torch.eye(n, dtype=DOUBLE)


def random_factors(blocks: int, d_in: int, d_out: int) -> KronFactors:
    return KronFactors(
        torch.stack([spd(d_in, 10 + b) for b in range(blocks)]),
        torch.stack([spd(d_out, 20 + b) for b in range(blocks)]),
    )


def grouped_conv() -> nn.Conv2d:
    torch.manual_seed(3)
    return nn.Conv2d(4, 6, 2, groups=2).to(DOUBLE)  # blocks of 3 rows × (2·4 + 1 bias) columns


def explicit_fisher(module: nn.Module, f: KronFactors) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """θ (column-major vec of each block's [W | b]), F = blockdiag(A_b ⊗ G_b), θ-index of (b, i, j)."""
    blocks = f.A.shape[0]
    rows = module.weight.shape[0] // blocks
    W = torch.cat([module.weight.detach().flatten(1), module.bias.detach()[:, None]], 1).reshape(blocks, rows, -1)
    theta = torch.cat([W[b].T.reshape(-1) for b in range(blocks)])
    fisher = torch.block_diag(*[torch.kron(f.A[b], f.G[b]) for b in range(blocks)])
    size = W[0].numel()
    index = [b * size + torch.arange(size).reshape(W.shape[2], rows).T for b in range(blocks)]  # index[b][i, j]
    return theta, fisher, index


def obs_cost(theta: torch.Tensor, fisher: torch.Tensor, removed: torch.Tensor) -> float:
    """Textbook OBS: ½ θ_Rᵀ ([F⁻¹]_RR)⁻¹ θ_R, the least loss increase with θ_R = 0."""
    inv = torch.linalg.inv(fisher)[removed][:, removed]
    return 0.5 * float(theta[removed] @ torch.linalg.inv(inv) @ theta[removed])


def test_out_saliency_is_the_obs_cost_of_removing_a_row():
    conv, f = grouped_conv(), random_factors(2, 9, 3)
    theta, fisher, index = explicit_fisher(conv, f)
    expected = [obs_cost(theta, fisher, index[r // 3][r % 3, :]) for r in range(6)]
    np.testing.assert_allclose(out_saliency(conv, f).numpy(), expected, rtol=1e-10)


def test_in_saliency_is_the_obs_cost_of_removing_an_input_channel():
    conv, f = grouped_conv(), random_factors(2, 9, 3)
    theta, fisher, index = explicit_fisher(conv, f)
    for c in range(4):  # input channel c: block c // 2, its 2×2 kernel columns
        local = c % 2
        removed = index[c // 2][:, 4 * local : 4 * local + 4].flatten()
        assert in_saliency(conv, f, [c]) == pytest.approx(obs_cost(theta, fisher, removed), rel=1e-10)


def test_in_saliency_of_several_features_is_their_joint_cost():
    torch.manual_seed(4)
    linear, f = nn.Linear(6, 3).to(DOUBLE), random_factors(1, 7, 3)
    theta, fisher, index = explicit_fisher(linear, f)
    joint = obs_cost(theta, fisher, index[0][:, [1, 4]].flatten())
    assert in_saliency(linear, f, [1, 4]) == pytest.approx(joint, rel=1e-10)
    assert in_saliency(linear, f, [1, 4]) != pytest.approx(in_saliency(linear, f, [1]) + in_saliency(linear, f, [4]))


def test_compensation_is_the_explicit_constrained_minimum():
    torch.manual_seed(5)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Conv2d(4, 6, 2, groups=2), nn.Flatten(), nn.Linear(6, 2)).double()
    graph = build_graph(net, torch.zeros(1, 3, 2, 2, dtype=DOUBLE))
    conv, f = net[1], random_factors(2, 9, 3)
    theta, fisher, index = explicit_fisher(conv, f)
    # Both groups have blocks of 2 and drop one position in each block: the grouped conv loses
    # inputs 0 and 2 (group "0") and output rows 1 and 4 (group "1") at once.
    keep = {"0": [1, 3], "1": [0, 2, 3, 5]}
    rows = [index[0][1, :], index[1][1, :]]
    removed = torch.cat([*rows, index[0][:, 0:4].flatten(), index[1][:, 0:4].flatten()]).unique()
    free = torch.tensor([i for i in range(len(theta)) if i not in set(removed.tolist())])
    delta = torch.zeros_like(theta)
    delta[removed] = -theta[removed]
    delta[free] = -torch.linalg.solve(fisher[free][:, free], fisher[free][:, removed] @ delta[removed])
    obs_compensation(graph, {conv: f}, keep)
    after, _, _ = explicit_fisher(conv, f)
    torch.testing.assert_close(after, theta + delta)
    assert 0.5 * float(delta @ fisher @ delta) == pytest.approx(obs_cost(theta, fisher, removed), rel=1e-9)


def test_group_score_adds_the_out_rows_and_the_next_layers_in_columns():
    torch.manual_seed(6)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 4, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    ).eval()
    graph = build_graph(net, torch.zeros(1, 3, 4, 4))
    x = torch.randn(6, 3, 4, 4, generator=gen(2))
    batches = lambda: iter([(x, torch.arange(6) % 3)])  # noqa: E731
    criterion = KFAC(damping=1e-2)
    scores = criterion.score(graph, batches)
    f = kfac_factors(net, [net[0], net[3], net[6]], batches, damping=1e-2)
    expected_0 = [float(out_saliency(net[0], f[net[0]])[c]) + in_saliency(net[3], f[net[3]], [c]) for c in range(6)]
    # Flatten is channel-major: channel c of conv 3 feeds linear inputs 4c … 4c+3, removed jointly.
    expected_3 = [
        float(out_saliency(net[3], f[net[3]])[c]) + in_saliency(net[6], f[net[6]], range(4 * c, 4 * c + 4))
        for c in range(4)
    ]
    np.testing.assert_allclose(scores["0"], expected_0, rtol=1e-10)
    np.testing.assert_allclose(scores["3"], expected_3, rtol=1e-10)


# --- hooks -------------------------------------------------------------------------------------


def test_hooks_and_gradients_are_removed_after_scoring_and_after_a_failing_forward():
    net = conv_linear_net()
    kfac_factors(net, [net[0], net[3]], two_batches)
    assert all(not m._forward_hooks for m in net.modules()) and all(p.grad is None for p in net.parameters())
    bad = lambda: iter([(torch.zeros(2, 4, 8, 8, dtype=DOUBLE), torch.zeros(2, dtype=torch.long))])  # noqa: E731
    with pytest.raises(RuntimeError):
        kfac_factors(net, [net[0], net[3]], bad)  # the conv runs (its hook fires), the linear does not fit
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(KeyError), kfac_hooks([net[0]]):
        assert net[0]._forward_hooks
        raise KeyError("inside")
    assert not net[0]._forward_hooks


def test_invalid_arguments_are_refused():
    for kwargs in ({"damping": 0}, {"damping": -1.0}, {"damping": float("nan")}, {"fisher": "hessian"}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            KFAC(**kwargs)
    with pytest.raises(ValueError, match="per_cost"):
        NAP(per_cost="yes")
    net = conv_linear_net()
    with pytest.raises(ValueError, match="no calibration batches"):
        kfac_factors(net, [net[0]], lambda: iter([]))


@pytest.mark.parametrize("arch", ["resnet20", "tiny_resnext"])
def test_contract_finite_non_negative_deterministic(arch):
    model = build(arch)
    graph = build_graph(model, torch.zeros(1, 3, 32, 32))
    data = lambda: iter([(torch.randn(4, 3, 32, 32, generator=gen(2)), torch.arange(4))])  # noqa: E731
    first, second = KFAC().score(graph, data), KFAC().score(graph, data)
    assert set(first) == {g.id for g in graph.groups}
    for g in graph.groups:
        assert first[g.id].shape == (g.channels,)
        assert np.all(np.isfinite(first[g.id])) and np.all(first[g.id] >= 0) and first[g.id].max() > 0
        np.testing.assert_allclose(first[g.id], second[g.id])


# --- the NAP allocator ---------------------------------------------------------------------------


def toy(
    budget: float, scores: dict[str, list[float]], cost=None, blocks: dict[str, int] | None = None
) -> AllocationProblem:
    blocks = blocks or {}
    return AllocationProblem(
        groups=tuple(GroupSpec(id=k, channels=len(v), blocks=blocks.get(k, 1)) for k, v in scores.items()),
        scores={k: np.array(v, dtype=float) for k, v in scores.items()},
        cost=cost or (lambda keep: float(sum(keep.values()))),
        budget=budget,
    )


def test_nap_ranks_raw_loss_increases_not_per_layer_normalised_scores():
    # Pool (each group keeps its best): a: 50, 40, 30; b: 1, 1, 1. Three more channels fit:
    # raw loss increases keep a's three; RMS-normalised (GlobalRank) keeps a: .82 and b: .76, .76.
    problem = toy(5, {"a": [100, 50, 40, 30], "b": [2, 1, 1, 1]})
    assert dict(NAP().allocate(problem).keep) == {"a": 4, "b": 1}
    assert dict(get_allocator("global").allocate(problem).keep) == {"a": 2, "b": 3}


def test_a_group_conv_unit_costs_the_sum_of_its_channels():
    # a: 2 units of 2 channels, each unit loses 3 + 3 = 6 > 5 of one b channel: the a unit is kept.
    problem = toy(5, {"a": [9, 3, 9, 3], "b": [5, 5, 5]}, blocks={"a": 2})
    assert dict(NAP(per_cost=False).allocate(problem).keep) == {"a": 4, "b": 1}
    # per cost saved: the a unit frees 2 channels for 6 (3 each), two b channels 5 each
    assert dict(NAP().allocate(problem).keep) == {"a": 2, "b": 3}


def test_per_cost_ranking_removes_expensive_channels_first_by_default():
    # Raw ranking (NAP's for weights, which all cost one parameter) kept fewer channels of both
    # and lost more: under a cost budget the least loss for the cost to remove is s / ΔC.
    cost = lambda keep: float(keep["a"] + 10 * keep["b"])  # noqa: E731
    problem = toy(13, {"a": [2, 2, 2], "b": [3, 3, 3]}, cost=cost)
    assert dict(NAP(per_cost=False).allocate(problem).keep) == {"a": 1, "b": 1}  # b's 3 ranks first but does not fit
    assert dict(NAP().allocate(problem).keep) == {"a": 3, "b": 1}  # 2/1 > 3/10


def test_nap_meets_a_macs_budget_on_a_toy_chain():
    # MACs of conv(3→a) · conv(a→b) · fc(b→10) on a 4×4 map: bilinear in the widths.
    macs = QuadraticCost(constant=0.0, linear={"a": 3 * 9 * 16, "b": 10}, quadratic={("a", "b"): 9 * 16})
    rng = np.random.default_rng(0)
    scores = {"a": list(rng.random(8)), "b": list(rng.random(12))}
    full = macs({"a": 8, "b": 12})
    for fraction in (0.2, 0.5, 0.9):
        allocation = NAP().allocate(toy(fraction * full, scores, cost=macs))
        assert allocation.cost == macs(allocation.keep) <= fraction * full
        assert allocation.cost > fraction * full - 9 * 16 * 12  # within one channel of the budget


@pytest.fixture(scope="module")
def resnet20_kfac():
    model = build("resnet20")
    example = torch.zeros(1, 3, 32, 32)
    graph = build_graph(model, example)
    data = lambda: iter([(torch.randn(8, 3, 32, 32, generator=gen(3)), torch.arange(8))])  # noqa: E731
    return model, example, graph, KFAC().score(graph, data)


def test_nap_on_kfac_scores_meets_the_measured_macs_budget(resnet20_kfac):
    model, example, graph, scores = resnet20_kfac
    report = count_cost(model, example)
    allocation = allocate(NAP(), ProblemInputs.measure(model, graph, scores, example), Budget(kind="flops", value=0.5))
    pruned = apply_plan(model, example, make_plan(graph, scores, allocation.keep))
    assert 0.49 <= count_cost(pruned, example).macs / report.macs <= 0.5
    ratios = {gid: n / graph.group(gid).channels for gid, n in allocation.keep.items()}
    assert len({round(r, 3) for r in ratios.values()}) > 1  # per-layer ratios fall out, not uniform
