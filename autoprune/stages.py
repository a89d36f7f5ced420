"""The stages of a pruning run, in order, each a function of the run's context.

intake → baseline → prune (cut and fine-tune, once or per iterative step) → settle → export →
report. Each stage reports ``(stage, fraction, metrics)`` through ``ctx.progress`` and times
itself in ``ctx.timer``; the runner (``autoprune.pipeline.run``) checks for a cancel between them.
"""

from __future__ import annotations

import copy
import logging
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch_pruning

from autoprune.budget import Budget
from autoprune.checkpoint import RunState
from autoprune.context import RunContext
from autoprune.data import ImageData, load_data
from autoprune.device import on_device
from autoprune.export import ModelSpec, export_onnx, export_pt2, save_weights, write_json
from autoprune.faster import faster_cut
from autoprune.finetune import TrainingState, evaluate, finetune
from autoprune.measure import CostReport, count_cost
from autoprune.measure.paired import PairedTiming, paired_model_timing
from autoprune.models import create_model, load_weights
from autoprune.models.onnx_graph import check_input_shape
from autoprune.models.preprocess import check_input_size, resolve_input
from autoprune.prune_step import (
    SCRATCH,
    calibration,
    candidate_rows,
    limits_report,
    model_latency_ms,
    prune_once,
    reestimate_bn,
    score_model,
    target_threads,
    teacher_onnx,
)
from autoprune.report.schema import FinetuneReport, LatencyReport, LayerRow, Report
from autoprune.report.write import write_report_files
from autoprune.spec import ONNX_PREFIX, JobSpec
from autoprune.surgery import PruningPlan

log = logging.getLogger(__name__)

ONNX_SOURCE = "source.onnx"  # an ONNX job's graph, copied beside spec.json


