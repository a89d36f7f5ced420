"""The Job value object, its status machine and how pipeline stages map to overall progress."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Any


class JobKind(str, enum.Enum):
    """``prune``: a user's job. ``search``: a helper row that adds trials to its parent's
    evolution search on another worker slot; users never see it on its own."""

    PRUNE = "prune"
    SEARCH = "search"


class JobStatus(str, enum.Enum):
    """``queued → running → succeeded | failed | cancelled``; ``running → queued`` on a retry."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    def is_finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


class Stage(str, enum.Enum):
    """The pipeline stages the service knows, as ``autoprune.pipeline`` names them in its progress
    reports (and the job row's ``stage`` stores them). The pipeline reports a few more (e.g.
    ``latency_table``, ``resume``): the row stores those as they come, and they move no progress.
    A ``str`` enum, so a stage read back from the row compares (and hashes) equal to its member."""

    INTAKE = "intake"
    BASELINE = "baseline"
    IMPORTANCE = "importance"
    ALLOCATION = "allocation"
    SURGERY = "surgery"
    FINETUNE = "finetune"
    EXPORT = "export"
    TIMING = "timing"
    DONE = "done"


# A parent job in one of these stages has finished its search: its helpers stop.
SEARCH_OVER_STAGES: frozenset[str] = frozenset({Stage.SURGERY, Stage.FINETUNE, Stage.EXPORT, Stage.DONE})

# Share of the whole run each pipeline stage covers (measured on small CIFAR nets: fine-tuning
# dominates real jobs). Stages not listed (e.g. latency_table) keep the progress where it is.
STAGE_SPANS: dict[str, tuple[float, float]] = {
    Stage.INTAKE: (0.0, 0.03),
    Stage.BASELINE: (0.03, 0.08),
    Stage.IMPORTANCE: (0.08, 0.18),
    Stage.ALLOCATION: (0.18, 0.25),
    Stage.SURGERY: (0.25, 0.3),
    Stage.FINETUNE: (0.3, 0.85),
    Stage.EXPORT: (0.85, 0.93),
    Stage.TIMING: (0.93, 0.99),
    Stage.DONE: (0.99, 1.0),
}


def overall_progress(stage: str, fraction: float, previous: float) -> float:
    """Progress 0–1 of the whole job; never goes backwards within an attempt."""
    span = STAGE_SPANS.get(stage)
    if span is None:
        return previous
    start, end = span
    fraction = min(max(fraction, 0.0), 1.0)
    return max(previous, start + (end - start) * fraction)


@dataclass(frozen=True, kw_only=True)
class Artifact:
    """One published output file of a job."""

    name: str
    path: str  #: relative to the data dir
    size: int
    sha256: str


@dataclass(frozen=True, kw_only=True)
class Job:
    """A snapshot of one job row; stores hand out copies, never live rows."""

    id: str
    owner: str
    status: JobStatus
    spec: dict[str, Any]  #: what the caller asked for (names, budget, finetune)
    kind: JobKind = JobKind.PRUNE
    parent_id: str | None = None  #: a search helper's job
    inputs: dict[str, Any]  #: uploaded files: {field: {path, size, sha256, filename}}
    stage: str | None = None
    progress: float = 0.0
    error_code: str | None = None
    error: str | None = None
    result: dict[str, Any] | None = None
    attempt: int = 0
    max_attempts: int = 3
    worker_id: str | None = None
    lease_until: float | None = None
    cancel_requested: bool = False
    run_after: float = 0.0
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    idempotency_key: str | None = None  #: the submitter's Idempotency-Key, unique per owner
    request_sha256: str | None = None  #: fingerprint of the submission, for checking a replay of that key
    stored_bytes: int = 0  #: what the job keeps on disk: its inputs, then its artifacts too
    stage_started_at: float | None = None  #: when the current stage began (this attempt)
    artifacts: tuple[Artifact, ...] = field(default=())

    @classmethod
    def from_row(cls, row: Any, artifacts: tuple[Artifact, ...] = ()) -> Job:
        names = {f.name for f in fields(cls)} - {"artifacts", "status", "kind"}
        values = {name: getattr(row, name) for name in names}
        return cls(status=JobStatus(row.status), kind=JobKind(row.kind), artifacts=artifacts, **values)

    def evolve(self, **changes: Any) -> Job:
        return replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class NewJob:
    """What the API hands the store to queue a job."""

    id: str
    owner: str
    spec: dict[str, Any]
    inputs: dict[str, Any]
    max_attempts: int
    search_helpers: int = 0  #: helper rows to queue with it (evolution searches spread over workers)
    idempotency_key: str | None = None
    request_sha256: str | None = None
    stored_bytes: int = 0  #: the inputs' bytes


@dataclass(frozen=True, kw_only=True)
class Quota:
    """Per-owner caps checked when a job is queued (0: none)."""

    max_queued: int = 0  #: the owner's jobs waiting to run
    max_stored_bytes: int = 0  #: what the owner's jobs keep on disk, this one included


@dataclass(frozen=True, kw_only=True)
class Usage:
    """An owner's jobs: waiting, running, and bytes kept on disk."""

    queued: int
    running: int
    stored_bytes: int
