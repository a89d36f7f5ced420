"""The JobStore port: what the API and the workers need from persistence.

Every worker-side write is *fenced*: it names the (attempt, worker_id) it holds and affects
nothing (returns False/None) when that lease is gone, so a worker that was paused past its
lease can never overwrite the outcome of a newer attempt. Implementations return copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from api.jobs.model import Artifact, Job, JobStatus, NewJob


@dataclass(frozen=True, kw_only=True)
class Lease:
    """Who holds a running job; the fencing token of every worker write."""

    job_id: str
    attempt: int
    worker_id: str


class KeyTaken(Exception):
    """``create``: the owner already has a job under this Idempotency-Key (perhaps queued a moment ago)."""

    def __init__(self, earlier: Job) -> None:
        super().__init__(f"job {earlier.id} holds Idempotency-Key {earlier.idempotency_key!r}")
        self.earlier = earlier


class JobStore(Protocol):
    def create(self, job: NewJob) -> Job: ...
    def by_key(self, owner: str, idempotency_key: str) -> Job | None: ...
    def get(self, job_id: str, owner: str | None = None) -> Job | None: ...
    def list(self, owner: str, *, limit: int, offset: int) -> tuple[list[Job], int]: ...
    def cancel(self, job_id: str, owner: str) -> Job | None: ...
    def claim(self, worker_id: str, lease_s: float) -> Job | None: ...
    def heartbeat(self, lease: Lease, lease_s: float) -> Job | None: ...
    def advance(self, lease: Lease, stage: str, progress: float) -> bool: ...
    def complete(self, lease: Lease, result: dict[str, Any], artifacts: list[Artifact]) -> bool: ...
    def finish(self, lease: Lease, status: JobStatus, code: str | None, error: str | None) -> bool: ...
    def retry(self, lease: Lease, delay_s: float, code: str, error: str, *, count_attempt: bool = True) -> bool: ...
    def requeue_expired(self) -> list[tuple[str, JobStatus]]: ...
    def counts(self) -> dict[str, int]: ...
    def durations(self) -> list[float]: ...
