"""Torch-Pruning's own pruners as its users run them: ``MetaPruner`` with global ranking, one step.

``magnitude`` is ``GroupMagnitudeImportance(p=1)`` (global L1), ``taylor`` is
``GroupTaylorImportance()`` after a backward pass over the pipeline's calibration batches, and
``group_norm`` is ``GroupMagnitudeImportance(p=2)``: Torch-Pruning 1.6.1 has no
``GroupNormImportance``; the DepGraph paper's group norm is this importance (its
``GroupNormPruner`` adds sparse training, which is not run here). Its ratio counts channels, so
it is bisected until the MACs meet the target. BatchNorm statistics are re-estimated after the
cut and after fine-tuning, as the pipeline does for its own methods. The cut is turned into our ``PruningPlan``
(checked to replay to exactly Torch-Pruning's weights), so the exported ``spec.json`` +
``model.safetensors`` reload like any pipeline run's; fine-tune, evaluation and export are the
pipeline's.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

from autoprune import prune_step
from autoprune.context import Timer
from autoprune.data import ImageData
from autoprune.device import on_device
from autoprune.errors import SurgeryError
from autoprune.export import ModelSpec, export_onnx, save_weights, write_json
from autoprune.finetune import evaluate, finetune
from autoprune.graph import build_graph
from autoprune.graph.build import find_output_layers
from autoprune.measure import count_cost
from autoprune.measure.paired import paired_model_timing
from autoprune.report.schema import MACS_NOTE, FinetuneReport, LatencyReport, Report
from autoprune.spec import Budget, FinetuneConfig, JobSpec
from autoprune.stages import layer_table
from autoprune.surgery import PruningPlan, apply_plan
from bench.baselines import DEVICE, load_baseline
from bench.common import stage_printer, versions

CALIBRATION_BATCHES = JobSpec.model_fields["calibration_batches"].default
LATENCY_REPEATS = JobSpec.model_fields["latency_repeats"].default
TP_IMPORTANCE: dict[str, Callable[[], tp.importance.Importance]] = {
    "magnitude": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "group_norm": lambda: tp.importance.GroupMagnitudeImportance(p=2),
}


@dataclass
class TPCut:
    """A Torch-Pruning result: the pruned copy, its ratio and MACs, and the removed output channels."""

    model: nn.Module
    ratio: float
    macs: int
    removed: dict[str, list[int]]  # conv/linear name → removed output channels (original indices)


def tp_prune(
    model: nn.Module, example: torch.Tensor, criterion: str, ratio: float, round_to: int | None = None
) -> TPCut:
    """MetaPruner with global ranking at one ``ratio``, on a copy of ``model`` (its gradients included);
    ``round_to``: Torch-Pruning's own channel rounding (kept widths in multiples of it)."""
    pruned = copy.deepcopy(model)
    for source, target in zip(model.parameters(), pruned.parameters(), strict=True):
        if source.grad is not None:  # deepcopy drops .grad; Taylor importance reads it
            target.grad = source.grad.clone()
    heads = [pruned.get_submodule(name) for name in find_output_layers(pruned, example)]
    pruner = tp.pruner.MetaPruner(
        pruned,
        example,
        importance=TP_IMPORTANCE[criterion](),
        global_pruning=True,
        pruning_ratio=ratio,
        ignored_layers=heads,
        iterative_steps=1,
        round_to=round_to,
    )
    names = {module: name for name, module in pruned.named_modules()}
    removed: dict[str, list[int]] = {}
    for group in pruner.step(interactive=True):
        for dep, idxs in group:
            module = dep.target.module
            if isinstance(module, (nn.Conv2d, nn.Linear)) and pruner.DG.is_out_channel_pruning_fn(dep.handler):
                removed[names[module]] = sorted(int(i) for i in idxs)
        group.prune()
    pruned.zero_grad(set_to_none=True)
    return TPCut(pruned, ratio, count_cost(pruned, example).macs, removed)


def bisect_ratio(
    model: nn.Module,
    example: torch.Tensor,
    criterion: str,
    target: float,
    *,
    tolerance: float = 0.01,
    steps: int = 30,
    round_to: int | None = None,
) -> tuple[TPCut, dict[str, Any]]:
    """The pruning ratio whose MACs are ≤ ``target`` and within ``tolerance`` below it, by bisection.

    If no ratio lands within the tolerance (MACs move in steps of whole channels, and ties in the
    importance move many at once), the feasible cut closest to the target is kept and the
    diagnostics say so.
    """
    lo, hi = 0.0, 0.99
    best: TPCut | None = None
    for step in range(1, steps + 1):
        cut = tp_prune(model, example, criterion, (lo + hi) / 2, round_to)
        if cut.macs > target:
            lo = cut.ratio
            continue
        hi = cut.ratio
        if best is None or cut.macs > best.macs:
            best = cut
        if cut.macs >= (1 - tolerance) * target:
            break
    if best is None:
        raise SurgeryError(f"torch-pruning ({criterion}) reached no MACs at or below {target:.4g} with ratio ≤ {hi}")
    within = best.macs >= (1 - tolerance) * target
    return best, {"pruning_ratio": best.ratio, "bisection_steps": step, "within_tolerance": within}


