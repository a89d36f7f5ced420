"""ITPruner's layer importance (Zheng et al., arXiv 2108.08532): nHSIC between layers' features.

nHSIC. With the linear kernel K = X Xᵀ and the (biased) centring H = I − 11ᵀ/n,
HSIC(X, Y) = tr(K_X H K_Y H)/(n−1)² and nHSIC(X, Y) = HSIC(X, Y)/√(HSIC(X, X)·HSIC(Y, Y)).
The released code computes exactly this as ``cka(gram_linear(X), gram_linear(Y))`` (linear
CKA); its RBF Gram with the median-distance bandwidth is present but unused, so it is not used
here either. Since H K H = (HX)(HX)ᵀ for the linear kernel, the centred Gram is the Gram of the
column-centred features, and the (n−1)² factors cancel in the ratio.

Layer importance (released ``feature_extract.py``). S_ij = nHSIC(X_i, X_j) over all pairs of
width variables, s_i = Σ_{j≠i} S_ij, s̃_i = s_i / Σ_k s_k and α_i = exp(−β·s̃_i): a layer that
is redundant with the rest gets a small reward for keeping width. Here the width variables are
the channel groups of the :class:`PruneGraph`.

Deviations, and why:

- Features of a group are the outputs of its feature points (batch-norm layers, or conv/linear
  layers without one: :func:`~autoprune.importance.taylor.feature_points`, as the Taylor
  criterion uses), restricted to the group's channels and concatenated per example. The
  released code takes post-ReLU block-internal maps and, for a stage width shared by a residual
  stage, the first block's output after the add. Norm outputs exist in every architecture the
  graph supports and carry exactly the group's channels; the activation and the add do not.
  Concatenating several coupled maps sums their Gram matrices.
- α is returned divided by its maximum, i.e. exp(−β(s̃_i − min s̃)). Both ITPruner's linear
  objective and the log-utility objective of ``solvers/qclp.py`` are unchanged by a common
  factor, and this keeps the weights away from underflow when β is in the thousands.
- The examples are the first ``max_examples`` of the calibration batches (the pipeline passes
  training batches; the released code uses one test batch of 100, which its README says makes
  the result seed-dependent). They are kept and re-forwarded once per chunk of feature points,
  so that at most ``max_feature_bytes`` of features are held at a time (exact, just slower).
  They are moved once to the model's device, where the features and Grams are computed.
- A group whose features do not vary over the examples has no defined nHSIC; it is counted as
  independent of every other group (S = 0).

β defaults to L, the number of groups, so that β·s̃_i = s_i / mean(s): a group's redundancy
relative to the average, whatever the number of groups, and a weight ratio of e between groups
whose redundancies differ by the mean. The released scripts use 231 to 2000 (246 for ResNet-20),
but their α never mattered much: with α = exp(−β s̃) ≈ 1e-3 … 1e-8, the released SLSQP stops
(objective tolerance 1e-6) a few iterations after projecting x = 1 onto the budget, so the
released CIFAR configurations are near-uniform (ResNet-20 at 20M: 11/16, 21–22/32, 43–48/64;
a simulation of the released solver with β = 246 gives the same). An exact solver follows α:
with β = 246 the weights spanned 450× on a CIFAR ResNet-20 after one epoch of training, and the optimum cut whole groups
to the floor (docs/methods.md#itpruner).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from autoprune.device import model_device
from autoprune.graph import PruneGraph
from autoprune.importance.base import Batches
from autoprune.importance.taylor import feature_points

Slices = dict[nn.Module, list[tuple[str, torch.Tensor]]]
"""Feature-point module → (group id, the module's output channels that belong to the group)."""


def centred_gram(x: torch.Tensor) -> torch.Tensor:
    """H K H for the linear kernel, as the Gram of the column-centred features (float64)."""
    x = x.reshape(len(x), -1)
    x = x - x.mean(0, keepdim=True)
    return (x @ x.T).to(torch.float64)


def similarity(grams: list[torch.Tensor]) -> np.ndarray:
    """nHSIC between every pair of centred Grams; rows of constant features are zero."""
    flat = torch.stack([g.flatten() for g in grams])
    norms = flat.norm(dim=1)
    live = norms > 0
    scale = torch.where(live, norms, torch.ones_like(norms))
    unit = torch.where(live[:, None], flat / scale[:, None], torch.zeros_like(flat))
    return (unit @ unit.T).clamp(0.0, 1.0).cpu().numpy()


def nhsic(x: torch.Tensor, y: torch.Tensor) -> float:
    """Normalised HSIC with the linear kernel (= linear CKA) of two feature sets over n examples.

    Rows are examples; trailing dims are flattened. Returns a value in [0, 1], 0 when either
    argument does not vary over the examples.
    """
    if len(x) != len(y) or len(x) < 2:
        raise ValueError(f"x and y need the same number (≥ 2) of examples, got {len(x)} and {len(y)}")
    return float(similarity([centred_gram(x), centred_gram(y)])[0, 1])


def importance_from_similarity(s: np.ndarray, beta: float) -> np.ndarray:
    """α_i = exp(−β s̃_i), s̃_i = Σ_{j≠i} S_ij / Σ_k Σ_{j≠k} S_kj, scaled so that max α = 1."""
    off = np.asarray(s, dtype=np.float64).sum(1) - np.diag(s)
    total = off.sum()
    if total <= 0:  # one group, or no measurable dependence at all: nothing to tell apart
        return np.ones(len(off))
    share = off / total
    return np.exp(-beta * (share - share.min()))


def layer_similarity(
    graph: PruneGraph,
    batches: Batches,
    *,
    max_examples: int = 256,
    max_feature_bytes: int = 2**29,
) -> tuple[list[str], np.ndarray]:
    """Group ids and the matrix S_ij = nHSIC(features of group i, features of group j)."""
    if max_examples < 2:
        raise ValueError(f"max_examples must be at least 2, got {max_examples}")
    if max_feature_bytes < 1:
        raise ValueError(f"max_feature_bytes must be positive, got {max_feature_bytes}")
    ids = [g.id for g in graph.groups]
    slices = _group_slices(graph)
    device = model_device(graph.model)
    inputs = [x.to(device, non_blocking=True) for x in _first_examples(batches, max_examples)]
    grams: dict[str, torch.Tensor] = {}
    for chunk in _chunks(graph.model, slices, inputs, max_feature_bytes):
        for gid, gram in _grams(graph.model, chunk, inputs).items():
            grams[gid] = grams[gid] + gram if gid in grams else gram
    return ids, similarity([grams[gid] for gid in ids])


def layer_importance(
    graph: PruneGraph,
    batches: Batches,
    *,
    beta: float | None = None,
    max_examples: int = 256,
    max_feature_bytes: int = 2**29,
) -> dict[str, float]:
    """ITPruner's per-group weight α (in (0, 1], max 1): higher = keep more of the group's width.

    ``beta`` None: the number of groups (see the module's docstring).
    """
    if beta is not None and (not math.isfinite(beta) or beta < 0):
        raise ValueError(f"beta must be finite and non-negative, got {beta}")
    ids, s = layer_similarity(graph, batches, max_examples=max_examples, max_feature_bytes=max_feature_bytes)
    weights = importance_from_similarity(s, float(len(ids)) if beta is None else beta)
    return dict(zip(ids, (float(a) for a in weights), strict=True))


def _group_slices(graph: PruneGraph) -> Slices:
    slices: Slices = defaultdict(list)
    for g in graph.groups:
        points = feature_points(graph, g.id)
        for module, dim, idxs, _ in graph.channel_map(g.id):
            if dim == "out" and module in points:
                slices[module].append((g.id, torch.tensor(idxs)))
    missing = {g.id for g in graph.groups} - {gid for parts in slices.values() for gid, _ in parts}
    if missing:
        raise ValueError(f"groups without a feature map to measure: {sorted(missing)}")
    return slices


def _first_examples(batches: Batches, n: int) -> list[torch.Tensor]:
    """The inputs of the first ``n`` calibration examples, as the batches they came in."""
    kept: list[torch.Tensor] = []
    count = 0
    for x, _ in batches():
        kept.append(x[: n - count])
        count += len(kept[-1])
        if count >= n:
            break
    if count < 2:
        raise ValueError(f"nHSIC needs at least 2 calibration examples, got {count}")
    return kept


def _forward(
    model: nn.Module,
    modules: Slices,
    inputs: list[torch.Tensor],
    on_output: Callable[[nn.Module, torch.Tensor], None],
) -> None:
    """Run the inputs through the model in eval mode with ``on_output(module, output)`` hooked."""
    hooks = [m.register_forward_hook(lambda m, _i, out: on_output(m, out)) for m in modules]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for x in inputs:
                model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)


