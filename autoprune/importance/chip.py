"""CHIP: channel independence (Sui et al., NeurIPS 2021; code ``Eclipsess/CHIP_NeurIPS2021``).

For one example, reshape a layer's feature maps to A ∈ R^{c×hw}. The independence of channel i is
how much the nuclear norm drops when its row is zeroed (``calculate_ci.py`` zeroes the row;
deleting it gives the same singular values):

    CI_i = ‖A‖_* − ‖M_i ⊙ A‖_*,

averaged over the calibration examples. Channels most linearly explained by the others have the
lowest CI and are pruned first. As in the paper the maps are post-ReLU: CHIP hooks every ReLU
output. The maps we read are the group's feature points (the same modules as the Taylor
criterion, :func:`~autoprune.importance.taylor.feature_points`); when a point's output goes
straight into an activation module (conv → BN → ReLU) CI is taken on that activation's output,
which is exactly CHIP's map. Deviation: where a point feeds a residual add, CHIP reads each
block's post-addition ReLU, and we read the branch's own BN output (the point has no ReLU of its
own); the CI of every point coupled into a group is summed into the group's channels, as CHIP
has no rule for coupled layers (it hard-codes ResNet stage outputs). CHIP rounds the saved maps
to 4 decimals, a storage artefact we skip.

Speed (not in the paper, which runs c+1 CPU SVDs per example and layer, O(c⁴)): with A = U S Vᵀ,
zeroing row i leaves the singular values of S with the unit direction u = U[i] projected out, the
square roots of the eigenvalues of the rank-one downdate S² − S u uᵀ S. Writing
√x = (1/π) ∫_0^∞ x/(x+t) t^{-1/2} dt and applying Sherman–Morrison, with d_k = s_k²,
w_k = U[i,k]² and ρ = 1 − Σ_k w_k:

    CI_i = (1/π) ∫ g(u) du,   g = t^{3/2} Σ_k d_k w_k/(d_k+t)² / (ρ + t Σ_k w_k/(d_k+t)),   t = e^u.

Every term is positive (CI ≥ 0, no difference of two large norms), and g is analytic in the strip
|Im u| < π, so the trapezoid rule in u converges exponentially; beyond the extreme d_k the tails
follow closed asymptotic forms. One SVD per example and two small matmuls per quadrature node
replace c SVDs: O(c³) per example. The tests check it against the direct SVD difference
(agreement ≈ 1e-13 relative); ResNet-56 on 4×64 CIFAR images scores in a few seconds on one core.

CHIP sets the per-layer ratios by hand (e.g. ``[0.]+[0.15]*2+[0.4]*27`` for ResNet-56); here the
allocators choose them and CHIP only ranks channels within groups.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn

from autoprune.device import model_device
from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, scatter_to_channels
from autoprune.importance.taylor import feature_points

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.SiLU, nn.Hardswish, nn.GELU)
STEP = 0.6  # trapezoid step in log t
TAIL = 10.0  # quadrature grid runs e^{2·TAIL} past the extreme s_k²; asymptotic forms beyond it
FAR = 30.0  # the lower tail stops at e^{-2·FAR} times the smallest s_k², leaving < 2e-13 of s_min
RANK_TOL = 1e-10  # singular values below this fraction of the largest are treated as zero
PAIRS = 8192  # (example, channel) pairs per quadrature chunk, to bound memory


class CHIP(Criterion):
    """Mean channel independence over the calibration examples (``batches`` caps the batches read)."""

    needs_data = True

    def __init__(self, batches: int | None = None) -> None:
        if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int) or batches < 1):
            raise ValueError(f"batches must be a positive integer or None, got {batches!r}")
        self.batches = batches

    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        if batches is None:
            raise ValueError("the chip criterion needs calibration batches")
        points = {g.id: feature_points(graph, g.id) for g in graph.groups}
        modules = set().union(*points.values())
        activations = following_activations(graph.model, modules, graph.example_input)
        ci = mean_independence(graph.model, modules, activations, batches, self.batches)
        return {
            gid: scatter_to_channels(graph, gid, lambda m, dim, mods=mods: ci.get(m) if m in mods else None)
            for gid, mods in points.items()
        }


def following_activations(
    model: nn.Module, modules: set[nn.Module], example_input: torch.Tensor
) -> dict[nn.Module, nn.Module]:
    """For each module whose output goes unmodified into an activation module, that activation.

    Found by one probe forward: an activation's input must be the very tensor the module returned,
    at the same version (so ``out += identity; relu(out)`` does not count). The probe runs on the
    model's device, whatever device the graph was traced on.
    """
    produced: list[tuple[torch.Tensor, int, nn.Module]] = []
    found: dict[nn.Module, nn.Module] = {}

    def on_output(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        produced.append((output, output._version, module))

    def on_activation(activation: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        for tensor, version, module in produced:
            if inputs and inputs[0] is tensor and tensor._version == version:
                found.setdefault(module, activation)

    hooks = [m.register_forward_hook(on_output) for m in modules]
    hooks += [m.register_forward_pre_hook(on_activation) for m in model.modules() if isinstance(m, ACTIVATIONS)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(example_input.to(model_device(model)))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return found


def mean_independence(
    model: nn.Module,
    modules: set[nn.Module],
    activations: dict[nn.Module, nn.Module],
    batches: Batches,
    limit: int | None = None,
) -> dict[nn.Module, torch.Tensor]:
    """Mean over examples of the CI of each output channel of each module (post-activation maps).

    Computed on the model's device, where the batches are moved; returned on the CPU.
    """
    device = model_device(model)
    totals: dict[nn.Module, torch.Tensor] = {}
    examples = 0

    def on_forward(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        maps = output.detach()
        if module in activations:  # .forward: apply it without firing its hooks; clone for in-place ones
            maps = activations[module].forward(maps.clone())
        ci = channel_independence(maps).sum(0)
        totals[module] = totals[module] + ci if module in totals else ci

    hooks = [m.register_forward_hook(on_forward) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x, _ in itertools.islice(batches(), limit):
                model(x.to(device, non_blocking=True))
                examples += len(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration batches were given")
    return {m: t.cpu() / examples for m, t in totals.items()}


def channel_independence(maps: torch.Tensor) -> torch.Tensor:
    """CI of every channel of every example: (N, C, *positions) → (N, C), in float64."""
    a = maps.reshape(maps.shape[0], maps.shape[1], -1).to(torch.float64)
    chunk = max(1, PAIRS // a.shape[1])
    return torch.cat([_integrate(*_spectrum(a[s : s + chunk])) for s in range(0, len(a), chunk)])


def _spectrum(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Squared singular values d (N, r), row weights w = U² (N, C, r), ρ = 1 − Σ_k w (N, C), kept (N, r).

    Singular values under ``RANK_TOL`` of the largest count as zero: their weight goes to ρ, which
    is summed from those columns of U rather than computed as 1 − Σw (no cancellation).
    """
    c, p = a.shape[1:]
    if p > c:  # A = Rᵀ Qᵀ: the C×C factor Rᵀ has A's singular values and left vectors, and is cheaper
        a = torch.linalg.qr(a.mT, mode="r").R.mT
    u, s, _ = torch.linalg.svd(a, full_matrices=p < c)  # U is (C, C) either way
    kept = s > RANK_TOL * s[:, :1]
    weights = u.square()
    r = s.shape[1]
    w = weights[:, :, :r] * kept[:, None, :]
    rho = (weights[:, :, :r] * ~kept[:, None, :]).sum(-1) + weights[:, :, r:].sum(-1)
    return s.square(), w, rho, kept