def load_model_and_data(spec: JobSpec) -> tuple[torch.nn.Module, ImageData]:
    """The spec's dataset at the model's input size and normalisation (``spec.input`` over the
    model's own), and its architecture built for it with the given weights (eval mode)."""
    data = load_data(spec.data, preprocess=resolve_input(spec.arch, spec.input))
    if spec.arch.startswith(ONNX_PREFIX):
        check_input_shape(spec.arch.removeprefix(ONNX_PREFIX), data.input_shape)
    torch.manual_seed(spec.seed)
    model = create_model(spec.arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    check_input_size(model, data.input_shape, spec.arch)
    if spec.weights:
        load_weights(model, spec.weights)
    return model.eval(), data


def intake(ctx: RunContext) -> None:
    with ctx.timer("intake"):
        ctx.progress("intake", 0.0, {})
        ctx.model, ctx.data = load_model_and_data(ctx.spec)
        sizes = {"train": len(ctx.data.train_y), "test": len(ctx.data.test_y)}
        ctx.progress("intake", 1.0, {"classes": ctx.data.num_classes, **sizes})


def baseline(ctx: RunContext) -> None:
    """Measure the unpruned model; start the run's state, or resume it from a checkpoint."""
    assert ctx.data is not None
    with ctx.timer("baseline"):
        ctx.cost_before = count_cost(ctx.model, ctx.example)
        with on_device(ctx.model, ctx.device):
            ctx.eval_before = evaluate(ctx.model, ctx.data)
        ctx.progress("baseline", 1.0, {"accuracy": ctx.eval_before.accuracy, "macs": ctx.cost_before.macs})
    ctx.teacher = copy.deepcopy(ctx.model).eval()
    saved = ctx.checkpoints.load() if ctx.checkpoints is not None else None
    if saved is None:
        ctx.state = RunState(reference={"flops": ctx.cost_before.macs, "params": ctx.cost_before.params})
        if ctx.spec.budget.measured:
            latency = model_latency_ms(ctx.model, ctx.data.input_shape, ctx.spec.budget, ctx.spec.latency_repeats)
            ctx.state.reference["latency_ms"] = latency
    else:
        ctx.state = saved
        plans = [PruningPlan.from_dict(p) for p in saved.plans]
        ctx.model = ModelSpec.for_data(ctx.spec.arch, ctx.data, plans).build()
        ctx.model.load_state_dict(saved.weights)
        ctx.resumed = {"cuts_done": len(saved.plans), "epochs_done": saved.epochs_done}
        ctx.progress("resume", 1.0, ctx.resumed)
        log.info("resuming from a checkpoint: %s", ctx.resumed)
    for stage, seconds in ctx.state.timings.items():
        ctx.timer.seconds[stage] = ctx.timer.seconds.get(stage, 0.0) + seconds
    # a relative latency budget is priced in milliseconds of the timing above (kept in a checkpoint)
    ctx.budget = ctx.spec.budget.in_ms(ctx.state.reference.get("latency_ms", 0.0))


def prune(ctx: RunContext) -> None:
    """Cut and fine-tune, once or per iterative step; steps the checkpoint holds are skipped."""
    assert ctx.budget is not None
    spec, state = ctx.spec, ctx.state
    steps = spec.iterative_steps if spec.schedule == "iterative" else 1
    step_epochs = split_epochs(spec.finetune.epochs, steps)
    targets = step_targets(ctx.budget, steps, state.reference.get("latency_ms", 0.0))
    for step, (target, epochs) in enumerate(zip(targets, step_epochs, strict=True)):
        ctx.check_cancel()
        if step < len(state.plans) - 1 or (step == len(state.plans) - 1 and state.epochs_done >= epochs):
            continue  # this step's cut and fine-tune are in the checkpoint
        resume_training = None
        if step == len(state.plans):
            _cut(ctx, target)
        else:
            resume_training = state.training
        if epochs:
            done, total = sum(step_epochs[:step]), max(1, sum(step_epochs))
            report = lambda f, m, done=done, epochs=epochs: ctx.progress("finetune", (done + f * epochs) / total, m)  # noqa: E731
            _finetune(ctx, step, epochs, resume_training, report)


def _cut(ctx: RunContext, target: Budget) -> None:
    assert ctx.data is not None
    scored = score_model(ctx)
    pruned, plan, diagnostics = prune_once(ctx, target, scored=scored)
    if ctx.spec.ensure_faster:
        pruned, plan, diagnostics = faster_cut(ctx, target, (pruned, plan, diagnostics), scored)
    ctx.model = pruned
    ctx.state.plans.append(plan.to_dict())
    ctx.state.diagnostics.append(diagnostics)
    ctx.state.epochs_done = 0
    if ctx.state.pruned_eval is None:
        with on_device(ctx.model, ctx.device):
            ctx.state.pruned_eval = asdict(evaluate(ctx.model, ctx.data))
    ctx.save()


def _finetune(
    ctx: RunContext,
    step: int,
    epochs: int,
    resume: TrainingState | None,
    report: Callable[[float, dict[str, float]], None],
) -> None:
    """Fine-tune after cut ``step``, checkpointing after each epoch."""
    assert ctx.data is not None
    kept_history = [h for h in ctx.state.history if h["step"] != step + 1]

    def epoch_done(training: TrainingState) -> None:
        ctx.state.epochs_done = len(training["history"])
        ctx.state.history = kept_history + [{"step": step + 1, **h} for h in training["history"]]
        ctx.save(training)

    with ctx.timer("finetune"), on_device(ctx.model, ctx.device):
        finetune(
            ctx.model, ctx.data, ctx.spec.finetune.evolve(epochs=epochs), teacher=ctx.teacher, seed=ctx.spec.seed + step,
            should_stop=ctx.should_stop, on_progress=report, resume=resume, on_epoch=epoch_done,
        )  # fmt: skip


def settle(ctx: RunContext) -> None:
    """After training, re-estimate BN statistics (each cut already re-estimated its own) and evaluate."""
    assert ctx.data is not None
    spec = ctx.spec
    if spec.finetune.epochs:
        reestimate_bn(ctx.model, calibration(ctx.data, spec.calibration_batches, spec.seed), ctx.device)
    ctx.outputs["cost_after"] = count_cost(ctx.model, ctx.example)
    with on_device(ctx.model, ctx.device):
        ctx.outputs["eval_after"] = evaluate(ctx.model, ctx.data)


def export(ctx: RunContext) -> None:
    """Write model.safetensors, spec.json and the exports; time the unpruned and pruned models."""
    assert ctx.data is not None and ctx.teacher is not None
    out, spec = ctx.out, ctx.spec
    with ctx.timer("export"):
        ctx.progress("export", 0.0, {})
        plans = [PruningPlan.from_dict(p) for p in ctx.state.plans]
        model_spec = ModelSpec.for_data(portable_arch(spec.arch, out), ctx.data, plans)
        save_weights(ctx.model, out / "model.safetensors", model_spec)
        write_json(out / "spec.json", model_spec.to_dict())
        onnx_path = out / "model.onnx" if "onnx" in spec.exports else None
        onnx_diff = export_onnx(ctx.model, onnx_path, ctx.example) if onnx_path is not None else None
        if "pt2" in spec.exports:
            export_pt2(ctx.model, out / "model.pt2", ctx.example)
        ctx.progress("export", 1.0, {"onnx_max_abs_diff": onnx_diff})
    ctx.outputs.update(arch=model_spec.arch, onnx_diff=onnx_diff)


def timing(ctx: RunContext) -> None:
    """Time the unpruned and the pruned model in pairs (one process, alternating rounds): in torch,
    and in onnxruntime when the model is exported there or deployed there."""
    assert ctx.data is not None and ctx.teacher is not None
    spec = ctx.spec
    runtimes = ["torch"] + (["onnxruntime"] if "onnx" in spec.exports or spec.target.runtime == "onnxruntime" else [])
    with ctx.timer("timing"):
        ctx.progress("timing", 0.0, {"runtimes": runtimes})
        exported = ctx.out / "model.onnx" if "onnx" in spec.exports else None
        ctx.outputs["paired"] = {
            runtime: paired_model_timing(
                ctx.teacher, ctx.model, ctx.data.input_shape, runtime=runtime, batch_size=spec.target.batch_size,
                threads=target_threads(spec), rounds=max(2, spec.latency_repeats // 3), repeats=3,
                onnx_paths=(teacher_onnx(ctx), exported) if runtime == "onnxruntime" else (None, None),
            )
            for runtime in runtimes
        }  # fmt: skip
        shutil.rmtree(ctx.out / SCRATCH, ignore_errors=True)
        ctx.progress("timing", 1.0, {})


def report(ctx: RunContext) -> None:
    """Assemble the report; write report.json, report.html and its figures."""
    ctx.outputs["report"] = done = build_report(ctx)
    as_json = done.to_dict()
    write_json(ctx.out / "report.json", as_json)
    write_report_files(ctx.out, as_json)
    ctx.progress("done", 1.0, {"accuracy": done.accuracy_after})


def build_report(ctx: RunContext) -> Report:
    before, after = ctx.cost_before, ctx.outputs["cost_after"]
    eval_before, eval_after = ctx.eval_before, ctx.outputs["eval_after"]
    assert before is not None and eval_before is not None and ctx.budget is not None
    spec, state = ctx.spec, ctx.state
    paired: dict[str, PairedTiming] = ctx.outputs["paired"]
    deployed = paired[spec.target.runtime]
    warnings = [] if deployed.ratio < 1 else [not_faster_warning(spec, deployed)]
    return Report(
        arch=ctx.outputs["arch"], data=ctx.data_label or spec.data, method=spec.method,
        criterion=state.diagnostics[0]["criterion"], budget=spec.budget.to_dict(), schedule=spec.schedule,
        seed=spec.seed, macs_before=before.macs, macs_after=after.macs,
        flops_before=2 * before.macs, flops_after=2 * after.macs, flops_ratio=after.macs / before.macs,
        params_before=before.params, params_after=after.params, params_ratio=after.params / before.params,
        latency_ms_before=paired["torch"].before_ms, latency_ms_after=paired["torch"].after_ms,
        latency=LatencyReport(
            batch_size=spec.target.batch_size, threads=target_threads(spec),
            before={k: t.before_ms for k, t in paired.items()}, after={k: t.after_ms for k, t in paired.items()},
            paired={k: t.to_dict() for k, t in paired.items()}, target=spec.target.to_dict(),
            budget_reference_ms=state.reference.get("latency_ms"),
            budget_target_ms=ctx.budget.value if ctx.budget.measured else None,
        ),
        faster=deployed.ratio < 1, warnings=warnings,
        accuracy_before=eval_before.accuracy,
        accuracy_pruned=state.pruned_eval["accuracy"] if state.pruned_eval else eval_before.accuracy,
        bn_reestimation_batches=spec.calibration_batches, accuracy_after=eval_after.accuracy,
        loss_before=eval_before.loss, loss_after=eval_after.loss, onnx_max_abs_diff=ctx.outputs["onnx_diff"],
        layers=layer_table(before, after), allocation=state.diagnostics,
        limits=limits_report(spec, state.diagnostics), candidates=candidate_rows(state.diagnostics),
        finetune=FinetuneReport(config=spec.finetune.to_dict(), history=state.history),
        timings={stage: round(s, 3) for stage, s in ctx.timer.seconds.items()}, device=str(ctx.device),
        resumed=ctx.resumed, versions={"torch": torch.__version__, "torch_pruning": torch_pruning.__version__},
        input=ctx.data.preprocess.to_dict() if ctx.data is not None and ctx.data.preprocess is not None else None,
    )  # fmt: skip


STAGES: tuple[tuple[str, Callable[[RunContext], None]], ...] = (
    ("intake", intake),
    ("baseline", baseline),
    ("prune", prune),
    ("settle", settle),
    ("export", export),
    ("timing", timing),
    ("report", report),
)


def not_faster_warning(spec: JobSpec, timing: PairedTiming) -> str:
    target = spec.target
    return (
        f"the pruned model is not faster than the unpruned one in {target.runtime} at batch {target.batch_size} "
        f"({timing.speedup:.2f}x, median of {timing.rounds} paired rounds); small nets and batch 1 gain little "
        "from fewer channels: try --channel-step 8 or 16, a larger batch, or a latency budget"
    )


def step_targets(budget: Budget, steps: int, reference: float) -> list[Budget]:
    """Budgets of an iterative schedule: the kept cost shrinks geometrically to the target.

    Fraction budgets shrink as f^(i/n); a latency budget goes from the original's measured
    latency ``reference`` to the target in the same geometric steps.
    """
    if not budget.measured:
        return [budget.evolve(value=budget.value ** ((i + 1) / steps)) for i in range(steps)]
    ratio = min(1.0, budget.value / reference)
    return [budget.evolve(value=reference * ratio ** ((i + 1) / steps)) for i in range(steps)]


def split_epochs(epochs: int, steps: int) -> list[int]:
    """Spread the fine-tune epochs over the steps, the remainder going to the last step."""
    base = epochs // steps
    return [base] * (steps - 1) + [epochs - base * (steps - 1)]


def portable_arch(arch: str, out: Path) -> str:
    """The arch for spec.json: an ONNX source is copied beside it and named relatively."""
    if not arch.startswith(ONNX_PREFIX):
        return arch
    shutil.copyfile(arch[len(ONNX_PREFIX) :], out / ONNX_SOURCE)
    return ONNX_PREFIX + ONNX_SOURCE


def layer_table(before: CostReport, after: CostReport) -> list[LayerRow]:
    """Per-layer widths and MACs before and after, for the report."""
    pruned = {layer.name: layer for layer in after.layers}
    return [
        LayerRow(
            name=layer.name,
            kind=layer.kind,
            channels_before=layer.out_channels,
            channels_after=pruned[layer.name].out_channels,
            in_channels_before=layer.in_channels,
            in_channels_after=pruned[layer.name].in_channels,
            macs_before=layer.macs,
            macs_after=pruned[layer.name].macs,
        )  # fmt: skip
        for layer in before.layers
        if layer.name in pruned
    ]
