"""One cut of the pipeline: score the channels, allocate the budget, cut, check the measured cost.

``prune_once`` is the step ``autoprune.pipeline.run`` repeats (once, or per iterative step);
``score_model`` and ``study_name`` are shared with the search helpers (``pipeline.help_search``).
"""

from __future__ import annotations

import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.adaptive_bn import batch_norms, recalibrate
from autoprune.allocate import ProblemInputs, allocate
from autoprune.checkpoint import fingerprint
from autoprune.compensate import compensated_cut
from autoprune.data import ImageData, iterate_batches
from autoprune.device import on_device
from autoprune.errors import CancelledError, SurgeryError
from autoprune.export import export_onnx
from autoprune.graph import PruneGraph, build_graph
from autoprune.importance import Batches, GroupScores, get_criterion
from autoprune.importance.kfac import KFAC, saliencies
from autoprune.measure import count_cost, onnx_latency_ms, torch_latency_ms
from autoprune.measure.latency_table import LatencyTable
from autoprune.surgery import PruningPlan, apply_plan, make_plan
from autoprune.types import Budget, JobSpec
from solvers import Allocator
from solvers.evolution import Evolution
from solvers.knapsack import HALP

log = logging.getLogger(__name__)

Progress = Callable[[str, float, dict[str, Any]], None]

ATTEMPTS = 4  # allocate-cut-measure rounds before a step gives up on its budget
DEFAULT_CRITERION = {"uniform": "l1", "global": "taylor", "nap": "kfac", "itpruner": "l1", "evolution": "l1", "halp": "taylor"}


def no_progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
    return None


class Timer:
    """Wall seconds per stage, summed over iterative steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def calibration(data: ImageData, batches: int, seed: int) -> Callable[[], Iterator[tuple[torch.Tensor, torch.Tensor]]]:
    """The same ``batches`` shuffled training batches each call (no augmentation)."""

    def batches_fn() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = torch.Generator().manual_seed(seed)
        return iterate_batches(data, "train", 64, shuffle=True, generator=generator, limit=batches)

    return batches_fn


def reestimate_bn(model: nn.Module, batches: Batches, device: torch.device) -> None:
    """Re-estimate ``model``'s BatchNorm statistics on ``batches`` (EagleEye's adaptive BN, §3b).

    A cut leaves each BN with the statistics of the unpruned layer below it, often off by orders
    of magnitude once that layer lost inputs; a short fine-tune's momentum-0.1 average keeps part
    of them (on digits, 23 steps left 9%: 15% top-1, 72% after re-estimation with the same
    weights). So the pipeline re-estimates after each cut and after fine-tuning, as a cumulative
    average over the calibration batches ("precise BN"). Weights are not touched.
    """
    if not batch_norms(model):  # e.g. an ONNX graph, whose BN onnx2torch folded away
        return
    with on_device(model, device):
        recalibrate(model, batches())


def criterion_of(spec: JobSpec) -> str:
    return spec.criterion or DEFAULT_CRITERION.get(spec.method, "l1")




def model_latency_ms(model: nn.Module, input_shape: tuple[int, ...], budget: Budget, repeats: int) -> float:
    """Median latency of the whole model in the budget's runtime and batch size."""
    timing = dict(batch_size=budget.batch_size, repeats=repeats, threads=torch.get_num_threads())
    if budget.runtime == "torch":
        return torch_latency_ms(model, input_shape, **timing)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, path, torch.zeros(1, *input_shape))
        return onnx_latency_ms(path, input_shape, **timing)


def achieved(model: nn.Module, example: torch.Tensor, budget: Budget, reference: dict[str, float], repeats: int) -> float:
    """What the budget measures on ``model``: a fraction of the original, or milliseconds."""
    if budget.kind == "latency_ms":
        return model_latency_ms(model, tuple(example.shape[1:]), budget, repeats)
    measured = count_cost(model, example)
    return (measured.macs if budget.kind == "flops" else measured.params) / reference[budget.kind]


def allocator_for(spec: JobSpec, budget: Budget) -> str | Allocator:
    """The spec's allocator with its options. HALP takes the channel step into its knapsack (the
    others are snapped afterwards); on onnxruntime latency it keeps multiples of 8, as the LUT is built."""
    if spec.method == "halp" and budget.kind == "latency_ms" and budget.runtime == "onnxruntime":
        return HALP(channel_step=math.lcm(spec.channel_step, 8))
    if spec.method == "halp" and spec.channel_step > 1:
        return HALP(channel_step=spec.channel_step)
    if spec.method == "evolution" and spec.search_trials is not None:
        return Evolution(trials=spec.search_trials)
    return spec.method


@dataclass
class Scored:
    """A model's channel scores and the allocation inputs built from them."""

    graph: PruneGraph
    scores: GroupScores
    factors: Any  # K-FAC factors kept for NAP's OBS compensation, else None
    batches: Batches
    inputs: ProblemInputs


