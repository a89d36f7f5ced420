"""One cut of the pipeline: score the channels, allocate the budget, cut, check the measured cost.

``prune_once`` is the step the prune stage repeats (once, or per iterative step); ``score_model``
and ``study_name`` are shared with the search helpers (``pipeline.help_search``).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune import catalog
from autoprune.adaptive_bn import batch_norms, recalibrate
from autoprune.allocate import LayerLimits, ProblemInputs, allocate
from autoprune.budget import Budget
from autoprune.checkpoint import fingerprint
from autoprune.compensate import compensated_cut
from autoprune.context import RunContext
from autoprune.data import ImageData, iterate_batches
from autoprune.device import on_device
from autoprune.errors import SurgeryError
from autoprune.export import export_onnx
from autoprune.graph import PruneGraph, build_graph
from autoprune.importance import Batches, GroupScores, get_criterion
from autoprune.measure import count_cost, onnx_latency_ms, torch_latency_ms
from autoprune.measure.latency_table import LatencyTable
from autoprune.measure.paired import PairedTiming, paired_model_timing
from autoprune.report.schema import BoundGroup, CandidateRow, LayerLimitsReport
from autoprune.spec import JobSpec, allocator_options
from autoprune.surgery import PruningPlan, apply_plan, make_plan
from solvers import Allocator, AllocatorContext

log = logging.getLogger(__name__)

ATTEMPTS = 4  # allocate-cut-measure rounds before a step gives up on its budget


def calibration(data: ImageData, batches: int, seed: int) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The same ``batches`` shuffled training batches each call (no augmentation)."""

    def batches_fn() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        return iterate_batches(data, "train", 64, shuffle=True, generator=generator, limit=batches)

    return batches_fn


def reestimate_bn(model: nn.Module, batches: Batches, device: torch.device) -> None:
    """Re-estimate ``model``'s BatchNorm statistics on ``batches`` (EagleEye's adaptive BN, §3b).

    A cut leaves each BN with the statistics of the unpruned layer below it, often off by orders
    of magnitude once that layer lost inputs, and a short fine-tune's momentum-0.1 average keeps
    part of them (docs/methods.md#adaptive-bn). So the pipeline re-estimates after each cut and
    after fine-tuning, as a cumulative average over the calibration batches ("precise BN").
    Weights are not touched.
    """
    if not batch_norms(model):  # e.g. an ONNX graph, whose BN onnx2torch folded away
        return
    with on_device(model, device):
        recalibrate(model, batches())


def model_latency_ms(model: nn.Module, input_shape: tuple[int, ...], budget: Budget, repeats: int) -> float:
    """Median latency of the whole model in the budget's runtime and batch size."""
    timing = dict(batch_size=budget.batch_size, repeats=repeats, threads=torch.get_num_threads())
    if budget.runtime == "torch":
        return torch_latency_ms(model, input_shape, **timing)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, torch.zeros(1, *input_shape))
        return onnx_latency_ms(path, input_shape, **timing)


