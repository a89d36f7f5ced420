"""JobSpec → intake → score → allocate → cut → fine-tune → export → report.

One code path for the CLI, the job worker and the benchmarks. It composes the stages and owns
none of them; each stage reports ``(stage, fraction, metrics)`` through ``progress``.
"""

from __future__ import annotations

import copy
import logging
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch_pruning
from torch import nn

from autoprune.allocate import ProblemInputs, allocate, check_method, join_search
from autoprune.checkpoint import CheckpointDir, RunState, fingerprint
from autoprune.compensate import compensated_cut
from autoprune.data import ImageData, iterate_batches, load_data
from autoprune.device import check_device_name, on_device, resolve_device
from autoprune.errors import BudgetError, CancelledError, SurgeryError
from autoprune.export import ModelSpec, export_onnx, export_pt2, save_weights, write_json
from autoprune.finetune import TrainingState, evaluate, finetune
from autoprune.graph import PruneGraph, build_graph
from autoprune.importance import Batches, GroupScores, get_criterion
from autoprune.importance.kfac import KFAC, saliencies
from autoprune.measure import CostReport, count_cost, onnx_latency_ms, torch_latency_ms
from autoprune.measure.latency_table import LatencyTable
from autoprune.models import create_model, load_weights
from autoprune.models.onnx_graph import ONNX_PREFIX, check_input_shape
from autoprune.report import write_report_files
from autoprune.surgery import PruningPlan, apply_plan, make_plan
from autoprune.types import Budget, FinetuneConfig, JobSpec
from solvers import Allocator
from solvers.evolution import Evolution
from solvers.knapsack import HALP

log = logging.getLogger(__name__)

Progress = Callable[[str, float, dict[str, Any]], None]
STAGES = ("intake", "baseline", "importance", "allocation", "surgery", "finetune", "export")

ONNX_SOURCE = "source.onnx"  # an ONNX job's graph, copied beside spec.json
DEFAULT_CRITERION = {"uniform": "l1", "global": "taylor", "nap": "kfac", "itpruner": "l1", "evolution": "l1", "halp": "taylor"}


def _quiet(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
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


def validate(spec: JobSpec) -> None:
    """Refuse a spec with unknown names or a budget its method cannot take, before any work."""
    check_method(spec.method, spec.budget)
    get_criterion(criterion_of(spec))
    if spec.schedule == "iterative" and spec.iterative_steps < 1:
        raise BudgetError("an iterative schedule needs at least one step")
    check_device_name(spec.device)  # by name only: the API's validator may have no GPU
    if not isinstance(spec.channel_step, int) or not 1 <= spec.channel_step <= 64:
        raise BudgetError(f"channel_step must be an integer from 1 to 64, not {spec.channel_step!r}")
    if spec.search_trials is not None and (spec.method != "evolution" or spec.search_trials < 1):
        raise BudgetError(f"search_trials={spec.search_trials} needs method 'evolution' and at least one trial")


def criterion_of(spec: JobSpec) -> str:
    return spec.criterion or DEFAULT_CRITERION.get(spec.method, "l1")


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
        model, graph, scores, example, reference=reference, data=data, batches=batches, seed=spec.seed,
        storage=spec.search_storage,
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
    target = budget
    for attempt in range(3):
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
                    pruned = compensated_cut(model, graph, factors, plan, example, batches).cpu()
            else:
                pruned = apply_plan(model, example, plan)
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
        target = target.evolve(value=target.value * budget.value / reached * 0.99)
    raise SurgeryError(f"could not meet {budget} after 3 attempts (last: {reached:.4g})")


def help_search(
    spec: JobSpec, *, label: str, seed: int, progress: Progress = _quiet, should_stop: Callable[[], bool] | None = None
) -> dict[str, Any]:
    """Help the evolution search that ``run(spec)`` leads in another process (a service search helper).

    Intake and scoring are deterministic under the spec, so this process rebuilds the lead's
    allocation problem and study name, then adds trials to the shared study until it holds
    enough. Only one-shot jobs on a MACs or params budget can be helped: a latency table is
    measured, so another process would price the same candidate differently.
    """
    if spec.method != "evolution" or spec.search_storage is None:
        raise BudgetError("only an evolution search kept in a shared storage can be helped")
    if spec.schedule != "oneshot" or spec.budget.kind == "latency_ms":
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
    progress: Progress = _quiet,
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
        if spec.budget.kind == "latency_ms":
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
    targets = step_targets(spec.budget, steps, state.reference.get("latency_ms", 0.0))
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
        },
        "accuracy_before": eval_before.accuracy,
        "accuracy_pruned": state.pruned_eval["accuracy"] if state.pruned_eval else eval_before.accuracy,
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
    progress: Progress = _quiet,
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