def score_model(
    model: nn.Module,
    data: ImageData,
    spec: JobSpec,
    reference: dict[str, float],
    timer: Timer,
    progress: Progress,
    device: torch.device,
) -> Scored:
    """Score ``model``'s channels with the spec's criterion on ``device``; deterministic given the spec."""
    example = torch.zeros(1, *data.input_shape)
    criterion_name = criterion_of(spec)
    batches = calibration(data, spec.calibration_batches, spec.seed)
    with timer("importance"):
        progress("importance", 0.0, {"criterion": criterion_name})
        graph = build_graph(model, example)
        criterion = get_criterion(criterion_name)
        factors = None
        with on_device(model, device):
            if spec.obs_compensation and isinstance(criterion, KFAC):
                factors = criterion.factors(graph, batches)  # kept for the compensation below
                scores = saliencies(graph, factors)
            else:
                scores = criterion.score(graph, batches if criterion.needs_data else None)
        progress("importance", 1.0, {"groups": len(graph.groups), "skipped": list(graph.skipped)})
    inputs = ProblemInputs.measure(
        model, graph, scores, example, reference=reference, data=data, batches=batches,
        calibration_batches=spec.calibration_batches, seed=spec.seed, storage=spec.search_storage,
    )  # fmt: skip
    return Scored(graph=graph, scores=scores, factors=factors, batches=batches, inputs=inputs)


def study_name(spec: JobSpec, target: Budget) -> str:
    """A stored search resumes (or is joined) only for the same spec, key and target."""
    key = f"-{spec.search_key}" if spec.search_key else ""
    return f"autoprune-{fingerprint(spec)[:24]}{key}-{target.kind}-{target.value:.9g}"


def prune_once(
    model: nn.Module,
    data: ImageData,
    spec: JobSpec,
    budget: Budget,
    reference: dict[str, float],
    timer: Timer,
    progress: Progress,
    device: torch.device,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[nn.Module, PruningPlan, dict[str, Any]]:
    """Score, allocate and cut one step; the result meets ``budget`` on the measured model.

    Scoring, the search's evaluations and NAP's compensation run on ``device``; tracing, cost
    counting, latency tables and the cut itself on the CPU, where the model is kept.
    """
    example = torch.zeros(1, *data.input_shape)
    scored = score_model(model, data, spec, reference, timer, progress, device)
    graph, scores, factors, batches, inputs = scored.graph, scored.scores, scored.factors, scored.batches, scored.inputs

    def on_trial(fraction: float) -> None:  # a long search reports after each trial: a cancel stops it there
        if should_stop is not None and should_stop():
            raise CancelledError("the job was cancelled")
        progress("allocation", fraction, {})

    inputs.report = on_trial
    if budget.kind == "latency_ms":
        with timer("latency_table"):
            progress("latency_table", 0.0, {"runtime": budget.runtime})
            # onnxruntime's fast conv kernels want channel counts in multiples of 8 (HALP's grouping)
            step = 8 if budget.runtime == "onnxruntime" else 1
            table = LatencyTable.build(
                model, graph, example, runtime=budget.runtime, batch_size=budget.batch_size, channel_step=step
            )
            inputs.latency = table.latency
            progress("latency_table", 1.0, {"layers": len(table.layers)})
    cost, _ = inputs.cost_and_budget(budget)
    scale = 1.0 if budget.kind == "latency_ms" else reference[budget.kind]  # allocation costs -> budget units
    unpruned = cost({}) / scale  # predicted = measured here: exact counts, or the table's calibration point
    target = budget
    for attempt in range(ATTEMPTS):
        with timer("allocation"):
            progress("allocation", 0.0, {"method": spec.method, "attempt": attempt + 1})
            inputs.study_name = study_name(spec, target)
            with on_device(model, device):
                allocation = allocate(allocator_for(spec, budget), inputs, target, channel_step=spec.channel_step)
            plan = make_plan(graph, scores, allocation.keep)
            progress("allocation", 1.0, {"predicted": allocation.cost})
        with timer("surgery"):
            if factors is not None:
                with on_device(model, device):
                    pruned = compensated_cut(model, graph, factors, plan, example).cpu()
            else:
                pruned = apply_plan(model, example, plan)
            reestimate_bn(pruned, batches, device)
            reached = achieved(pruned, example, budget, reference, spec.latency_repeats)
            progress("surgery", 1.0, {budget.kind: reached})
        if reached <= budget.value * (1 + 1e-12):
            diagnostics = {
                "criterion": criterion_of(spec),
                "skipped_layers": list(graph.skipped),
                "target": target.value,
                "predicted": allocation.cost,
                "achieved": reached,
                "attempts": attempt + 1,
                "obs_compensation": factors is not None,
                **dict(allocation.diagnostics),
            }
            return pruned, plan, diagnostics
        log.warning("pruned model reaches %.4g > %.4g %s; tightening", reached, budget.value, budget.kind)
        value = next_target(budget.value, target.value, unpruned, allocation.cost / scale, reached)
        target = target.evolve(value=value)
    raise SurgeryError(f"could not meet {budget} after {ATTEMPTS} attempts (last: {reached:.4g})")


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


