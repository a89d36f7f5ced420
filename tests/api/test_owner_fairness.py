"""Per-owner fairness, quotas and retention in the store (issue 20, case 5), and a re-queued job's
stage (case 9), on SQLite and PostgreSQL."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import service_harness
from sqlalchemy import text

from api.artifacts import ArtifactStore
from api.db import make_engine, migrate
from api.jobs import Artifact, Job, JobKind, JobStatus, Lease, NewJob, Quota, QuotaExceeded, SqlJobStore, Stage
from api.schemas import JobPublic
from api.settings import Settings
from api.worker.loop import Worker

db_url = service_harness.db_url  # fixture
postgres = service_harness.postgres  # fixture


@pytest.fixture
def store(db_url: str) -> SqlJobStore:
    engine = make_engine(db_url)
    migrate(engine)
    yield SqlJobStore(engine)
    engine.dispose()


def new(store: SqlJobStore, owner: str = "alice", *, quota: Quota | None = None, **kw) -> str:
    job_id = uuid.uuid4().hex
    store.create(NewJob(id=job_id, owner=owner, spec={}, inputs={}, max_attempts=3, **kw), quota)
    return job_id


def sql(store: SqlJobStore, statement: str, **params) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement), params)


def lease(job: Job | None, worker: str) -> Lease:
    assert job is not None
    return Lease(job_id=job.id, attempt=job.attempt, worker_id=worker)


def test_claims_go_to_the_owner_served_least_recently(store):
    alice = [new(store, "alice") for _ in range(3)]
    bob = new(store, "bob")  # queued after all of alice's
    order = [store.claim(f"w{i}", 30).id for i in range(4)]
    assert order == [alice[0], bob, alice[1], alice[2]]  # strict oldest-first made bob wait for all three


def test_an_owner_at_the_running_cap_waits_while_others_run(store):
    first, second = new(store, "alice"), new(store, "alice")
    assert store.claim("w1", 30, max_running_per_owner=1).id == first
    assert store.claim("w2", 30, max_running_per_owner=1) is None  # alice has one running
    bob = new(store, "bob")
    assert store.claim("w2", 30, max_running_per_owner=1).id == bob
    store.finish(Lease(job_id=first, attempt=1, worker_id="w1"), JobStatus.SUCCEEDED, None, None)
    assert store.claim("w3", 30, max_running_per_owner=1).id == second


def test_queue_and_storage_quotas_are_checked_when_a_job_is_queued(store):
    quota = Quota(max_queued=2, max_stored_bytes=1000)
    new(store, quota=quota, stored_bytes=400)
    new(store, quota=quota, stored_bytes=400)
    with pytest.raises(QuotaExceeded) as queued:
        new(store, quota=quota)
    assert queued.value.what == "queued" and queued.value.usage.queued == 2
    job = store.claim("w", 30)
    with pytest.raises(QuotaExceeded) as stored:
        new(store, quota=quota, stored_bytes=300)  # 400 + 400 + 300 > 1000
    assert stored.value.what == "stored_bytes"
    store.complete(lease(job, "w"), {}, [Artifact(name="a", path="p", size=150, sha256="0" * 64)])
    usage = store.usage("alice")
    assert (usage.queued, usage.running, usage.stored_bytes) == (1, 0, 950)
    assert store.usage("bob").stored_bytes == 0


def test_delete_removes_a_finished_job_with_its_helpers_and_artifacts(store):
    job_id = uuid.uuid4().hex
    store.create(NewJob(id=job_id, owner="alice", spec={}, inputs={}, max_attempts=3, search_helpers=2))
    assert store.delete(job_id, "alice") == []  # queued: not deleted (it is cancelled instead)
    job = store.claim("w", 30)
    store.complete(lease(job, "w"), {}, [Artifact(name="a", path="p", size=1, sha256="0" * 64)])
    assert store.delete(job_id, "bob") == []
    deleted = store.delete(job_id, "alice")
    assert deleted[0] == job_id and len(deleted) == 3
    assert store.get(job_id) is None and store.known_ids(deleted) == set()


def test_retention_deletes_old_finished_jobs_and_their_files(store, tmp_path):
    artifacts = ArtifactStore(tmp_path)
    old, recent, queued = new(store), new(store), new(store)
    for _ in range(2):
        job = store.claim("w", 30)
        store.finish(lease(job, "w"), JobStatus.FAILED, "bad_model", "no")
    for job_id in (old, recent, queued):
        (artifacts.job_dir(job_id) / "inputs").mkdir(parents=True)
    sql(store, "UPDATE jobs SET finished_at = finished_at - 40 * 86400 WHERE id = :id", id=old)
    settings = Settings(data_dir=tmp_path, database_url=str(store.engine.url), retention_days=30)
    worker = Worker(settings, store, artifacts)
    assert worker.expire() == 1
    assert store.get(old) is None and not artifacts.job_dir(old).exists()
    assert store.get(recent) is not None and artifacts.job_dir(recent).exists()
    assert store.get(queued).status is JobStatus.QUEUED


def test_a_requeued_job_does_not_show_the_lost_attempts_stage(store):
    job_id = new(store)
    held = lease(store.claim("w1", 30), "w1")
    store.advance(held, "finetune", 0.5)
    sql(store, "UPDATE jobs SET lease_until = lease_until - 3600 WHERE id = :id", id=job_id)
    assert store.requeue_expired() == [(job_id, JobStatus.QUEUED)]
    job = store.get(job_id)
    assert (job.status, job.stage, job.progress, job.stage_started_at) == (JobStatus.QUEUED, None, 0.0, None)


def test_the_stage_start_is_recorded_when_the_stage_changes(store):
    new(store)
    held = lease(store.claim("w1", 30), "w1")
    store.advance(held, "baseline", 0.05)
    first = store.get(held.job_id).stage_started_at
    time.sleep(0.05)
    store.advance(held, "baseline", 0.07)
    assert store.get(held.job_id).stage_started_at == first
    store.advance(held, "finetune", 0.3)
    assert store.get(held.job_id).stage_started_at > first


def running(**changes) -> Job:
    values = dict(id="j" * 32, owner="o", status=JobStatus.RUNNING, spec={"finetune": {"epochs": 100}}, inputs={})
    return Job(kind=JobKind.PRUNE, **{**values, **changes})


def test_the_eta_waits_for_the_fine_tunes_pace_and_then_follows_it():
    now = time.time()
    early = running(stage=Stage.BASELINE, progress=0.08, started_at=now - 30)
    assert JobPublic.of(early).eta_seconds is None  # was 30 * 0.92 / 0.08 = 345 s for a 100-epoch job
    tuning = running(stage=Stage.FINETUNE, progress=0.3 + 0.55 * 0.1, started_at=now - 90, stage_started_at=now - 60)
    eta = JobPublic.of(tuning).eta_seconds
    assert eta is not None and 540 <= eta <= 560  # 60 s for 10% of the steps: 540 s more, plus the export
    quick = running(spec={"finetune": {"epochs": 0}}, stage=Stage.BASELINE, progress=0.1, started_at=now - 10)
    assert JobPublic.of(quick).eta_seconds == pytest.approx(90, abs=1)


def test_a_jobs_error_detail_names_files_not_server_paths(tmp_path):
    where = Path.cwd() / "autoprune-data" / "jobs" / ("a" * 32) / "inputs" / "data.zip"
    job = running(status=JobStatus.FAILED, error_code="bad_data", error=f"could not read {where}: not a zip file")
    assert JobPublic.of(job).error_detail == "could not read data.zip: not a zip file"
