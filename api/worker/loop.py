"""The worker process: N slots, each claiming a job, running it in a child, heart-beating.

Per job: claim (lease) → the job kind's handler admits it → fresh attempt dir → child process
→ relay progress, heartbeat every ``heartbeat_s`` (a lost lease kills the child at once: someone
else owns the job now), stop the child on a cancel request, when the handler asks (a search
helper whose lead moved on) or at ``max_job_s`` → the handler settles: publish + fenced
completion, retry with backoff, or fail. A reaper re-queues jobs whose lease expired (their
worker died). SIGTERM: stop claiming, stop the children, give the jobs back without counting
the attempt; a second SIGTERM exits at once (the lease takes care of the rest).

What differs per job kind (a user's job, an evolution search helper) lives in
:mod:`api.worker.handlers`; the messages exchanged with the child in :mod:`api.worker.messages`.
"""

from __future__ import annotations

import functools
import logging
import os
import random
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, assert_never

from sqlalchemy.exc import OperationalError

from api.artifacts import ArtifactStore
from api.jobs import Job, JobStore, Lease, Outcome, RetryStrategy, overall_progress
from api.settings import Settings
from api.worker.executors import ChildHandle, ForkserverExecutor
from api.worker.handlers import (
    Ending,
    EndingKind,
    JobHandler,
    StopReason,
    WorkerContext,
    handlers_for,
    tolerate_busy,
    unanswered,
)
from api.worker.messages import Attempt, Cancelled, Done, Failed, Final, Progress

log = logging.getLogger(__name__)
PROGRESS_WRITE_S = 1.0


@dataclass
class _Watch:
    """The supervision state of one running child."""

    start: float
    next_beat: float
    stop_sent: float | None = None  #: when the child was asked to stop
    stop_reason: StopReason | None = None
    progress: float = 0.0
    stage: str = ""
    written: float = 0.0  #: when progress was last written to the store

    def stop(self, child: ChildHandle, now: float, reason: StopReason) -> None:
        self.stop_sent, self.stop_reason = now, reason
        child.request_stop()