def plan_of(model: nn.Module, example: torch.Tensor, cut: TPCut) -> PruningPlan:
    """Torch-Pruning's cut as our replayable plan, checked to rebuild exactly its pruned weights."""
    graph = build_graph(model, example)
    keep = {}
    for group in graph.groups:
        removed = set(cut.removed.get(group.id, ()))
        if removed:
            keep[group.id] = [i for i in range(group.channels) if i not in removed]
    channels = {g.id: g.channels for g in graph.groups}
    plan = PruningPlan.from_keep(keep, channels, ignore=graph.ignore, skipped=graph.skipped)
    replayed, theirs = apply_plan(model, example, plan).state_dict(), cut.model.state_dict()
    if replayed.keys() != theirs.keys() or any(not torch.equal(replayed[k], theirs[k]) for k in theirs):
        raise SurgeryError("torch-pruning's cut does not replay as a pruning plan of our graph")
    return plan


def tp_run(
    arch: str,
    criterion: str,
    budget: Budget,
    weights: Path,
    data: ImageData,
    data_ref: str,
    cfg: FinetuneConfig,
    seed: int,
    out: Path,
) -> dict[str, Any]:
    """Torch-Pruning's global pruner, then the pipeline's fine-tune, evaluation and export; writes report.json."""
    if budget.kind != "flops":
        raise ValueError(f"the torch-pruning baseline takes flops budgets, not {budget}")
    timer = Timer()
    say = stage_printer(f"tp:{criterion}")
    model = load_baseline(arch, weights, data)
    example = torch.zeros(1, *data.input_shape)
    before = count_cost(model, example)
    with on_device(model, DEVICE):
        eval_before = evaluate(model, data)
    teacher = copy.deepcopy(model).eval()
    with timer("importance"):
        say("importance", 0.0, {})
        if criterion == "taylor":  # gradients summed over the pipeline's calibration batches
            model.zero_grad(set_to_none=True)
            with on_device(model, DEVICE):  # moves the gradients back with the weights
                for x, y in prune_step.calibration(data, CALIBRATION_BATCHES, seed)():
                    nn.functional.cross_entropy(model(x.to(DEVICE)), y.to(DEVICE), reduction="sum").backward()
    with timer("allocation"):
        say("allocation", 0.0, {})
        cut, diagnostics = bisect_ratio(model, example, criterion, budget.value * before.macs)
    with timer("surgery"):
        plan = plan_of(model, example, cut)
    pruned = cut.model
    batches = prune_step.calibration(data, CALIBRATION_BATCHES, seed)
    prune_step.reestimate_bn(pruned, batches, DEVICE)  # as the pipeline does after each cut and fine-tune
    with on_device(pruned, DEVICE):
        eval_pruned = evaluate(pruned, data)
        with timer("finetune"):
            say("finetune", 0.0, {})
            stats = finetune(pruned, data, cfg, teacher=teacher, seed=seed)
    prune_step.reestimate_bn(pruned, batches, DEVICE)
    with on_device(pruned, DEVICE):
        eval_after = evaluate(pruned, data)
    after = count_cost(pruned, example)
    with timer("export"):
        say("export", 0.0, {})
        model_spec = ModelSpec.for_data(arch, data, [plan])
        save_weights(pruned, out / "model.safetensors", model_spec)
        write_json(out / "spec.json", model_spec.to_dict())
        onnx_diff = export_onnx(pruned, out / "model.onnx", example)
    threads = torch.get_num_threads()
    paired = {
        runtime: paired_model_timing(
            teacher, pruned, data.input_shape, runtime=runtime, batch_size=1, threads=threads,
            rounds=LATENCY_REPEATS // 3, repeats=3,
        )
        for runtime in ("torch", "onnxruntime")
    }  # fmt: skip
    importance = TP_IMPORTANCE[criterion]()
    allocation = {
        "criterion": criterion,
        "importance": f"torch_pruning {type(importance).__name__}"
        + (f"(p={importance.p})" if hasattr(importance, "p") else "()"),
        "target": budget.value,
        "achieved": after.macs / before.macs,
        **diagnostics,
    }
    report = Report(
        arch=arch, data=data_ref, method="tp", criterion=criterion, budget=budget.to_dict(), schedule="oneshot",
        seed=seed, macs_before=before.macs, macs_after=after.macs, flops_before=2 * before.macs,
        flops_after=2 * after.macs, flops_ratio=after.macs / before.macs, params_before=before.params,
        params_after=after.params, params_ratio=after.params / before.params,
        latency_ms_before=paired["torch"].before_ms, latency_ms_after=paired["torch"].after_ms,
        latency=LatencyReport(
            batch_size=1, threads=threads, before={k: t.before_ms for k, t in paired.items()},
            after={k: t.after_ms for k, t in paired.items()}, paired={k: t.to_dict() for k, t in paired.items()},
            target={"runtime": "onnxruntime", "device": "cpu", "batch_size": 1, "threads": threads},
        ),
        faster=paired["onnxruntime"].ratio < 1,
        accuracy_before=eval_before.accuracy, accuracy_pruned=eval_pruned.accuracy,
        bn_reestimation_batches=CALIBRATION_BATCHES, accuracy_after=eval_after.accuracy,
        loss_before=eval_before.loss, loss_after=eval_after.loss, onnx_max_abs_diff=onnx_diff,
        layers=layer_table(before, after), allocation=[allocation],
        finetune=FinetuneReport(config=cfg.to_dict(), history=[asdict(s) for s in stats]),
        timings={stage: round(s, 3) for stage, s in timer.seconds.items()}, device=str(DEVICE), resumed=None,
        versions=versions(),
        notes="torch_pruning MetaPruner, global_pruning=True, iterative_steps=1, output layer ignored; "
        "pruning_ratio bisected to the MACs target. " + MACS_NOTE,
    ).to_dict()  # fmt: skip
    write_json(out / "report.json", report)
    return report
