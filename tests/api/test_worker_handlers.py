"""The worker's per-kind decisions, without processes: how each ending settles, what a child's final
message becomes, and the strings that reach the job row (codes, stages) staying as they were."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api.jobs import SEARCH_OVER_STAGES, Job, JobKind, JobStatus, Lease, Outcome, RetryStrategy, Stage, overall_progress
from api.settings import Settings
from api.worker.handlers import (
    Ending,
    EndingKind,
    LeadState,
    PruneHandler,
    SearchHelperHandler,
    StopReason,
    WorkerContext,
    handlers_for,
    unanswered,
)


class Recorder:
    """A JobStore stand-in that records the worker-side writes; ``get`` serves one lead job."""

    def __init__(self, lead: Job | None = None) -> None:
        self.lead, self.calls = lead, []

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        return self.lead if self.lead is not None and self.lead.id == job_id else None

    def complete(self, lease: Lease, result: dict[str, Any], artifacts: list[Any]) -> bool:
        self.calls.append(("complete", result))
        return True

    def finish(self, lease: Lease, status: JobStatus, code: str | None, error: str | None) -> bool:
        self.calls.append(("finish", status.value, code))
        return True

    def retry(self, lease: Lease, delay_s: float, code: str, error: str, *, count_attempt: bool = True) -> bool:
        self.calls.append(("retry", code, count_attempt))
        return True


class NoArtifacts:
    def drop_checkpoint(self, job_id: str) -> None:
        pass


def job(kind: JobKind = JobKind.PRUNE, **changes: Any) -> Job:
    values: dict[str, Any] = dict(id="j" * 32, owner="o", status=JobStatus.RUNNING, spec={}, inputs={}, attempt=1)
    return Job(kind=kind, **{**values, **changes})


LEASE = Lease(job_id="j" * 32, attempt=1, worker_id="w")


def context(store: Recorder, tmp_path: Path) -> WorkerContext:
    settings = Settings(data_dir=tmp_path)
    return WorkerContext(settings=settings, store=store, artifacts=NoArtifacts(), retry=RetryStrategy())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stopped", "call"),
    [
        (None, ("complete", {"trials_added": 3})),
        (StopReason.LEAD_OVER, ("complete", {"trials_added": 3})),
        (StopReason.CANCELLED, ("finish", "cancelled", "cancelled")),
        (StopReason.SHUTDOWN, ("retry", "helper_shutdown", False)),
        (StopReason.LEAD_WAITING, ("retry", "helper_lead_waiting", False)),
    ],
)
def test_a_finished_helper_settles_by_why_it_stopped(tmp_path, stopped, call):
    store = Recorder()
    helper = SearchHelperHandler(context(store, tmp_path))
    helper.settle(
        job(JobKind.SEARCH),
        LEASE,
        Ending(EndingKind.DONE, result={"trials_added": 3}, stopped=stopped),
        tmp_path / "out",
    )
    assert store.calls == [call]


@pytest.mark.parametrize(
    ("ending", "call"),
    [
        (Ending(EndingKind.CANCELLED), ("finish", "cancelled", "cancelled")),
        (Ending(EndingKind.SHUTDOWN), ("retry", "worker_shutdown", False)),
        (
            Ending(EndingKind.FAILED, Outcome(code="internal", message="boom", retryable=True)),
            ("retry", "internal", True),
        ),
        (
            Ending(EndingKind.FAILED, Outcome(code="bad_model", message="no", retryable=False)),
            ("finish", "failed", "bad_model"),
        ),
        (Ending(EndingKind.LOST), None),
        (Ending(EndingKind.ABANDONED), None),
    ],
)
def test_an_unfinished_attempt_settles_alike_for_every_kind(tmp_path, ending, call):
    for handler_type, kind in ((PruneHandler, JobKind.PRUNE), (SearchHelperHandler, JobKind.SEARCH)):
        store = Recorder()
        handler_type(context(store, tmp_path)).settle(job(kind), LEASE, ending, tmp_path / "out")
        assert store.calls == ([call] if call else [])


@pytest.mark.parametrize(
    ("lead", "state", "admitted", "calls"),
    [
        (None, LeadState.OVER, False, [("complete", None)]),
        (dict(status=JobStatus.QUEUED), LeadState.WAITING, False, [("retry", "waiting_for_lead", False)]),
        (dict(status=JobStatus.RUNNING, stage="allocation"), LeadState.SEARCHING, True, []),
        (dict(status=JobStatus.RUNNING, stage="finetune"), LeadState.OVER, False, [("complete", None)]),
        (dict(status=JobStatus.SUCCEEDED, stage="done"), LeadState.OVER, False, [("complete", None)]),
    ],
)
def test_a_helper_runs_only_while_its_lead_searches(tmp_path, lead, state, admitted, calls):
    store = Recorder(job(id="l" * 32, **lead) if lead is not None else None)
    handler = SearchHelperHandler(context(store, tmp_path))
    helper = job(JobKind.SEARCH, parent_id="l" * 32)
    assert handler.lead_state(helper) is state
    assert handler.admit(helper, LEASE) is admitted
    assert [c if c[0] != "complete" else ("complete", None) for c in store.calls] == calls
    expected_stop = {LeadState.OVER: StopReason.LEAD_OVER, LeadState.WAITING: StopReason.LEAD_WAITING}.get(state)
    assert handler.stop_reason(helper) is expected_stop


def test_the_strings_that_reach_the_job_row_are_unchanged(tmp_path):
    assert {kind: type(h).__name__ for kind, h in handlers_for(context(Recorder(), tmp_path)).items()} == {
        JobKind.PRUNE: "PruneHandler",
        JobKind.SEARCH: "SearchHelperHandler",
    }
    assert SEARCH_OVER_STAGES == {"surgery", "finetune", "export", "done"}
    assert [s.value for s in Stage] == [
        "intake",
        "baseline",
        "importance",
        "allocation",
        "surgery",
        "finetune",
        "export",
        "timing",
        "done",
    ]
    assert overall_progress("finetune", 0.5, 0.0) == pytest.approx(0.575)
    assert overall_progress("latency_table", 0.5, 0.2) == 0.2  # unknown stages move nothing
    assert {unanswered(r) for r in (StopReason.LEAD_OVER, StopReason.LEAD_WAITING)} == {EndingKind.ABANDONED}
    assert (
        unanswered(StopReason.CANCELLED) is EndingKind.CANCELLED
        and unanswered(StopReason.SHUTDOWN) is EndingKind.SHUTDOWN
    )