def achieved(ctx: RunContext, model: nn.Module, budget: Budget, unpruned: float) -> float:
    """What ``budget`` measures on ``model``: a fraction of the original, or milliseconds.

    A relative latency budget is checked by timing ``model`` against the unpruned model in
    alternating rounds (``paired_with_unpruned``): that ratio, in milliseconds of ``unpruned`` (the
    figure the budget was priced from), so a neighbour's load between a lone "before" and a lone
    "after" cannot meet it by chance. An absolute ``latency_ms`` is what the user asked for, so it
    is the model's own median.
    """
    spec = ctx.spec
    if budget.measured and spec.budget.rule.relative:
        return paired_with_unpruned(ctx, model, max(2, spec.latency_repeats // 3)).ratio * unpruned
    if budget.measured:
        return model_latency_ms(model, tuple(ctx.example.shape[1:]), budget, spec.latency_repeats)
    measured = count_cost(model, ctx.example)
    return float(getattr(measured, budget.rule.counted)) / ctx.state.reference[budget.kind]


SCRATCH = ".scratch"  # inside the job's output directory, removed when the timing stage is done


def target_threads(spec: JobSpec) -> int:
    """The threads the target runs with: its own setting, else the job's."""
    return spec.target.threads or torch.get_num_threads()


def teacher_onnx(ctx: RunContext) -> Path:
    """The unpruned model exported once per run, for every paired timing in onnxruntime."""
    assert ctx.teacher is not None
    path = ctx.out / SCRATCH / "unpruned.onnx"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(ctx.teacher, path, ctx.example)
    return path


def paired_with_unpruned(ctx: RunContext, pruned: nn.Module, rounds: int) -> PairedTiming:
    """``pruned`` timed against the unpruned model in the job's deployment target, in alternating rounds."""
    assert ctx.data is not None and ctx.teacher is not None
    target = ctx.spec.target
    unpruned_onnx = teacher_onnx(ctx) if target.runtime == "onnxruntime" else None
    return paired_model_timing(
        ctx.teacher, pruned, ctx.data.input_shape, runtime=target.runtime, batch_size=target.batch_size,
        threads=target_threads(ctx.spec), rounds=rounds, repeats=3, onnx_paths=(unpruned_onnx, None),
    )  # fmt: skip


def allocator_for(
    spec: JobSpec, budget: Budget, channel_step: int | None = None, candidate: str | None = None
) -> Allocator:
    """The spec's allocator, configured with its options and the job's context (``candidate``: see
    ``AllocatorContext``)."""
    context = AllocatorContext(
        channel_step=channel_step or spec.channel_step, latency_runtime=budget.runtime if budget.measured else None,
        candidate=candidate,
    )  # fmt: skip
    return catalog.allocator(spec.method).configure(allocator_options(spec), context)


@dataclass
class Scored:
    """A model's channel scores and the allocation inputs built from them."""

    graph: PruneGraph
    scores: GroupScores
    factors: Any  # curvature factors kept for NAP's OBS compensation, else None
    batches: Batches
    inputs: ProblemInputs


def score_model(ctx: RunContext) -> Scored:
    """Score ``ctx.model``'s channels with the spec's criterion on ``ctx.device``; deterministic given the spec."""
    spec, model, data = ctx.spec, ctx.model, ctx.data
    assert data is not None
    batches = calibration(data, spec.calibration_batches, spec.seed)
    with ctx.timer("importance"):
        ctx.progress("importance", 0.0, {"criterion": spec.criterion_name})
        graph = build_graph(model, ctx.example)
        criterion = get_criterion(spec.criterion_name)
        factors = None
        with on_device(model, ctx.device):
            if spec.obs_compensation and criterion.provides_curvature:
                scores, factors = criterion.score_with_curvature(graph, batches)  # factors: for the cut's compensation
            else:
                scores = criterion.score(graph, batches if criterion.needs_data else None)
        ctx.progress("importance", 1.0, {"groups": len(graph.groups), "skipped": list(graph.skipped)})
    inputs = ProblemInputs.measure(
        model, graph, scores, ctx.example, reference=ctx.state.reference, data=data, batches=batches,
        calibration_batches=spec.calibration_batches, seed=spec.seed,
        storage=ctx.search.url if ctx.search is not None else None,
        limits=LayerLimits(max_prune=spec.max_layer_prune, keep=spec.keep, per_group=spec.layer_limits),
        original=original_widths(ctx.state.plans),
    )  # fmt: skip
    return Scored(graph=graph, scores=scores, factors=factors, batches=batches, inputs=inputs)


def original_widths(plans: list[dict[str, Any]]) -> dict[str, int]:
    """Each group's width before the first cut that pruned it (its unpruned width), from the stored plans."""
    widths: dict[str, int] = {}
    for plan in plans:
        for gid, group in plan["groups"].items():
            widths.setdefault(gid, int(group["channels"]))
    return widths


def limits_report(spec: JobSpec, diagnostics: list[dict[str, Any]]) -> LayerLimitsReport | None:
    """The report's record of the job's per-group limits and the groups the last cut held at one."""
    if spec.max_layer_prune is None and not spec.keep and not spec.layer_limits:
        return None
    bound = [BoundGroup(**row) for row in (diagnostics[-1].get("bound", []) if diagnostics else [])]
    return LayerLimitsReport(
        max_layer_prune=spec.max_layer_prune, keep=list(spec.keep), layer_limits=dict(spec.layer_limits), bound=bound
    )


def candidate_rows(diagnostics: list[dict[str, Any]]) -> list[CandidateRow]:
    """``auto``'s candidates at the last cut (none for a named method)."""
    return [CandidateRow(**row) for row in (diagnostics[-1].get("auto_candidates", []) if diagnostics else [])]


def study_name(ctx: RunContext, target: Budget) -> str:
    """A stored search resumes (or is joined) only for the same spec, key and target."""
    key = f"-{ctx.search.key}" if ctx.search is not None and ctx.search.key else ""
    return f"autoprune-{fingerprint(ctx.spec)[:24]}{key}-{target.kind}-{target.value:.9g}"


Cut = tuple[nn.Module, PruningPlan, dict[str, Any]]  # the pruned model, its plan, the step's diagnostics


def prune_once(
    ctx: RunContext,
    budget: Budget,
    channel_step: int | None = None,
    scored: Scored | None = None,
    candidate: str | None = None,
) -> Cut:
    """Score, allocate and cut ``ctx.model`` once; the result meets ``budget`` on the measured model.

    Kept widths are multiples of ``channel_step`` (default: the spec's). ``scored``: the model's
    scores from an earlier call (a re-solve at another step), else they are computed.
    ``candidate``: for ``auto``, the allocator an earlier call chose, asked alone.

    Scoring, the search's evaluations and NAP's compensation run on ``ctx.device``; tracing, cost
    counting, latency tables and the cut itself on the CPU, where the model is kept.
    """
    scored = scored or score_model(ctx)
    inputs, reference = scored.inputs, ctx.state.reference
    step = channel_step or ctx.spec.channel_step

    def on_trial(fraction: float) -> None:  # a long search reports after each trial: a cancel stops it there
        ctx.check_cancel()
        ctx.progress("allocation", fraction, {})

    inputs.report = on_trial
    if budget.measured:
        inputs.latency = _latency_table(ctx, scored.graph, budget).latency
    cost, _ = inputs.cost_and_budget(budget)
    scale = 1.0 if budget.measured else reference[budget.kind]  # allocation costs -> budget units
    unpruned = cost({}) / scale  # predicted = measured here: exact counts, or the table's calibration point
    if budget.measured and ctx.spec.budget.rule.relative:
        # priced from a ratio: the budget's fraction of the unpruned latency that the latency table
        # measured with its layers, not of a lone timing taken at another moment (and load)
        budget = budget.evolve(value=budget.value / reference["latency_ms"] * unpruned)
    target = budget
    for attempt in range(ATTEMPTS):
        with ctx.timer("allocation"):
            ctx.progress("allocation", 0.0, {"method": ctx.spec.method, "attempt": attempt + 1})
            inputs.study_name = study_name(ctx, target)
            with on_device(ctx.model, ctx.device):
                allocation = allocate(
                    allocator_for(ctx.spec, budget, step, candidate), inputs, target, channel_step=step
                )
            plan = make_plan(scored.graph, scored.scores, allocation.keep)
            ctx.progress("allocation", 1.0, {"predicted": allocation.cost})
        with ctx.timer("surgery"):
            pruned = _cut(ctx, scored, plan)
            reached = achieved(ctx, pruned, budget, unpruned)
            ctx.progress("surgery", 1.0, {budget.kind: reached})
        if reached <= budget.value * (1 + 1e-12):
            diagnostics = {
                "criterion": ctx.spec.criterion_name,
                "skipped_layers": list(scored.graph.skipped),
                "target": target.value,
                "budget": budget.value,  # in the units of "achieved": a relative latency priced in the table's ms
                "unpruned": unpruned,
                "predicted": allocation.cost,
                "achieved": reached,
                "attempts": attempt + 1,
                "obs_compensation": scored.factors is not None,
                "channel_step": step,
                **dict(allocation.diagnostics),
            }
            return pruned, plan, diagnostics
        log.warning("pruned model reaches %.4g > %.4g %s; tightening", reached, budget.value, budget.kind)
        value = next_target(budget.value, target.value, unpruned, allocation.cost / scale, reached)
        target = target.evolve(value=value)
    raise SurgeryError(f"could not meet {budget} after {ATTEMPTS} attempts (last: {reached:.4g})")


def _latency_table(ctx: RunContext, graph: PruneGraph, budget: Budget) -> LatencyTable:
    with ctx.timer("latency_table"):
        ctx.progress("latency_table", 0.0, {"runtime": budget.runtime})
        # onnxruntime's fast conv kernels want channel counts in multiples of 8 (HALP's grouping)
        step = 8 if budget.runtime == "onnxruntime" else 1
        table = LatencyTable.build(
            ctx.model, graph, ctx.example, runtime=budget.runtime, batch_size=budget.batch_size, channel_step=step
        )
        ctx.progress("latency_table", 1.0, {"layers": len(table.layers)})
    return table


def _cut(ctx: RunContext, scored: Scored, plan: PruningPlan) -> nn.Module:
    """The pruned copy of ``ctx.model`` (OBS-compensated when the criterion gave curvature), BN re-estimated."""
    if scored.factors is not None:
        with on_device(ctx.model, ctx.device):
            pruned = compensated_cut(ctx.model, scored.graph, scored.factors, plan, ctx.example).cpu()
    else:
        pruned = apply_plan(ctx.model, ctx.example, plan)
    reestimate_bn(pruned, scored.batches, ctx.device)
    return pruned


def next_target(goal: float, target: float, unpruned: float, predicted: float, reached: float) -> float:
    """The allocation target for the next attempt, after ``target`` gave a model predicted to cost
    ``predicted`` that measured ``reached`` > ``goal`` (all in the budget's units).

    Secant through the unpruned model (where prediction and measurement agree) and this attempt:
    a latency table's error grows with the cut, so scaling the target by ``goal / reached`` alone
    under-corrects, and one noisy timing can stall it. Aims 1% under ``goal``; each step tightens,
    by at most half the target.
    """
    aim = goal * 0.99
    if unpruned > predicted and unpruned > reached:
        value = predicted + (aim - reached) * (unpruned - predicted) / (unpruned - reached)
    else:  # no slope to go by: proportional
        value = target * aim / reached
    return min(max(value, target / 2), target * 0.99)
