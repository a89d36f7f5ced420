"""One contract for the JobStore, run against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import replace

import pytest
import service_harness
from alembic.script import ScriptDirectory
from sqlalchemy import text

from api.db import make_engine, migrate
from api.db.migrate import alembic_config
from api.jobs import Artifact, JobKind, JobStatus, KeyTaken, Lease, NewJob, SqlJobStore

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
db_url = service_harness.db_url  # fixture
postgres = service_harness.postgres  # fixture


@pytest.fixture
def store(db_url: str) -> SqlJobStore:
    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    yield SqlJobStore(engine)
    engine.dispose()


def new(store: SqlJobStore, owner: str = "alice", max_attempts: int = 3) -> str:
    job_id = uuid.uuid4().hex
    store.create(NewJob(id=job_id, owner=owner, spec={"arch": "resnet20"}, inputs={}, max_attempts=max_attempts))
    return job_id


def lease_of(store: SqlJobStore, worker: str = "w1") -> Lease:
    job = store.claim(worker, 30)
    assert job is not None
    return Lease(job_id=job.id, attempt=job.attempt, worker_id=worker)


def expire(store: SqlJobStore, job_id: str) -> None:
    """Time travel: the lease ran out an hour ago."""
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE jobs SET lease_until = lease_until - 3600 WHERE id = :id"), {"id": job_id})


def test_create_get_and_owner_isolation(store):
    job_id = new(store)
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.attempt == 0 and job.owner == "alice"
    assert store.get(job_id, "alice") == job
    assert store.get(job_id, "bob") is None
    assert store.get(uuid.uuid4().hex) is None


def test_list_is_newest_first_paginated_and_per_owner(store):
    ids = [new(store) for _ in range(3)]
    new(store, owner="bob")
    page, total = store.list("alice", limit=2, offset=0)
    assert total == 3 and [j.id for j in page] == ids[::-1][:2]
    rest, _ = store.list("alice", limit=2, offset=2)
    assert [j.id for j in rest] == [ids[0]]


def test_claim_takes_the_oldest_once(store):
    first, second = new(store), new(store)
    a = store.claim("w1", 30)
    b = store.claim("w2", 30)
    assert (a.id, b.id) == (first, second)
    assert a.status is JobStatus.RUNNING and a.attempt == 1 and a.worker_id == "w1" and a.lease_until > time.time()
    assert store.claim("w3", 30) is None


def test_heartbeat_advance_and_finish_are_fenced(store):
    new(store)
    lease = lease_of(store)
    stale = Lease(job_id=lease.job_id, attempt=lease.attempt, worker_id="other")
    assert store.heartbeat(lease, 30) is not None
    assert store.heartbeat(stale, 30) is None
    assert store.advance(lease, "finetune", 0.5)
    assert not store.advance(stale, "export", 0.9)
    assert not store.finish(stale, JobStatus.FAILED, "x", "y")
    job = store.get(lease.job_id)
    assert (job.stage, job.progress, job.status) == ("finetune", 0.5, JobStatus.RUNNING)


def test_complete_records_artifacts_atomically(store):
    new(store)
    lease = lease_of(store)
    art = Artifact(name="report.json", path="jobs/x/attempt-1/report.json", size=10, sha256="0" * 64)
    assert store.complete(lease, {"flops_ratio": 0.5}, [art])
    job = store.get(lease.job_id)
    assert job.status is JobStatus.SUCCEEDED and job.progress == 1.0 and job.result == {"flops_ratio": 0.5}
    assert job.artifacts == (art,)
    assert not store.complete(lease, {"again": True}, [])  # finished: no second completion
    assert store.get(lease.job_id).result == {"flops_ratio": 0.5}


def test_a_stale_worker_cannot_overwrite_a_newer_attempt(store):
    new(store)
    old = lease_of(store, "A")
    expire(store, old.job_id)
    assert store.requeue_expired() == [(old.job_id, JobStatus.QUEUED)]
    new_lease = lease_of(store, "B")
    assert new_lease.attempt == 2
    assert store.heartbeat(old, 30) is None
    assert not store.complete(old, {"by": "A"}, [])
    assert store.complete(new_lease, {"by": "B"}, [])
    assert store.get(old.job_id).result == {"by": "B"}


def test_requeue_expired_fails_at_the_cap_and_honours_cancel(store):
    capped, cancelled = new(store, max_attempts=1), new(store)
    lease_a, lease_b = lease_of(store, "A"), lease_of(store, "B")
    store.cancel(cancelled, "alice")
    for job_id in (capped, cancelled):
        expire(store, job_id)
    assert sorted(store.requeue_expired()) == sorted([(capped, JobStatus.FAILED), (cancelled, JobStatus.CANCELLED)])
    assert store.get(capped).error_code == "lease_expired"
    assert store.requeue_expired() == []
    assert lease_a.job_id == capped and lease_b.job_id == cancelled


def test_retry_waits_for_run_after_and_can_give_the_attempt_back(store):
    job_id = new(store)
    lease = lease_of(store)
    assert store.retry(lease, 3600, "oom_or_signal", "killed")
    job = store.get(job_id)
    assert job.status is JobStatus.QUEUED and job.attempt == 1 and job.error_code == "oom_or_signal"
    assert store.claim("w2", 30) is None  # not before run_after
    other = new(store)
    lease2 = lease_of(store)
    assert lease2.job_id == other
    assert store.retry(lease2, 0, "worker_shutdown", "bye", count_attempt=False)
    assert store.get(other).attempt == 0


def test_cancel_queued_running_and_finished(store):
    queued, running = new(store), new(store)
    store.claim("w1", 30)  # takes `queued` (oldest)
    lease = lease_of(store)  # takes `running`
    assert store.get(queued).status is JobStatus.RUNNING
    fresh = new(store)
    assert store.cancel(fresh, "alice").status is JobStatus.CANCELLED
    assert store.cancel(fresh, "bob") is None
    job = store.cancel(running, "alice")
    assert job.status is JobStatus.RUNNING and job.cancel_requested
    assert store.heartbeat(lease, 30).cancel_requested
    assert store.finish(lease, JobStatus.CANCELLED, "cancelled", "stopped")
    assert store.cancel(running, "alice").status is JobStatus.CANCELLED


def test_counts_and_durations(store):
    new(store)
    new(store)
    lease = lease_of(store)
    store.complete(lease, {}, [])
    assert store.counts() == {"queued": 1, "succeeded": 1}
    (duration,) = store.durations()
    assert 0 <= duration < 60


def test_evolution_studies_live_beside_the_jobs_without_touching_their_schema(store, db_url, tmp_path):
    """Optuna versions its tables with Alembic's default table name too: it must not see ours."""
    import numpy as np

    from api.settings import Settings
    from solvers.base import AllocationProblem, GroupSpec
    from solvers.evolution import Evolution

    url = Settings(data_dir=tmp_path, database_url=db_url).search_storage_url
    groups = tuple(GroupSpec(id=g, channels=8, blocks=1, min_units=1) for g in "ab")
    problem = AllocationProblem(
        groups=groups, scores={g: np.ones(8) for g in "ab"}, cost=lambda keep: keep["a"] + 2 * keep["b"], budget=12.0,
        evaluate=lambda keep: keep["a"] * keep["b"], storage=url, study_name="job-x", seed=0,
    )  # fmt: skip
    first = Evolution(trials=4, population=2).allocate(problem)
    again = Evolution(trials=4, population=2).allocate(problem)  # the stored study is complete: nothing to run
    assert again.diagnostics["resumed_trials"] == 4 and again.keep == first.keep
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == HEAD
    assert store.get(new(store), "alice") is not None  # the jobs' tables still work


