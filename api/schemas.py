"""Response models: the public contract of the HTTP API."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from api.errors import scrub_paths
from api.jobs.model import STAGE_SPANS, Artifact, Job, JobStatus, Stage
from autoprune.report.schema import Report
from autoprune.spec import FinetuneConfig


def _when(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)


class ErrorBody(BaseModel):
    error: str = Field(description="machine-readable code, e.g. bad_budget, unknown_name, too_large")
    detail: Any = Field(description="what was wrong, in words")


class ArtifactPublic(BaseModel):
    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactPublic:
        return cls(name=artifact.name, size=artifact.size, sha256=artifact.sha256)


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


class InputPublic(BaseModel):
    filename: str
    size: int
    sha256: str


class JobPublic(BaseModel):
    id: str
    status: JobStatus
    stage: str | None = None
    progress: float = Field(ge=0.0, le=1.0)
    eta_seconds: float | None = Field(None, description="estimated seconds left while running, once progress allows")
    attempt: int
    max_attempts: int
    cancel_requested: bool
    error: str | None = Field(None, description="error code of a failed/cancelled job, or of the last failed attempt")
    error_detail: str | None = None
    spec: dict[str, Any]
    inputs: dict[str, InputPublic]
    result: Report | dict[str, Any] | None = Field(
        None, description="report.json of a succeeded job (a search helper's: its summary)"
    )
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        return cls(
            id=job.id, status=job.status, stage=job.stage, progress=round(job.progress, 4), eta_seconds=_eta(job),
            attempt=job.attempt, max_attempts=job.max_attempts, cancel_requested=job.cancel_requested,
            error=job.error_code, error_detail=None if job.error is None else scrub_paths(job.error), spec=job.spec,
            inputs={k: InputPublic(filename=v["filename"], size=v["size"], sha256=v["sha256"]) for k, v in job.inputs.items()},
            result=job.result, created_at=_when(job.created_at), started_at=_when(job.started_at),
            finished_at=_when(job.finished_at),
        )  # fmt: skip


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="the caller's jobs in total")


class Health(BaseModel):
    status: str
    database: str


def _epochs(job: Job) -> int:
    finetune = job.spec.get("finetune")
    epochs = finetune.get("epochs") if isinstance(finetune, dict) else None
    return int(epochs) if isinstance(epochs, int) else int(FinetuneConfig.model_fields["epochs"].default)


def _eta(job: Job) -> float | None:
    """Seconds left, or None while unknown.

    Fine-tuning takes most of a job's time, in proportion to the epochs asked for, so its pace
    decides: during it, the time it has taken per fraction of its steps extrapolates its rest
    (plus the stages after it, priced from the stages before it); before it starts the ETA is
    unknown for a job that fine-tunes (a linear guess from the fast first stages said 37 s for a
    six-hour job); without fine-tuning, and after it, progress is extrapolated linearly.
    """
    if job.status is not JobStatus.RUNNING or job.started_at is None:
        return None
    now = time.time()
    low, high = STAGE_SPANS[Stage.FINETUNE]
    if job.stage == Stage.FINETUNE and job.stage_started_at is not None:
        done = (job.progress - low) / (high - low)
        if done < 0.01:
            return None
        left = max(0.0, now - job.stage_started_at) * (1.0 - done) / done
        after = max(0.0, job.stage_started_at - job.started_at) * (1.0 - high) / low
        return round(left + after, 1)
    if job.progress < 0.05 or (job.progress < low and _epochs(job) > 0):
        return None
    elapsed = max(0.0, now - job.started_at)
    return round(elapsed * (1.0 - job.progress) / job.progress, 1)