def _integrate(d: torch.Tensor, w: torch.Tensor, rho: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """CI (N, C) by the trapezoid rule in u = log t (module docstring), g(u) = t^{3/2} N(t) / (ρ + t S(t))."""
    if not kept.any():  # every map is zero
        return torch.zeros(w.shape[:2], dtype=w.dtype, device=w.device)
    lo = math.log(d[kept].min().item()) - 2 * TAIL
    hi = math.log(d[kept].max().item()) + 2 * TAIL
    t = torch.arange(lo, hi + STEP, STEP, dtype=d.dtype, device=d.device).exp()
    inv = 1 / (d[:, :, None] + t)  # (N, r, Q)
    # N(t) = Σ_k d_k w_k/(d_k+t)², S(t) = Σ_k w_k/(d_k+t): matmuls over k, with the powers of t folded in.
    g = (w @ (d[:, :, None] * t.pow(1.5) * inv.square())).div_((w @ (t * inv)).add_(rho[:, :, None]))
    # Above the grid (t ≫ all d_k) g is K e^{-u/2} to a relative e^{-2·TAIL}: a geometric series.
    ratio = math.exp(-STEP / 2)
    above = g[..., -1] * (ratio / (1 - ratio))
    # Below it (t ≪ all kept d_k) g is t^{3/2} B / (ρ + t B), B = Σ_k w_k/d_k: summed without the
    # matmuls, down to where √t is e^{-FAR} of the smallest kept singular value.
    b = (w / torch.where(kept, d, 1.0)[:, None, :]).sum(-1, keepdim=True)
    t_low = torch.arange(lo - STEP, lo + 2 * TAIL - 2 * FAR, -STEP, dtype=d.dtype, device=d.device).exp()
    below = (t_low.pow(1.5) * b / (rho[:, :, None] + t_low * b)).sum(-1)
    return (g.sum(-1) + above + below) * (STEP / math.pi)
