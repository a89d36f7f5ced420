"""Workers racing for jobs: every job is claimed exactly once (SQLite and PostgreSQL).

Separate processes, each with its own engine, claim and complete as fast as they can; on
SQLite that exercises BEGIN IMMEDIATE + busy_timeout, on PostgreSQL FOR UPDATE SKIP LOCKED.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter

import service_harness

from api.db import make_engine, migrate
from api.jobs import JobStatus, NewJob, SqlJobStore

db_url = service_harness.db_url  # fixture
postgres = service_harness.postgres  # fixture

JOBS, PROCESSES = 60, 4
RACER = """
import sys
from api.db import make_engine
from api.jobs import Lease, SqlJobStore
store = SqlJobStore(make_engine(sys.argv[1]))
name = sys.argv[2]
while (job := store.claim(name, 30)) is not None:
    print(job.id, flush=True)
    assert store.complete(Lease(job_id=job.id, attempt=job.attempt, worker_id=name), {"by": name}, [])
"""


def test_concurrent_claims_run_each_job_exactly_once(db_url):
    engine = make_engine(db_url)
    migrate(engine)
    store = SqlJobStore(engine)
    ids = {uuid.uuid4().hex for _ in range(JOBS)}
    for job_id in ids:
        store.create(NewJob(id=job_id, owner="alice", spec={}, inputs={}, max_attempts=3))
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, db_url, f"racer-{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for i in range(PROCESSES)
    ]
    claims: Counter[str] = Counter()
    per_racer = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err.decode()
        got = out.decode().split()
        per_racer.append(len(got))
        claims.update(got)
    assert set(claims) == ids
    assert max(claims.values()) == 1, "a job was claimed twice"
    assert store.counts() == {JobStatus.SUCCEEDED.value: JOBS}
    assert sum(per_racer) == JOBS
    engine.dispose()
