"""JobSpec → intake → score → allocate → cut → fine-tune → export → report.

One code path for the CLI, the job worker and the benchmarks. It composes the stages and owns
none of them; each stage reports ``(stage, fraction, metrics)`` through ``progress``.
"""

from __future__ import annotations

import copy
import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch_pruning
from torch import nn

from autoprune.allocate import check_method, join_search
from autoprune.checkpoint import CheckpointDir, RunState
from autoprune.data import ImageData, load_data
from autoprune.device import check_device_name, on_device, resolve_device
from autoprune.errors import BudgetError, CancelledError
from autoprune.export import ModelSpec, export_onnx, export_pt2, save_weights, write_json
from autoprune.finetune import TrainingState, evaluate, finetune
from autoprune.importance import get_criterion
from autoprune.measure import CostReport, count_cost, onnx_latency_ms, torch_latency_ms
from autoprune.models import create_model, load_weights
from autoprune.models.onnx_graph import ONNX_PREFIX, check_input_shape
from autoprune.prune_step import (
    Progress,
    Timer,
    allocator_for,
    calibration,
    criterion_of,
    model_latency_ms,
    no_progress,
    prune_once,
    reestimate_bn,
    score_model,
    study_name,
)
from autoprune.report import write_report_files
from autoprune.surgery import PruningPlan
from autoprune.types import Budget, FinetuneConfig, JobSpec

log = logging.getLogger(__name__)

STAGES = ("intake", "baseline", "importance", "allocation", "surgery", "finetune", "export")

ONNX_SOURCE = "source.onnx"  # an ONNX job's graph, copied beside spec.json


def validate(spec: JobSpec) -> None:
    """Refuse a spec with unknown names or a budget its method cannot take, before any work."""
    check_method(spec.method, spec.budget)
    get_criterion(criterion_of(spec))
    if spec.schedule == "iterative" and spec.iterative_steps < 1:
        raise BudgetError("an iterative schedule needs at least one step")
    if not isinstance(spec.calibration_batches, int) or spec.calibration_batches < 1:
        raise BudgetError(f"calibration_batches must be a positive integer, not {spec.calibration_batches!r}")
    check_device_name(spec.device)  # by name only: the API's validator may have no GPU
    if not isinstance(spec.channel_step, int) or not 1 <= spec.channel_step <= 64:
        raise BudgetError(f"channel_step must be an integer from 1 to 64, not {spec.channel_step!r}")
    if spec.search_trials is not None and (spec.method != "evolution" or spec.search_trials < 1):
        raise BudgetError(f"search_trials={spec.search_trials} needs method 'evolution' and at least one trial")