def _chunks(model: nn.Module, slices: Slices, inputs: list[torch.Tensor], max_bytes: int) -> list[Slices]:
    """Split the feature points so that each chunk's features for all examples fit ``max_bytes``."""
    per_example: dict[nn.Module, int] = {}

    def measure(module: nn.Module, out: torch.Tensor) -> None:
        positions = out[0].numel() // out.shape[1]
        channels = sum(len(idx) for _, idx in slices[module])
        per_example[module] = channels * positions * out.element_size()

    _forward(model, slices, [inputs[0][:1]], measure)
    examples = sum(len(x) for x in inputs)
    chunks: list[Slices] = [{}]
    used = 0
    for module, parts in slices.items():
        size = per_example[module] * examples
        if chunks[-1] and used + size > max_bytes:
            chunks.append({})
            used = 0
        chunks[-1][module] = parts
        used += size
    return chunks


def _grams(model: nn.Module, chunk: Slices, inputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Σ over the chunk's feature points of each group of the centred Gram of its channels."""
    features: dict[tuple[nn.Module, str], list[torch.Tensor]] = defaultdict(list)

    def keep(module: nn.Module, out: torch.Tensor) -> None:
        for gid, idx in chunk[module]:  # index_select copies before any in-place activation
            features[(module, gid)].append(out.index_select(1, idx.to(out.device)).flatten(1))

    _forward(model, chunk, inputs, keep)
    examples = sum(len(x) for x in inputs)
    grams: dict[str, torch.Tensor] = {}
    for (module, gid), parts in features.items():
        if sum(len(p) for p in parts) != examples:
            raise ValueError(
                f"a feature point of group {gid} ({type(module).__name__}) runs more than once per forward"
            )
        gram = centred_gram(torch.cat(parts))
        grams[gid] = grams[gid] + gram if gid in grams else gram
    return grams