def test_search_helpers_queue_behind_their_job_stay_internal_and_go_with_its_cancel(store):
    job_id = uuid.uuid4().hex
    store.create(
        NewJob(id=job_id, owner="alice", spec={"method": "evolution"}, inputs={}, max_attempts=3, search_helpers=2)
    )
    page, total = store.list("alice", limit=10, offset=0)
    assert total == 1 and page[0].id == job_id  # helpers are never listed
    claimed = [store.claim(f"w{i}", 30) for i in range(3)]
    assert claimed[0].id == job_id and claimed[0].kind is JobKind.PRUNE
    helpers = claimed[1:]
    assert all(
        h.kind is JobKind.SEARCH and h.parent_id == job_id and h.spec == {"method": "evolution"} for h in helpers
    )
    assert all(store.get(h.id) is None and store.get(h.id, "alice") is None for h in helpers)  # not readable alone
    assert store.counts()["running"] == 3  # but they take worker slots, so the queue metrics count them
    assert store.cancel(job_id, "bob") is None
    assert not any(store.heartbeat(Lease(job_id=h.id, attempt=1, worker_id=f"w{i + 1}"), 30).cancel_requested
                   for i, h in enumerate(helpers))  # fmt: skip
    assert store.cancel(job_id, "alice").cancel_requested
    assert all(store.heartbeat(Lease(job_id=h.id, attempt=1, worker_id=f"w{i + 1}"), 30).cancel_requested
               for i, h in enumerate(helpers))  # fmt: skip
    assert store.cancel(helpers[0].id, "alice") is None  # a helper cannot be cancelled on its own


