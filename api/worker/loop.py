"""The worker process: N slots, each claiming a job, running it in a child, heart-beating.

Per job: claim (lease) → fresh attempt dir → child process → relay progress, heartbeat every
``heartbeat_s`` (a lost lease kills the child at once: someone else owns the job now), stop
the child on a cancel request or at ``max_job_s`` → settle: publish + fenced completion,
retry with backoff, or fail. A reaper re-queues jobs whose lease expired (their worker died).
SIGTERM: stop claiming, stop the children, give the jobs back without counting the attempt;
a second SIGTERM exits at once (the lease takes care of the rest).

A search helper row (``JobKind.SEARCH``) runs only while its lead job is running its search:
queued behind a queued lead it is given back (attempt not counted); it is stopped when the
lead moves past allocation, finishes or is requeued, and it publishes nothing (its trials are
in the shared Optuna study), completing with how many trials it added.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import random
import shutil
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError

from api.artifacts import ArtifactStore
from api.jobs import (
    SEARCH_OVER_STAGES,
    Job,
    JobKind,
    JobStatus,
    JobStore,
    Lease,
    Outcome,
    RetryStrategy,
    overall_progress,
)
from api.settings import Settings
from api.worker.executors import ChildHandle, ForkserverExecutor

log = logging.getLogger(__name__)
PROGRESS_WRITE_S = 1.0


@dataclass(frozen=True)
class Ending:
    """How supervision ended: done | cancelled | shutdown | lost | failed (with an Outcome).

    A search helper ends "done" with its ``result`` even when it was stopped; ``stopped`` says why.
    """

    kind: str
    outcome: Outcome | None = None
    result: dict[str, Any] | None = None
    stopped: str = ""


class Worker:
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

    def run(self) -> None:
        """Block until stopped; installs SIGTERM/SIGINT handlers when on the main thread."""
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                signal.signal(sig, self._on_signal)
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
        except OperationalError as exc:
            log.warning("reaper: database busy: %s", exc)

    def _slot(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.store.claim(self.worker_id, self.settings.lease_s)
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

    def _payload(self, job: Job, out: Path) -> dict[str, Any]:
        paths = {name: str(self.artifacts.resolve(info["path"])) for name, info in job.inputs.items()}
        s = self.settings
        return {
            "job_id": job.id, "spec": job.spec, "data": paths.get("data", "digits"), "weights": paths.get("weights"),
            "model": paths.get("onnx"), "out_dir": str(out), "checkpoint_dir": str(self.artifacts.checkpoint_dir(job.id)), "latency_repeats": s.latency_repeats, "calibration_batches": s.calibration_batches,
            "threads": s.child_threads or self.default_threads, "device": s.device,
            "search_storage": s.search_storage_url,
            "data_label": job.inputs.get("data", {}).get("filename") or job.spec.get("dataset") or "digits",
            "role": job.kind.value, "label": f"helper-{job.id[:8]}", "helper_seed": int(job.id[:8], 16),
            "search_key": job.parent_id or job.id,  # the job's study, shared by its attempts and helpers
        }  # fmt: skip

    def _run(self, job: Job) -> None:
        lease = Lease(job_id=job.id, attempt=job.attempt, worker_id=self.worker_id)
        if job.kind is JobKind.SEARCH:
            lead = self._lead_state(job)
            if lead == "over":
                result = {"joined": False, "trials_added": 0, "reason": "the search had ended when this helper started"}
                self.store.complete(lease, result, [])
                return
            if lead == "waiting":
                self._give_back(lease, "waiting_for_lead", "the job this helper serves is not running yet")
                return
        out = self.artifacts.attempt_dir(job.id, f"attempt-{job.attempt}-{self.worker_id.rsplit('-', 1)[-1]}")
        log.info("job %s (%s): attempt %d/%d", job.id, job.kind.value, job.attempt, job.max_attempts)
        child = self.executor.start(self._payload(job, out))
        try:
            ending = self._supervise(job, lease, child)
            if ending.kind != "done":
                child.kill()  # before settling, so a stale child writes nothing more
            self._settle(job, lease, ending, out)
        finally:
            child.join(5)  # a finished child may take a moment to exit (torch teardown)
            if child.alive:
                child.kill()

    def _lead_state(self, helper: Job) -> str:
        """Where a search helper's lead job stands: "searching", "waiting" (queued) or "over"."""
        lead = self.store.get(helper.parent_id) if helper.parent_id else None
        if lead is None or lead.status.is_finished() or lead.stage in SEARCH_OVER_STAGES:
            return "over"
        return "waiting" if lead.status is JobStatus.QUEUED else "searching"

    def _give_back(self, lease: Lease, code: str, error: str) -> None:
        """Requeue without counting the attempt; a helper waits a heartbeat before its next try."""
        self.store.retry(lease, self.settings.heartbeat_s, code, error, count_attempt=False)

    def _supervise(self, job: Job, lease: Lease, child: ChildHandle) -> Ending:
        s = self.settings
        start = time.monotonic()
        next_beat = start + s.heartbeat_s
        stop_sent: float | None = None
        stop_reason = ""
        progress, stage, written = 0.0, "", 0.0
        while True:
            for event in child.events(0.2):
                if event[0] != "progress":
                    return self._final(event, stop_reason)
                progress, stage = overall_progress(event[1], event[2], progress), event[1]
            now = time.monotonic()
            if stage and now - written >= PROGRESS_WRITE_S:
                if not self._db(functools.partial(self.store.advance, lease, stage, progress), True):
                    return Ending("lost")
                written = now
            if not child.alive and child.closed:
                code = child.exitcode
                why = f"signal {signal.Signals(-code).name}" if code and code < 0 else f"exit code {code}"
                return Ending("failed", Outcome(code="oom_or_signal", message=f"the job process died ({why})", retryable=True))
            if now >= next_beat:
                next_beat = now + s.heartbeat_s
                current = self._db(lambda: self.store.heartbeat(lease, s.lease_s), "busy")
                if current is None:
                    return Ending("lost")
                if current != "busy" and current.cancel_requested and stop_sent is None:
                    stop_sent, stop_reason = now, "cancelled"
                    child.request_stop()
                if job.kind is JobKind.SEARCH and stop_sent is None:
                    lead = self._db(lambda: self._lead_state(job), "searching")
                    if lead != "searching":  # its search is over, or its lead was requeued
                        stop_sent, stop_reason = now, f"lead_{lead}"
                        child.request_stop()
            if self.stopping.is_set() and stop_sent is None:
                stop_sent, stop_reason = now, "shutdown"
                child.request_stop()
            if stop_sent is not None and now - stop_sent > s.cancel_grace_s:
                return Ending(stop_reason)
            if now - start > s.max_job_s:
                message = f"the job ran longer than the limit of {s.max_job_s:g} s"
                return Ending("failed", Outcome(code="timeout", message=message, retryable=False))

    def _final(self, event: tuple[Any, ...], stop_reason: str) -> Ending:
        if event[0] == "done":
            return Ending("done", result=event[1], stopped=stop_reason)
        if event[0] == "cancelled":
            return Ending("shutdown" if self.stopping.is_set() else "cancelled")
        _, code, retryable, message = event
        return Ending("failed", Outcome(code=code, message=message, retryable=bool(retryable)))

    def _db(self, call: Any, busy: Any) -> Any:
        """Run a store call; ``busy`` stands in for its answer while the database is locked."""
        try:
            return call()
        except OperationalError as exc:
            log.warning("database busy: %s", exc)
            return busy

    def _settle(self, job: Job, lease: Lease, ending: Ending, out: Path) -> None:
        if job.kind is JobKind.SEARCH and ending.kind == "done":
            shutil.rmtree(out, ignore_errors=True)  # a helper publishes nothing: its trials are in the study
            if ending.stopped == "cancelled":
                self.store.finish(lease, JobStatus.CANCELLED, "cancelled", "cancelled with the job it served")
            elif ending.stopped in ("shutdown", "lead_waiting"):
                self._give_back(lease, f"helper_{ending.stopped}", "stopped before the search ended; put back")
            else:
                self.store.complete(lease, ending.result or {}, [])
            return
        if ending.kind == "done":
            self._db(lambda: self.store.heartbeat(lease, self.settings.lease_s), None)  # publishing takes time
            final, artifacts = self.artifacts.publish(out)
            result = json.loads((final / "report.json").read_text())
            if not self.store.complete(lease, result, artifacts):
                log.warning("job %s: lease lost before completion; discarding attempt %d", job.id, job.attempt)
                shutil.rmtree(final, ignore_errors=True)
                return
            self.artifacts.drop_checkpoint(job.id)
            return
        shutil.rmtree(out, ignore_errors=True)
        if ending.kind == "cancelled":
            self.store.finish(lease, JobStatus.CANCELLED, "cancelled", "cancelled while running")
            self.artifacts.drop_checkpoint(job.id)
        elif ending.kind == "shutdown":
            self.store.retry(lease, 0.0, "worker_shutdown", "the worker shut down; the job was put back", count_attempt=False)
        elif ending.kind == "failed" and ending.outcome is not None:
            outcome = ending.outcome
            decision = self.retry.decide(outcome, job.attempt, job.max_attempts)
            if decision is None:
                self.store.finish(lease, JobStatus.FAILED, outcome.code, outcome.message)
                self.artifacts.drop_checkpoint(job.id)
            else:
                self.store.retry(lease, decision.retry_in_s, outcome.code, outcome.message)
            log.warning("job %s attempt %d: %s: %s", job.id, job.attempt, outcome.code, outcome.message)
