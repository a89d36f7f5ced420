"""What the worker does differently for each kind of job, one handler object per kind.

The worker's loop (claim, child, heartbeat, stop, kill) is the same for every job; a handler
decides what only its kind decides: whether to start a child at all (:meth:`JobHandler.admit`),
whether to stop a running one early (:meth:`JobHandler.stop_reason`), and what a finished
attempt leaves behind (:meth:`JobHandler.settle_done`). Attempts that did not finish (cancelled,
shut down, failed, lost) settle alike for every kind (:meth:`JobHandler.settle`).

- :class:`PruneHandler`: a user's job publishes its outputs and completes with its report.
- :class:`SearchHelperHandler`: a helper row (``JobKind.SEARCH``) runs only while its lead job is
  running its search: queued behind a queued lead it is given back (attempt not counted); it is
  stopped when the lead moves past allocation, finishes or is requeued, and it publishes nothing
  (its trials are in the shared Optuna study), completing with how many trials it added.
"""

from __future__ import annotations

import abc
import enum
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from sqlalchemy.exc import OperationalError

from api.artifacts import ArtifactStore
from api.errors import DISK_FULL
from api.jobs import SEARCH_OVER_STAGES, Job, JobKind, JobStatus, JobStore, Lease, Outcome, RetryStrategy
from api.settings import Settings

log = logging.getLogger(__name__)

T = TypeVar("T")
D = TypeVar("D")


def tolerate_busy(call: Callable[[], T], busy: D) -> T | D:
    """Run a store call; ``busy`` stands in for its answer while the database is locked."""
    try:
        return call()
    except OperationalError as exc:
        log.warning("database busy: %s", exc)
        return busy


class StopReason(str, enum.Enum):
    """Why the worker asked a running child to stop (the value shows in a helper's error code)."""

    CANCELLED = "cancelled"  #: the user cancelled the job
    SHUTDOWN = "shutdown"  #: the worker is stopping
    LEAD_WAITING = "lead_waiting"  #: a helper's lead job was put back in the queue
    LEAD_OVER = "lead_over"  #: a helper's lead job has finished its search


class EndingKind(enum.Enum):
    """How the supervision of one child ended."""

    DONE = "done"  #: the child finished (a helper also when it was stopped: ``Ending.stopped`` says why)
    CANCELLED = "cancelled"  #: the child stopped at a cancel, or outlived its grace after one
    SHUTDOWN = "shutdown"  #: the worker is stopping: the job goes back to the queue
    LOST = "lost"  #: someone else holds the lease now: nothing more is written
    ABANDONED = "abandoned"  #: a helper outlived its grace after its lead moved on: killed, nothing written
    FAILED = "failed"  #: the attempt failed (``Ending.outcome``)


_UNANSWERED_STOP = {
    StopReason.CANCELLED: EndingKind.CANCELLED,
    StopReason.SHUTDOWN: EndingKind.SHUTDOWN,
    StopReason.LEAD_WAITING: EndingKind.ABANDONED,
    StopReason.LEAD_OVER: EndingKind.ABANDONED,
}


def unanswered(reason: StopReason) -> EndingKind:
    """How supervision ends when a child did not stop within the grace period after ``reason``."""
    return _UNANSWERED_STOP[reason]


@dataclass(frozen=True)
class Ending:
    """How supervision ended; a failure carries its ``outcome``, a helper's finish its ``result``."""

    kind: EndingKind
    outcome: Outcome | None = None
    result: dict[str, Any] | None = None
    stopped: StopReason | None = None  #: the stop request the child answered, if any


class LeadState(str, enum.Enum):
    """Where a search helper's lead job stands."""

    SEARCHING = "searching"  #: running, before or in its search: the helper can join
    WAITING = "waiting"  #: queued (not started yet, or put back): the helper waits too
    OVER = "over"  #: finished, gone or past its search: the helper has nothing to join


@dataclass(frozen=True, kw_only=True)
class WorkerContext:
    """What handlers act on: the worker's settings, store, artifacts and retry strategy."""

    settings: Settings
    store: JobStore
    artifacts: ArtifactStore
    retry: RetryStrategy