def test_cancelling_a_queued_job_cancels_its_queued_helpers(store):
    job_id = uuid.uuid4().hex
    store.create(NewJob(id=job_id, owner="alice", spec={}, inputs={}, max_attempts=3, search_helpers=1))
    assert store.cancel(job_id, "alice").status is JobStatus.CANCELLED
    assert store.claim("w1", 30) is None  # the helper went with it
    assert store.counts() == {"cancelled": 2}


def test_an_idempotency_key_names_one_job_per_owner(store):
    first = NewJob(
        id=uuid.uuid4().hex, owner="alice", spec={}, inputs={}, max_attempts=3, search_helpers=1,
        idempotency_key="order-17", request_sha256="a" * 64,
    )  # fmt: skip
    job = store.create(first)
    assert job.idempotency_key == "order-17" and job.request_sha256 == "a" * 64
    assert store.by_key("alice", "order-17") == store.get(job.id)
    with pytest.raises(KeyTaken) as taken:
        store.create(replace(first, id=uuid.uuid4().hex, request_sha256="b" * 64))
    assert taken.value.earlier.id == job.id and taken.value.earlier.request_sha256 == "a" * 64
    assert store.list("alice", limit=10, offset=0)[1] == 1 and store.counts() == {"queued": 2}  # the job and its helper
    bob = store.create(replace(first, id=uuid.uuid4().hex, owner="bob"))  # keys are per owner
    assert store.by_key("bob", "order-17").id == bob.id != job.id
    assert store.by_key("alice", "order-18") is None and store.by_key("carol", "order-17") is None
    assert store.get(new(store)) and store.get(new(store))  # jobs without a key never collide


def test_an_api_start_sweeps_job_dirs_that_no_row_names(store, tmp_path):
    from api.artifacts import ArtifactStore

    artifacts = ArtifactStore(tmp_path)
    job_id = uuid.uuid4().hex
    store.create(NewJob(id=job_id, owner="alice", spec={}, inputs={}, max_attempts=3, search_helpers=1))
    with store.engine.begin() as conn:
        helper_id = conn.execute(text("SELECT id FROM jobs WHERE parent_id = :p"), {"p": job_id}).scalar()
    orphan, fresh = uuid.uuid4().hex, uuid.uuid4().hex  # inputs moved in, then the API died before the row
    hour_ago = time.time() - 3700
    for name in (job_id, helper_id, orphan, fresh):
        (artifacts.job_dir(name) / "inputs").mkdir(parents=True)
        if name != fresh:  # a submission being validated right now by another API process
            os.utime(artifacts.job_dir(name), (hour_ago, hour_ago))
    assert store.known_ids([job_id, helper_id, orphan]) == {job_id, helper_id}
    assert artifacts.sweep_orphans(store.known_ids) == 1
    assert {p.name for p in (tmp_path / "jobs").iterdir()} == {job_id, helper_id, fresh}