class Worker:
    """Claims jobs and runs each in a child process; ``concurrency`` slots at once (threads)."""

    def __init__(self, settings: Settings, store: JobStore, artifacts: ArtifactStore, *, concurrency: int = 1) -> None:
        self.settings, self.store, self.artifacts = settings, store, artifacts
        self.concurrency = concurrency
        # each slot's child gets its share of the cores: N children at torch's default (all
        # cores each) oversubscribe them, and OpenMP's barriers then stall latency and training
        self.default_threads = max(1, len(os.sched_getaffinity(0)) // concurrency)
        self.executor = ForkserverExecutor()
        self.retry = RetryStrategy(base_s=settings.retry_backoff_s)
        self.worker_id = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stopping = threading.Event()
        self._next_retention = 0.0  # the first reaper round sweeps
        self.handlers = handlers_for(
            WorkerContext(settings=settings, store=store, artifacts=artifacts, retry=self.retry)
        )

    def run(self) -> None:
        """Block until stopped; installs SIGTERM/SIGINT handlers when on the main thread."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
        if swept := self.artifacts.sweep_scratch(self.store.not_running):
            log.warning("removed the scratch files of %d jobs that are not running", swept)
        self.executor.warm_up()
        slots = [threading.Thread(target=self._slot, name=f"slot-{i}", daemon=True) for i in range(self.concurrency)]
        for slot in slots:
            slot.start()
        log.info("worker %s: %d slot(s)", self.worker_id, self.concurrency)
        while not self.stopping.wait(self.settings.reaper_s * random.uniform(0.8, 1.2)):
            self._reap()
        for slot in slots:
            slot.join()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.stopping.is_set():
            os._exit(128 + signum)  # second signal: now; children die with us (PDEATHSIG)
        log.info("worker %s: stopping (signal %d)", self.worker_id, signum)
        self.stopping.set()

    def _reap(self) -> None:
        try:
            for job_id, status in self.store.requeue_expired():
                log.warning("job %s: lease expired -> %s", job_id, status.value)
            if time.monotonic() >= self._next_retention:
                self._next_retention = time.monotonic() + self.settings.retention_sweep_s
                self.expire()
        except OperationalError as exc:
            log.warning("reaper: database busy: %s", exc)

    def expire(self) -> int:
        """Retention: delete jobs finished more than ``retention_days`` ago, rows first, then files
        (a crash in between leaves row-less dirs, which the API's orphan sweep removes)."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        deleted = 0
        while ids := self.store.expire(days * 86400.0):
            for job_id in ids:
                self.artifacts.remove_job(job_id)
            deleted += len(ids)
        if deleted:
            log.info("retention: deleted %d jobs finished over %g days ago", deleted, days)
        return deleted

    def _slot(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.store.claim(self.worker_id, self.settings.lease_s, self.settings.max_running_per_owner)
            except OperationalError as exc:
                log.warning("claim: database busy: %s", exc)
                job = None
            if job is None:
                self.stopping.wait(self.settings.poll_s * random.uniform(0.5, 1.5))
                continue
            try:
                self._run(job)
            except Exception:  # never let one job kill the slot; the lease will expire
                log.exception("job %s: worker error", job.id)

    def _attempt(self, job: Job, out: Path, scratch: Path) -> Attempt:
        paths = {name: str(self.artifacts.resolve(info["path"])) for name, info in job.inputs.items()}
        s = self.settings
        return Attempt(
            job_id=job.id, kind=job.kind, spec=job.spec, data=paths.get("data", "digits"), weights=paths.get("weights"),
            model=paths.get("onnx"), out_dir=str(out), checkpoint_dir=str(self.artifacts.checkpoint_dir(job.id)),
            latency_repeats=s.latency_repeats, calibration_batches=s.calibration_batches,
            threads=s.child_threads or self.default_threads, device=s.device,
            search_storage=s.search_storage_url,
            data_label=job.inputs.get("data", {}).get("filename") or job.spec.get("dataset") or "digits",
            label=f"helper-{job.id[:8]}", helper_seed=int(job.id[:8], 16),
            search_key=job.parent_id or job.id,  # the job's study, shared by its attempts and helpers
            memory_bytes=s.child_memory_bytes, cpu_s=self._cpu_cap(), scratch_dir=str(scratch),
        )  # fmt: skip

    def _cpu_cap(self) -> float:
        """CPU seconds an attempt may use: the setting, else its wall-clock limit times its threads."""
        s = self.settings
        return s.max_job_cpu_s or s.max_job_s * (s.child_threads or self.default_threads)

    def _run(self, job: Job) -> None:
        lease = Lease(job_id=job.id, attempt=job.attempt, worker_id=self.worker_id)
        handler = self.handlers[job.kind]
        if not handler.admit(job, lease):
            return
        tag = f"attempt-{job.attempt}-{self.worker_id.rsplit('-', 1)[-1]}"
        out = self.artifacts.attempt_dir(job.id, tag)
        scratch = self.artifacts.scratch_dir(job.id, tag)
        log.info("job %s (%s): attempt %d/%d", job.id, job.kind.value, job.attempt, job.max_attempts)
        child = self.executor.start(self._attempt(job, out, scratch))
        try:
            ending = self._supervise(job, lease, child, handler)
            if ending.kind is not EndingKind.DONE:
                child.kill()  # before settling, so a stale child writes nothing more
            handler.settle(job, lease, ending, out)
        finally:
            child.join(5)  # a finished child may take a moment to exit (torch teardown)
            if child.alive:
                child.kill()
            self.artifacts.drop_scratch(job.id, tag)

    def _supervise(self, job: Job, lease: Lease, child: ChildHandle, handler: JobHandler) -> Ending:
        s = self.settings
        start = time.monotonic()
        watch = _Watch(start=start, next_beat=start + s.heartbeat_s)
        while True:
            for event in child.events(0.2):
                if not isinstance(event, Progress):
                    return self._final(event, watch.stop_reason)
                watch.progress, watch.stage = overall_progress(event.stage, event.fraction, watch.progress), event.stage
            now = time.monotonic()
            if watch.stage and now - watch.written >= PROGRESS_WRITE_S:
                if not tolerate_busy(functools.partial(self.store.advance, lease, watch.stage, watch.progress), True):
                    return Ending(EndingKind.LOST)
                watch.written = now
            if not child.alive and child.closed:
                return _died(child.exitcode, self._cpu_cap())
            if now >= watch.next_beat:
                watch.next_beat = now + s.heartbeat_s
                if not self._heartbeat(job, lease, handler, child, watch, now):
                    return Ending(EndingKind.LOST)
            if self.stopping.is_set() and watch.stop_sent is None:
                watch.stop(child, now, StopReason.SHUTDOWN)
            if (
                watch.stop_sent is not None
                and watch.stop_reason is not None
                and now - watch.stop_sent > s.cancel_grace_s
            ):
                return Ending(unanswered(watch.stop_reason))
            if now - start > s.max_job_s:
                message = f"the job ran longer than the limit of {s.max_job_s:g} s"
                return Ending(EndingKind.FAILED, Outcome(code="timeout", message=message, retryable=False))

    def _heartbeat(
        self, job: Job, lease: Lease, handler: JobHandler, child: ChildHandle, watch: _Watch, now: float
    ) -> bool:
        """Extend the lease; stop the child on a cancel request or when the handler asks. False: the lease is lost."""
        try:
            current = self.store.heartbeat(lease, self.settings.lease_s)
        except OperationalError as exc:  # busy: keep going, the next beat will tell
            log.warning("database busy: %s", exc)
        else:
            if current is None:
                return False
            if current.cancel_requested and watch.stop_sent is None:
                watch.stop(child, now, StopReason.CANCELLED)
        if watch.stop_sent is None and (reason := handler.stop_reason(job)) is not None:
            watch.stop(child, now, reason)
        return True

    def _final(self, event: Final, stop_reason: StopReason | None) -> Ending:
        match event:
            case Done(result):
                return Ending(EndingKind.DONE, result=result, stopped=stop_reason)
            case Cancelled():
                return Ending(EndingKind.SHUTDOWN if self.stopping.is_set() else EndingKind.CANCELLED)
            case Failed(code, retryable, message):
                return Ending(EndingKind.FAILED, Outcome(code=code, message=message, retryable=bool(retryable)))
            case _:
                assert_never(event)


def _died(code: int | None, cpu_s: float = 0.0) -> Ending:
    """The child exited without a final message: killed (OOM, a signal), over its CPU-time cap, or crashed."""
    if code == -signal.SIGXCPU:
        message = f"the job used more than its {cpu_s:g} CPU seconds"
        return Ending(EndingKind.FAILED, Outcome(code="cpu_limit", message=message, retryable=False))
    why = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
    return Ending(
        EndingKind.FAILED, Outcome(code="oom_or_signal", message=f"the job process died ({why})", retryable=True)
    )