def intake(spec: JobSpec) -> tuple[nn.Module, ImageData]:
    data = load_data(spec.data)
    if spec.arch.startswith(ONNX_PREFIX):
        check_input_shape(spec.arch.removeprefix(ONNX_PREFIX), data.input_shape)
    torch.manual_seed(spec.seed)
    model = create_model(spec.arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    if spec.weights:
        load_weights(model, spec.weights)
    return model.eval(), data


def step_targets(budget: Budget, steps: int, reference: float) -> list[Budget]:
    """Budgets of an iterative schedule: the kept cost shrinks geometrically to the target.

    Fraction budgets shrink as f^(i/n); a latency budget goes from the original's measured
    latency ``reference`` to the target in the same geometric steps.
    """
    if budget.kind != "latency_ms":
        return [budget.evolve(value=budget.value ** ((i + 1) / steps)) for i in range(steps)]
    ratio = min(1.0, budget.value / reference)
    return [budget.evolve(value=reference * ratio ** ((i + 1) / steps)) for i in range(steps)]


def help_search(
    spec: JobSpec, *, label: str, seed: int, progress: Progress = no_progress, should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Help the evolution search that ``run(spec)`` leads in another process (a service search helper).

    Intake and scoring are deterministic under the spec, so this process rebuilds the lead's
    allocation problem and study name, then adds trials to the shared study until it holds
    enough. Only one-shot jobs on a MACs or params budget can be helped: a latency table is
    measured, so another process would price the same candidate differently.
    """
    if spec.method != "evolution" or spec.search_storage is None:
        raise BudgetError("only an evolution search kept in a shared storage can be helped")
    if spec.schedule != "oneshot" or spec.budget.measured:
        raise BudgetError("a search can be spread over processes for one-shot MACs or params budgets only")
    validate(spec)
    device = resolve_device(spec.device)
    timer = Timer()
    with timer("intake"):
        progress("intake", 0.0, {})
        model, data = intake(spec)
    scored = score_model(model, data, spec, {}, timer, progress, device)
    scored.inputs.study_name = study_name(spec, spec.budget)
    scored.inputs.report = lambda fraction: progress("allocation", fraction, {})
    with timer("allocation"), on_device(model, device):
        progress("allocation", 0.0, {"method": spec.method, "role": "helper"})
        allocator = allocator_for(spec, spec.budget)
        stop = should_stop or (lambda: False)
        joined = join_search(allocator, scored.inputs, spec.budget, label=label, seed=seed, should_stop=stop)
    return {**joined, "timings": {stage: round(t, 3) for stage, t in timer.seconds.items()}}


def _latencies(model: nn.Module, input_shape: tuple[int, ...], spec: JobSpec, onnx_path: Path | None) -> dict[str, float]:
    """Median latency in each runtime, both with torch's current thread count."""
    timing = dict(batch_size=spec.budget.batch_size, repeats=spec.latency_repeats, threads=torch.get_num_threads())
    out = {"torch": torch_latency_ms(model, input_shape, **timing)}
    if onnx_path is not None:
        out["onnxruntime"] = onnx_latency_ms(onnx_path, input_shape, **timing)
    return out


def run(
    spec: JobSpec,
    *,
    progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Prune, fine-tune and export one model; writes ``spec.out_dir`` and returns the report.

    With ``checkpoint_dir``, the state after each cut and each fine-tune epoch is saved there,
    and a run that finds a checkpoint of the same spec resumes from it instead of starting over.
    """
    validate(spec)
    device = resolve_device(spec.device)
    out = Path(spec.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    checkpoints = CheckpointDir(checkpoint_dir, spec) if checkpoint_dir is not None else None
    state = checkpoints.load() if checkpoints is not None else None

    def check_cancel() -> None:
        if should_stop is not None and should_stop():
            raise CancelledError("the job was cancelled")

    with timer("intake"):
        progress("intake", 0.0, {})
        model, data = intake(spec)
        example = torch.zeros(1, *data.input_shape)
        progress("intake", 1.0, {"classes": data.num_classes, "train": len(data.train_y), "test": len(data.test_y)})
    check_cancel()
    with timer("baseline"):
        before = count_cost(model, example)
        with on_device(model, device):
            eval_before = evaluate(model, data)
        progress("baseline", 1.0, {"accuracy": eval_before.accuracy, "macs": before.macs})
    teacher = copy.deepcopy(model).eval()
    resumed = None
    if state is None:
        state = RunState(reference={"flops": before.macs, "params": before.params})
        if spec.budget.measured:
            state.reference["latency_ms"] = model_latency_ms(model, data.input_shape, spec.budget, spec.latency_repeats)
    else:
        model = ModelSpec.for_data(spec.arch, data, [PruningPlan.from_dict(p) for p in state.plans]).build()
        model.load_state_dict(state.weights)
        resumed = {"cuts_done": len(state.plans), "epochs_done": state.epochs_done}
        progress("resume", 1.0, resumed)
        log.info("resuming from a checkpoint: %s", resumed)
    for stage, seconds in state.timings.items():
        timer.seconds[stage] = timer.seconds.get(stage, 0.0) + seconds

    def save(training: TrainingState | None = None) -> None:
        if checkpoints is not None:
            state.weights, state.training, state.timings = model.state_dict(), training, dict(timer.seconds)
            checkpoints.save(state)

    steps = spec.iterative_steps if spec.schedule == "iterative" else 1
    step_epochs = _split_epochs(spec.finetune.epochs, steps)
    # a relative latency budget is priced in milliseconds of the timing above (kept in a checkpoint)
    reference_ms = state.reference.get("latency_ms", 0.0)
    budget = spec.budget.in_ms(reference_ms)
    targets = step_targets(budget, steps, reference_ms)
    for step, (target, epochs) in enumerate(zip(targets, step_epochs, strict=True)):
        check_cancel()
        if step < len(state.plans) - 1 or (step == len(state.plans) - 1 and state.epochs_done >= epochs):
            continue  # this step's cut and fine-tune are in the checkpoint
        resume_training = None
        if step == len(state.plans):
            model, plan, diag = prune_once(
                model, data, spec, target, state.reference, timer, progress, device, should_stop=should_stop
            )
            state.plans.append(plan.to_dict())
            state.diagnostics.append(diag)
            state.epochs_done = 0
            if state.pruned_eval is None:
                with on_device(model, device):
                    state.pruned_eval = asdict(evaluate(model, data))
            save()
        else:
            resume_training = state.training
        if epochs:
            with timer("finetune"):
                cfg = spec.finetune.evolve(epochs=epochs)
                done = sum(step_epochs[:step])
                total = max(1, sum(step_epochs))
                kept_history = [h for h in state.history if h["step"] != step + 1]

                def epoch_done(training: TrainingState, step: int = step) -> None:
                    state.epochs_done = len(training["history"])
                    state.history = kept_history + [{"step": step + 1, **h} for h in training["history"]]
                    save(training)

                with on_device(model, device):
                    finetune(
                        model,
                        data,
                        cfg,
                        teacher=teacher,
                        seed=spec.seed + step,
                        should_stop=should_stop,
                        on_progress=lambda f, m: progress("finetune", (done + f * epochs) / total, m),
                        resume=resume_training,
                        on_epoch=epoch_done,
                    )
    if sum(step_epochs):  # after training; each cut already re-estimated its own
        reestimate_bn(model, calibration(data, spec.calibration_batches, spec.seed), device)
    plans = [PruningPlan.from_dict(p) for p in state.plans]
    diagnostics, history = state.diagnostics, state.history
    after = count_cost(model, example)
    with on_device(model, device):
        eval_after = evaluate(model, data)
    check_cancel()

    with timer("export"):
        progress("export", 0.0, {})
        model_spec = ModelSpec.for_data(portable_arch(spec.arch, out), data, plans)
        save_weights(model, out / "model.safetensors", model_spec)
        write_json(out / "spec.json", model_spec.to_dict())
        onnx_diff = None
        onnx_path = None
        if spec.export_onnx:
            onnx_path = out / "model.onnx"
            onnx_diff = export_onnx(model, onnx_path, example)
        if spec.export_pt2:
            export_pt2(model, out / "model.pt2", example)
        progress("export", 0.5, {"onnx_max_abs_diff": onnx_diff})
        with tempfile.TemporaryDirectory() as tmp:
            original_onnx = None
            if spec.export_onnx:
                original_onnx = Path(tmp) / "original.onnx"
                export_onnx(teacher, original_onnx, example)
            latency_before = _latencies(teacher, data.input_shape, spec, original_onnx)
        latency_after = _latencies(model, data.input_shape, spec, onnx_path)
        progress("export", 1.0, {})

    report = {
        "arch": model_spec.arch,
        "data": spec.data_label or spec.data,
        "method": spec.method,
        "criterion": diagnostics[0]["criterion"],
        "budget": spec.budget.to_dict(),
        "schedule": spec.schedule,
        "seed": spec.seed,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "flops_before": 2 * before.macs,
        "flops_after": 2 * after.macs,
        "flops_ratio": after.macs / before.macs,
        "params_before": before.params,
        "params_after": after.params,
        "params_ratio": after.params / before.params,
        "latency_ms_before": latency_before["torch"],
        "latency_ms_after": latency_after["torch"],
        "latency": {
            "batch_size": spec.budget.batch_size,
            "threads": torch.get_num_threads(),
            "before": latency_before,
            "after": latency_after,
            # a latency budget's unpruned latency, measured when the job started (what it pruned from)
            "budget_reference_ms": state.reference.get("latency_ms"),
            "budget_target_ms": budget.value if budget.measured else None,
        },
        "accuracy_before": eval_before.accuracy,
        # right after the (first) cut, BN statistics re-estimated, not fine-tuned
        "accuracy_pruned": state.pruned_eval["accuracy"] if state.pruned_eval else eval_before.accuracy,
        "bn_reestimation_batches": spec.calibration_batches,  # after each cut and after fine-tuning
        "accuracy_after": eval_after.accuracy,
        "loss_before": eval_before.loss,
        "loss_after": eval_after.loss,
        "onnx_max_abs_diff": onnx_diff,
        "layers": layer_table(before, after),
        "allocation": diagnostics,
        "finetune": {"config": spec.finetune.to_dict(), "history": history},
        "timings": {stage: round(s, 3) for stage, s in timer.seconds.items()},
        "device": str(device),
        "resumed": resumed,
        "versions": {"torch": torch.__version__, "torch_pruning": torch_pruning.__version__},
        "notes": "MACs count conv+linear multiply-accumulates per sample; FLOPs = 2 x MACs.",
    }
    write_json(out / "report.json", report)
    write_report_files(out, report)
    progress("done", 1.0, {"accuracy": eval_after.accuracy})
    return report


def portable_arch(arch: str, out: Path) -> str:
    """The arch for spec.json: an ONNX source is copied beside it and named relatively."""
    if not arch.startswith(ONNX_PREFIX):
        return arch
    shutil.copyfile(arch[len(ONNX_PREFIX) :], out / ONNX_SOURCE)
    return ONNX_PREFIX + ONNX_SOURCE


def _split_epochs(epochs: int, steps: int) -> list[int]:
    """Spread the fine-tune epochs over the steps, the remainder going to the last step."""
    base = epochs // steps
    return [base] * (steps - 1) + [epochs - base * (steps - 1)]


def layer_table(before: CostReport, after: CostReport) -> list[dict[str, Any]]:
    """Per-layer widths and MACs before and after, for the report."""
    pruned = {layer.name: layer for layer in after.layers}
    return [
        {
            "name": layer.name,
            "kind": layer.kind,
            "channels_before": layer.out_channels,
            "channels_after": pruned[layer.name].out_channels,
            "in_channels_before": layer.in_channels,
            "in_channels_after": pruned[layer.name].in_channels,
            "macs_before": layer.macs,
            "macs_after": pruned[layer.name].macs,
        }
        for layer in before.layers
        if layer.name in pruned
    ]


def train_baseline(
    arch: str,
    data_ref: str,
    out: str | Path,
    *,
    epochs: int,
    cfg: FinetuneConfig | None = None,
    seed: int = 0,
    progress: Progress = no_progress,
) -> dict[str, Any]:
    """Train an architecture from scratch and save ``model.safetensors`` (for demos and benchmarks)."""
    data = load_data(data_ref)
    torch.manual_seed(seed)
    model = create_model(arch, num_classes=data.num_classes, in_channels=data.input_shape[0])
    cfg = (cfg or FinetuneConfig(lr=0.1, distill=False)).evolve(epochs=epochs, distill=False)
    stats = finetune(model, data, cfg, seed=seed, on_progress=lambda f, m: progress("train", f, m))
    result = evaluate(model, data)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_weights(model, path, ModelSpec.for_data(arch, data))
    return {
        "accuracy": result.accuracy,
        "loss": result.loss,
        "epochs": epochs,
        "history": [asdict(s) for s in stats],
        "weights": str(path),
    }
