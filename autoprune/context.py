"""What every stage of a run shares: the spec, where it runs, its clock, progress, cancellation,
checkpoints, and the work done so far (filled in by the stages, in order)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.budget import Budget
from autoprune.checkpoint import CheckpointDir, RunState
from autoprune.data import ImageData
from autoprune.errors import CancelledError
from autoprune.finetune import Evaluation
from autoprune.measure import CostReport
from autoprune.spec import JobSpec

Progress = Callable[[str, float, dict[str, Any]], None]


def no_progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
    return None


def never() -> bool:
    return False


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


@dataclass(frozen=True)
class SearchStore:
    """Where an evolution search keeps its Optuna study (an SQLAlchemy URL, so a re-run of the
    job continues it), and the key that scopes the study to one job: identical specs of two jobs
    then search apart, while a job's attempts and search helpers share its study."""

    url: str
    key: str | None = None


@dataclass
class RunContext:
    """One run of a spec. The stages read what earlier stages left here and add their own."""

    spec: JobSpec
    device: torch.device
    progress: Progress = no_progress
    should_stop: Callable[[], bool] = never
    checkpoints: CheckpointDir | None = None
    search: SearchStore | None = None
    data_label: str | None = None  # how the report names the data when ``spec.data`` is a server path
    timer: Timer = field(default_factory=Timer)
    # -- the work so far --
    model: nn.Module = field(default_factory=nn.Identity)
    data: ImageData | None = None
    teacher: nn.Module | None = None  # the unpruned model, for distillation and the before/after timing
    cost_before: CostReport | None = None
    eval_before: Evaluation | None = None
    state: RunState = field(default_factory=lambda: RunState(reference={}))
    budget: Budget | None = None  # the spec's budget, a relative latency priced in ms
    resumed: dict[str, int] | None = None
    outputs: dict[str, Any] = field(default_factory=dict)  # what the export stage measured

    @property
    def out(self) -> Path:
        return Path(self.spec.out_dir)

    @property
    def example(self) -> torch.Tensor:
        """One zero input of the data's shape: what tracing, counting and export run on."""
        assert self.data is not None, "the intake stage runs first"
        return torch.zeros(1, *self.data.input_shape)

    def check_cancel(self) -> None:
        if self.should_stop():
            raise CancelledError("the job was cancelled")

    def save(self, training: dict[str, Any] | None = None) -> None:
        """Checkpoint the state with the current weights (and a fine-tune's ``training`` state)."""
        if self.checkpoints is None:
            return
        self.state.weights, self.state.training = self.model.state_dict(), training
        self.state.timings = dict(self.timer.seconds)
        self.checkpoints.save(self.state)
