"""Deployment speed of a cut: never slower than the unpruned model, and the faster of equal-budget cuts.

Fast kernels (onnxruntime's blocked convolutions, cuDNN's) want channel counts in multiples of 4,
8 or 16, and a free width can make a model with half the MACs slower than its parent. Which step
pays is measured here, on the model and the host, not assumed:

- **Never slower.** A cut that is not faster than the unpruned model in the deployment target
  (paired timing) is re-solved with wider channel steps: first the step this host's runtime was
  measured to want (``autoprune.measure.alignment``), then 8, 16 and 32, until one is faster
  (else the fastest tried is kept, and the report warns).
- **Latency-aware under MACs and params budgets.** The host's measured step and 8 are always
  tried, also once a cut is faster. All meet the same budget; a re-solve replaces a cut that is
  already faster only when it is faster by ``SPEED_MARGIN`` still and its top-1 on held-out
  training examples is not significantly below the first cut's (``not_worse``): the free widths
  are the finer allocation, so they are kept unless speed is really bought. (The host's step is
  measured on one convolution; the whole model can want another, as ResNet-56 here wanted 8
  where the convolution said 4: docs/methods.md#never-slower.)

A latency budget's allocation is latency-aware already (its table is measured in the target), so
only the never-slower check applies to it.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from autoprune.adaptive_bn import correct, split_training, training_part
from autoprune.budget import Budget
from autoprune.context import RunContext
from autoprune.data import ImageData
from autoprune.errors import BudgetError, SurgeryError
from autoprune.measure.alignment import channel_alignment
from autoprune.prune_step import Cut, Scored, paired_with_unpruned, prune_once, target_threads

RESOLVE_STEPS = (8, 16, 32)  # channel steps tried, in order, when a cut is not faster in the target
SPEED_MARGIN = 1.05  # an aligned cut replaces a cut that is already faster only when this much faster still
HELD_OUT = 512  # training examples the accuracy guard compares the two cuts on
ALLOWED_DROP = 0.005  # accuracy the guard lets go beyond two standard errors of the paired difference


def faster_cut(ctx: RunContext, target: Budget, cut: Cut, scored: Scored) -> Cut:
    """``cut``, or a re-solve of it with a wider channel step that runs faster in the target (module doc)."""
    speed = speedup(ctx, cut[0])
    tried: list[dict[str, Any]] = [{"channel_step": ctx.spec.channel_step, "speedup": round(speed, 4)}]
    measured = measured_step(ctx)
    steps = [s for s in dict.fromkeys((measured or RESOLVE_STEPS[0], *RESOLVE_STEPS)) if s > ctx.spec.channel_step]
    preferred = () if target.measured else tuple(dict.fromkeys((measured or RESOLVE_STEPS[0], RESOLVE_STEPS[0])))
    guard = _Guard(ctx, cut[0], tried[0])
    best, best_speed = cut, speed
    for i, step in enumerate(steps):
        if best_speed > 1.0 and step not in preferred:
            break  # faster already: wider steps only while it is not
        ctx.progress("faster", (i + 1) / (len(steps) + 1), {"channel_step": step})
        aligned = _resolve(ctx, target, scored, step, tried, cut[2].get("auto_chosen"))
        if aligned is None:
            continue
        new_speed = tried[-1]["speedup"]
        if best_speed <= 1.0:  # never slower comes first: any gain is taken
            if new_speed > best_speed:
                best, best_speed = aligned, new_speed
        elif new_speed >= best_speed * SPEED_MARGIN and guard.accepts(aligned[0], tried[-1]):
            best, best_speed = aligned, new_speed
    if best is not cut and "auto_candidates" in cut[2]:  # a re-solve asked auto's choice alone: keep the comparison
        best[2]["auto_candidates"] = cut[2]["auto_candidates"]
    best[2]["faster_check"] = {"runtime": ctx.spec.target.runtime, "measured_step": measured, "tried": tried}
    return best


class _Guard:
    """Top-1 on held-out training examples of the first cut, against which a faster re-solve is checked.

    The examples are the adaptive-BN evaluation's held-out part of the training split. (Every
    cut's BN statistics were re-estimated on calibration batches drawn from the whole split, which
    may include these images, never their labels.) Evaluated only when a re-solve needs it.
    """

    def __init__(self, ctx: RunContext, first: torch.nn.Module, row: dict[str, Any]) -> None:
        self.ctx, self.first, self.row = ctx, first, row
        self.data: ImageData | None = None
        self.before: torch.Tensor | None = None

    def accepts(self, model: torch.nn.Module, row: dict[str, Any]) -> bool:
        if self.data is None or self.before is None:
            assert self.ctx.data is not None
            size = len(self.ctx.data.train_y)
            held_idx, _ = split_training(size, min(HELD_OUT, max(1, size // 4)), self.ctx.spec.seed)
            self.data = training_part(self.ctx.data, held_idx)
            self.before = correct(self.first, self.data)
            self.row["held_out_accuracy"] = round(float(self.before.float().mean()), 4)
        after = correct(model, self.data)
        row["held_out_accuracy"] = round(float(after.float().mean()), 4)
        return not_worse(self.before, after)


def _resolve(ctx: RunContext, target: Budget, scored: Scored, step: int, tried: list, chosen: str | None) -> Cut | None:
    """The cut allocated again at ``step`` and its speedup appended to ``tried``; None if the step cannot meet the budget.

    Under ``auto`` only the candidate it chose for the first cut runs again: the candidates differ
    in where they cut, which a wider step does not change, and re-running all of them would
    multiply ``auto``'s cost by the number of re-solves."""
    try:
        candidate = prune_once(ctx, target, channel_step=step, scored=scored, candidate=chosen)
    except (BudgetError, SurgeryError) as exc:  # too coarse for this net's widths to meet the budget
        tried.append({"channel_step": step, "error": str(exc)})
        return None
    tried.append({"channel_step": step, "speedup": round(speedup(ctx, candidate[0]), 4)})
    return candidate


def not_worse(before: torch.Tensor, after: torch.Tensor) -> bool:
    """Whether ``after``'s per-example hits are not significantly below ``before``'s on the same examples.

    The standard error of a paired difference of accuracies comes from the examples the two
    disagree on (McNemar): ``sqrt(n01 + n10) / n``. Lower by more than two of those and
    ``ALLOWED_DROP`` counts as worse.
    """
    n = len(before)
    disagree = int((before != after).sum())
    drop = float(before.float().mean() - after.float().mean())
    return drop <= 2 * math.sqrt(disagree) / n + ALLOWED_DROP


def measured_step(ctx: RunContext) -> int | None:
    """The channel step this host's target runtime runs fastest at (``autoprune.measure.alignment``,
    measured once per host and cached); None for a cuda target."""
    target = ctx.spec.target
    if target.device != "cpu":
        return None
    with ctx.timer("faster_check"):
        return channel_alignment(target.runtime, batch_size=target.batch_size, threads=target_threads(ctx.spec)).step


def speedup(ctx: RunContext, pruned: torch.nn.Module) -> float:
    """How many times faster ``pruned`` runs than the unpruned model in the target (paired rounds)."""
    with ctx.timer("faster_check"):
        return paired_with_unpruned(ctx, pruned, rounds=6).speedup
