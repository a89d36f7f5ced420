"""K-FAC curvature and OBS channel saliency: the criterion of NAP (Zeng, Xiong & Urtasun, 2021).

docs/methods.md#kfac. For every conv/linear layer the Fisher block is approximated by a Kronecker
product F ≈ A ⊗ G (K-FAC / KFC):

- ``A = E_x[1/T Σ_t a_t a_tᵀ]``: the layer's input patches (``unfold`` with the conv's kernel,
  stride, padding, dilation and padding mode; a trailing 1 when the layer has a bias), averaged
  over examples × positions;
- ``G = E_x[Σ_t g_t g_tᵀ]``: gradients of the loss w.r.t. the layer's pre-activation outputs,
  summed over positions, averaged over examples. The loss is summed over the batch, so each
  example's gradient is its own (the "multiply by the batch size" of EigenDamage's batch-averaged
  hooks is not needed);
- the "true" Fisher by default: labels sampled from the model's own softmax (a seeded generator,
  so scores are reproducible), or the empirical Fisher with the data labels.

Grouped convolutions (depthwise included) are block-diagonal: each of the ``groups`` blocks gets
its own (A, G) pair over its own input patches and output channels, and every formula below is
applied per block. Factors are kept in float64 and damped relative to their scale,
``F + damping · mean(diag F) · I`` per block (a floor keeps an all-zero factor invertible; its
saliencies are then ≈ 0, as they should be).

The saliency of a channel c (docs/methods.md#kfac) is the second-order loss increase of
removing it with the optimal OBS update of the remaining weights:

- every member layer whose *output* row i is removed adds ``w_iᵀ A w_i / (2 [G⁻¹]_ii)``;
- every member layer whose *input* columns S (the k_h·k_w columns of each input index, or several
  input features of a linear layer after a flatten) are removed adds
  ``½ tr(W_{:,S}ᵀ G W_{:,S} ([A⁻¹]_SS)⁻¹)``, the joint cost of those columns.

K-FAC is block-diagonal across layers, so the members' costs add (coupled residual groups sum
over all their layers). Batch norms carry no curvature here; they only sit between the layers
(the OBS model ignores their renormalisation). A depthwise conv is listed by the
dependency graph as an output member only, so its filter is counted once, with the row formula
(its block has one row: the cost of removing the whole filter).

:func:`obs_compensation` applies the matching OBS weight update for the exact *joint* removal of
the rows and columns a pruning plan deletes from each layer (closed form under A ⊗ G; for rows
only it is EigenDamage's kron-OBS update). It must run on the model before surgery; batch-norm
statistics should be re-estimated afterwards.

Memory: A has (C_in·k_h·k_w/groups + 1)² entries per block (≈ 170 MB in float64 for a
ResNet-50 layer-4 3×3 conv). Conv1d/Conv3d and transposed convs are not supported (no unfold).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from autoprune.device import model_device
from autoprune.errors import UnsupportedLayerError
from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches, Criterion, GroupScores, scatter_to_channels

LAYERS = (nn.Conv2d, nn.Linear)
UNSUPPORTED = (nn.Conv1d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
FISHER_TYPES = ("true", "empirical")
FLOOR = float(np.sqrt(np.finfo(np.float64).tiny))  # keeps a zero factor invertible without overflow


@dataclass(frozen=True)
class KronFactors:
    """A layer's Kronecker factors, one pair per convolution group: A (b, d_in, d_in), G (b, d_out, d_out)."""

    A: torch.Tensor
    G: torch.Tensor

    @cached_property
    def A_inv(self) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(self.A))

    @cached_property
    def G_inv(self) -> torch.Tensor:
        return torch.cholesky_inverse(torch.linalg.cholesky(self.G))


def damp(factor: torch.Tensor, damping: float) -> torch.Tensor:
    """``factor + damping · mean(diag) · I`` for each block of a (b, d, d) stack."""
    scale = (damping * factor.diagonal(dim1=-2, dim2=-1).mean(-1)).clamp_min(FLOOR)
    return factor + scale[:, None, None] * torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)


def blocks_of(module: nn.Module) -> int:
    return module.groups if isinstance(module, nn.Conv2d) else 1