class JobHandler(abc.ABC):
    """One kind of job's decisions; the worker's loop does the rest."""

    kind: ClassVar[JobKind]

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def admit(self, job: Job, lease: Lease) -> bool:
        """Before any child starts: False when the job was settled (or given back) without one."""
        return True

    def stop_reason(self, job: Job) -> StopReason | None:
        """Asked at each heartbeat while no stop was sent: a reason to stop the child now, or None."""
        return None

    @abc.abstractmethod
    def settle_done(self, job: Job, lease: Lease, ending: Ending, out: Path) -> None:
        """Write what a finished attempt (``EndingKind.DONE``) leaves behind."""

    def settle(self, job: Job, lease: Lease, ending: Ending, out: Path) -> None:
        """Write the attempt's end to the store (fenced by ``lease``)."""
        if ending.kind is EndingKind.DONE:
            self.settle_done(job, lease, ending, out)
            return
        store, artifacts = self.ctx.store, self.ctx.artifacts
        shutil.rmtree(out, ignore_errors=True)
        if ending.kind is EndingKind.CANCELLED:
            store.finish(lease, JobStatus.CANCELLED, "cancelled", "cancelled while running")
            artifacts.drop_checkpoint(job.id)
        elif ending.kind is EndingKind.SHUTDOWN:
            store.retry(
                lease, 0.0, "worker_shutdown", "the worker shut down; the job was put back", count_attempt=False
            )
        elif ending.kind is EndingKind.FAILED and ending.outcome is not None:
            self._settle_failure(job, lease, ending.outcome)
        # LOST, ABANDONED: nothing to write; the lease decides what happens to the row

    def _settle_failure(self, job: Job, lease: Lease, outcome: Outcome) -> None:
        decision = self.ctx.retry.decide(outcome, job.attempt, job.max_attempts)
        if decision is None:
            self.ctx.store.finish(lease, JobStatus.FAILED, outcome.code, outcome.message)
            self.ctx.artifacts.drop_checkpoint(job.id)
        else:
            self.ctx.store.retry(lease, decision.retry_in_s, outcome.code, outcome.message)
        log.warning("job %s attempt %d: %s: %s", job.id, job.attempt, outcome.code, outcome.message)


class PruneHandler(JobHandler):
    """A user's job: a finished attempt publishes its outputs and completes with its report."""

    kind = JobKind.PRUNE

    def settle_done(self, job: Job, lease: Lease, ending: Ending, out: Path) -> None:
        store, artifacts = self.ctx.store, self.ctx.artifacts
        tolerate_busy(lambda: store.heartbeat(lease, self.ctx.settings.lease_s), None)  # publishing takes time
        try:
            final, published = artifacts.publish(out)
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            shutil.rmtree(out, ignore_errors=True)  # a full disk is not the job's fault: try again later
            full = Outcome(code="storage_full", message="the server's disk is full; the job will be retried",
                           retryable=True)  # fmt: skip
            self._settle_failure(job, lease, full)
            return
        result = json.loads((final / "report.json").read_text())
        if not store.complete(lease, result, published):
            log.warning("job %s: lease lost before completion; discarding attempt %d", job.id, job.attempt)
            shutil.rmtree(final, ignore_errors=True)
            return
        artifacts.drop_checkpoint(job.id)


class SearchHelperHandler(JobHandler):
    """A helper of an evolution search: runs only while its lead searches, publishes nothing."""

    kind = JobKind.SEARCH

    def lead_state(self, helper: Job) -> LeadState:
        lead = self.ctx.store.get(helper.parent_id) if helper.parent_id else None
        if lead is None or lead.status.is_finished() or lead.stage in SEARCH_OVER_STAGES:
            return LeadState.OVER
        return LeadState.WAITING if lead.status is JobStatus.QUEUED else LeadState.SEARCHING

    def admit(self, job: Job, lease: Lease) -> bool:
        lead = self.lead_state(job)
        if lead is LeadState.OVER:
            result = {"joined": False, "trials_added": 0, "reason": "the search had ended when this helper started"}
            self.ctx.store.complete(lease, result, [])
            return False
        if lead is LeadState.WAITING:
            self._give_back(lease, "waiting_for_lead", "the job this helper serves is not running yet")
            return False
        return True

    def stop_reason(self, job: Job) -> StopReason | None:
        lead = tolerate_busy(lambda: self.lead_state(job), LeadState.SEARCHING)
        if lead is LeadState.OVER:
            return StopReason.LEAD_OVER
        if lead is LeadState.WAITING:  # its lead was requeued
            return StopReason.LEAD_WAITING
        return None

    def settle_done(self, job: Job, lease: Lease, ending: Ending, out: Path) -> None:
        shutil.rmtree(out, ignore_errors=True)  # a helper publishes nothing: its trials are in the study
        if ending.stopped is StopReason.CANCELLED:
            self.ctx.store.finish(lease, JobStatus.CANCELLED, "cancelled", "cancelled with the job it served")
        elif ending.stopped in (StopReason.SHUTDOWN, StopReason.LEAD_WAITING):
            self._give_back(lease, f"helper_{ending.stopped.value}", "stopped before the search ended; put back")
        else:
            self.ctx.store.complete(lease, ending.result or {}, [])

    def _give_back(self, lease: Lease, code: str, error: str) -> None:
        """Requeue without counting the attempt; a helper waits a heartbeat before its next try."""
        self.ctx.store.retry(lease, self.ctx.settings.heartbeat_s, code, error, count_attempt=False)


def handlers_for(ctx: WorkerContext) -> dict[JobKind, JobHandler]:
    """One handler per job kind."""
    handlers: list[JobHandler] = [PruneHandler(ctx), SearchHelperHandler(ctx)]
    return {handler.kind: handler for handler in handlers}
