"""JobSpec → intake → baseline → prune → settle → export → report.

One code path for the CLI, the job worker and the benchmarks: ``run`` walks the stages of
``autoprune.stages`` over one ``RunContext``; it owns none of them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from autoprune.allocate import join_search
from autoprune.checkpoint import CheckpointDir
from autoprune.context import Progress, RunContext, SearchStore, never, no_progress
from autoprune.data import load_data
from autoprune.device import check_device_name, on_device, resolve_device
from autoprune.errors import BudgetError
from autoprune.export import ModelSpec, save_weights
from autoprune.finetune import evaluate, finetune
from autoprune.importance import get_criterion
from autoprune.models import create_model
from autoprune.prune_step import allocator_for, score_model, study_name
from autoprune.report.schema import Report
from autoprune.spec import FinetuneConfig, JobSpec
from autoprune.stages import STAGES, load_model_and_data

log = logging.getLogger(__name__)


def validate(spec: JobSpec) -> None:
    """What the spec's own validation cannot check without torch: the criterion loads, the
    device name is one torch knows (by name only: the API's validator may have no GPU)."""
    get_criterion(spec.criterion_name)
    check_device_name(spec.device)


def run(
    spec: JobSpec,
    *,
    progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
    checkpoint_dir: str | Path | None = None,
    search: SearchStore | None = None,
    data_label: str | None = None,
) -> Report:
    """Prune, fine-tune and export one model; writes ``spec.out_dir`` and returns the report.

    With ``checkpoint_dir``, the state after each cut and each fine-tune epoch is saved there,
    and a run that finds a checkpoint of the same spec resumes from it instead of starting over.
    ``search`` keeps an evolution search's study in a database (resumable, shareable with
    helpers); ``data_label`` names the data in the report instead of ``spec.data``.
    """
    validate(spec)
    Path(spec.out_dir).mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        spec=spec, device=resolve_device(spec.device), progress=progress, should_stop=should_stop or never,
        checkpoints=CheckpointDir(checkpoint_dir, spec) if checkpoint_dir is not None else None,
        search=search, data_label=data_label,
    )  # fmt: skip
    for _name, stage in STAGES:
        ctx.check_cancel()
        stage(ctx)
    report: Report = ctx.outputs["report"]
    return report


def help_search(
    spec: JobSpec,
    *,
    search: SearchStore,
    label: str,
    seed: int,
    progress: Progress = no_progress,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Help the evolution search that ``run(spec)`` leads in another process (a service search helper).

    Intake and scoring are deterministic under the spec, so this process rebuilds the lead's
    allocation problem and study name, then adds trials to the shared study until it holds
    enough. Only one-shot jobs on a MACs or params budget can be helped: a latency table is
    measured, so another process would price the same candidate differently.
    """
    if spec.schedule != "oneshot" or spec.budget.measured:
        raise BudgetError("a search can be spread over processes for one-shot MACs or params budgets only")
    validate(spec)
    ctx = RunContext(spec=spec, device=resolve_device(spec.device), progress=progress, search=search)
    with ctx.timer("intake"):
        progress("intake", 0.0, {})
        ctx.model, ctx.data = load_model_and_data(spec)
    scored = score_model(ctx)
    scored.inputs.study_name = study_name(ctx, spec.budget)
    scored.inputs.report = lambda fraction: progress("allocation", fraction, {})
    with ctx.timer("allocation"), on_device(ctx.model, ctx.device):
        progress("allocation", 0.0, {"method": spec.method, "role": "helper"})
        allocator = allocator_for(spec, spec.budget)
        stop = should_stop or never
        joined = join_search(allocator, scored.inputs, spec.budget, label=label, seed=seed, should_stop=stop)
    return {**joined, "timings": {stage: round(t, 3) for stage, t in ctx.timer.seconds.items()}}


# Training from scratch, for demos, tests and benchmarks: the recipe their baselines were made
# with, kept apart from the fine-tune defaults (which follow docs/methods.md#fine-tuning).
BASELINE_RECIPE = FinetuneConfig(lr=0.1, batch_size=64, nesterov=False, distill=False)


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
    cfg = (cfg or BASELINE_RECIPE).evolve(epochs=epochs, distill=False)
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