def kernel_area(module: nn.Module) -> int:
    return module.kernel_size[0] * module.kernel_size[1] if isinstance(module, nn.Conv2d) else 1


def layer_inputs(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Input vectors a of each block, one row per example × position: (blocks, rows, d_in [+1])."""
    if isinstance(module, nn.Conv2d):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)  # what Conv2d pads, "same" too
        patches = F.unfold(x, module.kernel_size, dilation=module.dilation, stride=module.stride)  # (N, C·k², T)
        n, _, t = patches.shape
        a = patches.view(n, module.groups, -1, t).permute(1, 0, 3, 2).reshape(module.groups, n * t, -1)
    else:
        a = x.reshape(1, -1, x.shape[-1])
    if module.bias is not None:
        a = torch.cat([a, a.new_ones(*a.shape[:2], 1)], dim=2)
    return a


def layer_grads(module: nn.Module, grad: torch.Tensor) -> torch.Tensor:
    """Pre-activation gradients g of each block, one row per example × position: (blocks, rows, d_out)."""
    if isinstance(module, nn.Conv2d):
        n, c = grad.shape[:2]
        return (
            grad.reshape(n, module.groups, c // module.groups, -1)
            .permute(1, 0, 3, 2)
            .reshape(module.groups, -1, c // module.groups)
        )
    return grad.reshape(1, -1, grad.shape[-1])


def weight_blocks(module: nn.Module) -> torch.Tensor:
    """The weight as (blocks, rows, columns) matrices in the layout of :func:`layer_inputs`, bias last."""
    w = module.weight.detach().to(torch.float64).flatten(1)
    if module.bias is not None:
        w = torch.cat([w, module.bias.detach().to(torch.float64)[:, None]], dim=1)
    return w.reshape(blocks_of(module), w.shape[0] // blocks_of(module), -1)


def sample_labels(logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution (true Fisher), on the CPU generator."""
    probs = torch.softmax(logits.detach().to(torch.float64), dim=1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


class _Sums:
    """Running sums of a aᵀ and g gᵀ per layer (float64), and the rows behind the a-sums."""

    def __init__(self) -> None:
        self.aa: dict[nn.Module, torch.Tensor] = {}
        self.gg: dict[nn.Module, torch.Tensor] = {}
        self.rows: dict[nn.Module, int] = defaultdict(int)

    def on_forward(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        with torch.no_grad():
            a = layer_inputs(module, inputs[0].detach())
            self._add(self.aa, module, a)
            self.rows[module] += a.shape[1]
        if output.requires_grad:
            # Registered before any in-place op on the output, so it sees ∂loss/∂(pre-activation).
            output.register_hook(lambda grad: self._add(self.gg, module, layer_grads(module, grad.detach())))

    @staticmethod
    def _add(sums: dict[nn.Module, torch.Tensor], module: nn.Module, rows: torch.Tensor) -> None:
        outer = (rows.transpose(1, 2) @ rows).to(torch.float64)
        sums[module] = sums[module] + outer if module in sums else outer


@contextmanager
def kfac_hooks(layers: Iterable[nn.Module]) -> Iterator[_Sums]:
    """Forward hooks that accumulate K-FAC sums on ``layers``; always removed on exit."""
    sums = _Sums()
    handles = [m.register_forward_hook(sums.on_forward) for m in layers]
    try:
        yield sums
    finally:
        for h in handles:
            h.remove()


def kfac_factors(
    model: nn.Module,
    layers: Iterable[nn.Module],
    batches: Batches,
    *,
    damping: float = 0.0,
    fisher: str = "true",
    seed: int = 0,
) -> dict[nn.Module, KronFactors]:
    """K-FAC factors (A, G) of each layer over the calibration batches, in eval mode, float64.

    ``damping`` = 0 returns the raw expectations; > 0 adds ``damping · mean(diag)`` per block.
    The factors are accumulated on the model's device (batches are moved there) and stay there;
    true-Fisher labels are sampled on the CPU, so they do not depend on the device.
    """
    if not damping >= 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if fisher not in FISHER_TYPES:
        raise ValueError(f"fisher must be one of {FISHER_TYPES}, got {fisher!r}")
    layers = list(layers)
    device = model_device(model)
    generator = torch.Generator().manual_seed(seed)
    examples = 0
    was_training = model.training
    model.eval()
    try:
        with kfac_hooks(layers) as sums:
            for x, y in batches():
                x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
                model.zero_grad(set_to_none=True)
                logits = model(x)
                target = sample_labels(logits, generator) if fisher == "true" else y
                F.cross_entropy(logits, target, reduction="sum").backward()
                examples += len(x)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if examples == 0:
        raise ValueError("no calibration batches were given")
    factors = {}
    for m in layers:
        if m not in sums.gg:
            raise ValueError(f"layer {m} did not take part in the forward/backward pass")
        A, G = sums.aa[m] / sums.rows[m], sums.gg[m] / examples
        factors[m] = KronFactors(damp(A, damping), damp(G, damping)) if damping > 0 else KronFactors(A, G)
    return factors


def out_saliency(module: nn.Module, factors: KronFactors) -> torch.Tensor:
    """OBS loss increase of removing each output row i alone: w_iᵀ A w_i / (2 [G⁻¹]_ii), (C_out,)."""
    W = weight_blocks(module)
    quad = torch.einsum("bod,bde,boe->bo", W, factors.A, W)
    return (quad / (2 * factors.G_inv.diagonal(dim1=-2, dim2=-1))).reshape(-1)


def input_columns(module: nn.Module, inputs: Iterable[int]) -> dict[int, list[int]]:
    """Block → columns of :func:`weight_blocks` that carry the given input channels/features."""
    area = kernel_area(module)
    per_block = module.weight.shape[1]  # input channels of one block (all inputs of a linear layer)
    columns: dict[int, list[int]] = defaultdict(list)
    for i in inputs:
        start = (i % per_block) * area
        columns[i // per_block].extend(range(start, start + area))
    return columns


def in_saliency(module: nn.Module, factors: KronFactors, inputs: Sequence[int]) -> float:
    """OBS loss increase of removing the input channels ``inputs`` together: ½ tr(W_Sᵀ G W_S ([A⁻¹]_SS)⁻¹)."""
    W = weight_blocks(module)
    total = 0.0
    for b, cols in input_columns(module, inputs).items():
        ws = W[b][:, cols]
        a_inv = factors.A_inv[b][cols][:, cols]
        total += 0.5 * float(torch.linalg.solve(a_inv, ws.T @ factors.G[b] @ ws).trace())
    return total


def kfac_layers(graph: PruneGraph) -> list[nn.Module]:
    """The conv/linear layers whose rows or columns any group removes."""
    layers: dict[nn.Module, None] = {}
    for g in graph.groups:
        for module, *_ in graph.channel_map(g.id):
            if isinstance(module, UNSUPPORTED):
                raise UnsupportedLayerError(f"the kfac criterion supports Conv2d and Linear layers, not {module}")
            if isinstance(module, LAYERS):
                layers[module] = None
    return list(layers)


def saliencies(graph: PruneGraph, factors: Mapping[nn.Module, KronFactors]) -> GroupScores:
    """Per group channel: the out-row costs plus the joint in-column costs of all member layers."""
    scores: GroupScores = {}
    for g in graph.groups:
        total = scatter_to_channels(
            graph, g.id, lambda m, dim: out_saliency(m, factors[m]) if dim == "out" and m in factors else None
        )
        for module, dim, idxs, roots in graph.channel_map(g.id):
            if dim != "in" or module not in factors:
                continue
            by_channel: dict[int, list[int]] = defaultdict(list)
            for i, r in zip(idxs, roots, strict=True):
                by_channel[r].append(i)
            for c, inputs in by_channel.items():
                total[c] += in_saliency(module, factors[module], inputs)
        scores[g.id] = total
    return scores


def obs_compensation(
    graph: PruneGraph, factors: Mapping[nn.Module, KronFactors], keep: Mapping[str, Sequence[int]]
) -> None:
    """Update the weights that remain, in place, to the OBS optimum for removing what ``keep`` drops.

    ``keep`` maps group id → the group channels kept (groups not named keep everything). In each
    layer (and block) the removed rows R and columns S are fixed to zero and the free weights P×Q
    minimise ½ tr(δWᵀ G δW A): with D₀ = −W on the removed entries,
    δW_PQ = −G_PP⁻¹ [G D₀ A]_PQ A_QQ⁻¹. The removed entries are left at zero.
    """
    rows: dict[nn.Module, set[int]] = defaultdict(set)
    inputs: dict[nn.Module, set[int]] = defaultdict(set)
    for gid, kept in keep.items():
        removed = set(graph.group(gid).removed_indices(kept))
        for module, dim, idxs, roots in graph.channel_map(gid):
            if module in factors:
                hit = {i for i, r in zip(idxs, roots, strict=True) if r in removed}
                (rows if dim == "out" else inputs)[module] |= hit
    for module in rows.keys() | inputs.keys():
        _compensate(module, factors[module], rows[module], inputs[module])


def _compensate(module: nn.Module, factors: KronFactors, rows: set[int], inputs: set[int]) -> None:
    """The joint OBS update of one layer for its removed output ``rows`` and input channels ``inputs``.

    Computed where the layer's weights are, whatever device the factors were accumulated on.
    """
    W = weight_blocks(module)
    factor_a, factor_g = factors.A.to(W.device), factors.G.to(W.device)
    b, o, d = W.shape
    removed = torch.zeros(b, o, d, dtype=torch.bool, device=W.device)
    for r in rows:
        removed[r // o, r % o, :] = True
    for blk, cols in input_columns(module, inputs).items():
        removed[blk, :, cols] = True
    new = torch.where(removed, torch.zeros_like(W), W)
    for blk in range(b):
        P = (~removed[blk]).any(1).nonzero().flatten()
        Q = (~removed[blk]).any(0).nonzero().flatten()
        if len(P) == 0 or len(Q) == 0:
            continue
        A, G = factor_a[blk], factor_g[blk]
        rhs = (G @ (new[blk] - W[blk]) @ A)[P][:, Q]
        step = torch.linalg.solve(G[P][:, P], rhs)
        new[blk][P[:, None], Q] -= torch.linalg.solve(A[Q][:, Q], step.T).T
    _write_weights(module, new.reshape(b * o, d))


def _write_weights(module: nn.Module, matrix: torch.Tensor) -> None:
    with torch.no_grad():
        if module.bias is not None:
            module.bias.copy_(matrix[:, -1])
            matrix = matrix[:, :-1]
        module.weight.copy_(matrix.reshape(module.weight.shape))


class KFAC(Criterion):
    """NAP's channel saliency: the K-FAC/OBS loss increase of removing each channel (docs/methods.md#kfac).

    ``damping`` is relative to each factor's mean diagonal; ``fisher`` is "true" (sampled labels,
    the default, as EigenDamage) or "empirical"; ``seed`` fixes the label sampling.
    """

    needs_data = True
    provides_curvature = True

    def __init__(self, damping: float = 1e-3, fisher: str = "true", seed: int = 0) -> None:
        if not (isinstance(damping, int | float) and 0 < damping < float("inf")):
            raise ValueError(f"damping must be a positive number, got {damping!r}")
        if fisher not in FISHER_TYPES:
            raise ValueError(f"fisher must be one of {FISHER_TYPES}, got {fisher!r}")
        self.damping = float(damping)
        self.fisher = fisher
        self.seed = seed

    def factors(self, graph: PruneGraph, batches: Batches) -> dict[nn.Module, KronFactors]:
        """Damped K-FAC factors of every layer the groups touch (for scoring and compensation)."""
        return kfac_factors(
            graph.model, kfac_layers(graph), batches, damping=self.damping, fisher=self.fisher, seed=self.seed
        )

    def score(self, graph: PruneGraph, batches: Batches | None = None) -> GroupScores:
        if batches is None:
            raise ValueError("the kfac criterion needs calibration batches")
        return saliencies(graph, self.factors(graph, batches))

    def score_with_curvature(self, graph: PruneGraph, batches: Batches) -> tuple[GroupScores, Any]:
        factors = self.factors(graph, batches)
        return saliencies(graph, factors), factors
