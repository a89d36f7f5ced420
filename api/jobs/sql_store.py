"""JobStore on SQLAlchemy Core: SQLite (single host) or PostgreSQL (many hosts), one code path.

A claim is one statement, ``UPDATE jobs … WHERE id = (SELECT id … LIMIT 1 FOR UPDATE SKIP
LOCKED) RETURNING *``: PostgreSQL skips rows other workers are claiming; SQLite ignores the
locking clause, but the statement runs inside ``BEGIN IMMEDIATE``, which serialises writers.
The pick is fair across owners: the owner whose job was claimed least recently (``owner_turns``)
goes first, then the oldest job; an owner at the running cap waits (on PostgreSQL concurrent
claims may overshoot that cap by the number of racing workers).
Every transaction is short: no lock is held while a job runs; liveness is the lease.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy import Connection, Engine, Table, case, delete, func, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from api.db.engine import db_now
from api.db.tables import ArtifactRow, JobRow, OwnerTurnRow
from api.jobs.model import Artifact, Job, JobKind, JobStatus, NewJob, Quota, Usage
from api.jobs.store import KeyTaken, Lease, QuotaExceeded

jobs = cast(Table, JobRow.__table__)
artifacts_t = cast(Table, ArtifactRow.__table__)
turns = cast(Table, OwnerTurnRow.__table__)
FINISHED = [JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value]
_users_job = jobs.c.kind == JobKind.PRUNE.value  # search helpers are internal: never listed, read or cancelled alone


class SqlJobStore:
    """See :class:`api.jobs.store.JobStore` for the contract."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._writer = engine.execution_options(write=True)
        self._now = db_now(engine)

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._writer.begin() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def _fenced(self, lease: Lease) -> list[ColumnElement[bool]]:
        return [
            jobs.c.id == lease.job_id,
            jobs.c.attempt == lease.attempt,
            jobs.c.worker_id == lease.worker_id,
            jobs.c.status == JobStatus.RUNNING.value,
        ]

    def _job(self, conn: Connection, row: Any) -> Job:
        found = conn.execute(select(artifacts_t).where(artifacts_t.c.job_id == row.id).order_by(artifacts_t.c.name))
        arts = tuple(Artifact(name=a.name, path=a.path, size=a.size, sha256=a.sha256) for a in found)
        return Job.from_row(row, arts)

    # --- API side ---------------------------------------------------------------------------

    def create(self, job: NewJob, quota: Quota | None = None) -> Job:
        """Queue the job and its search helpers in one transaction.

        Helpers are created a microsecond later each, so a claim (oldest first) reaches the
        job they help before them. Raises :class:`KeyTaken` when the owner already has a job
        under ``job.idempotency_key``: the unique index decides between concurrent submissions;
        :class:`QuotaExceeded` when ``quota`` would be passed (checked in the same transaction).
        """
        common = dict(
            owner=job.owner, status=JobStatus.QUEUED.value, spec=job.spec, inputs=job.inputs, progress=0.0,
            attempt=0, max_attempts=job.max_attempts, cancel_requested=False, run_after=self._now,
        )  # fmt: skip
        try:
            with self._write() as conn:
                if quota is not None:
                    self._check_quota(conn, job, quota)
                row = conn.execute(
                    insert(jobs).values(
                        id=job.id, kind=JobKind.PRUNE.value, created_at=self._now, idempotency_key=job.idempotency_key,
                        request_sha256=job.request_sha256, stored_bytes=job.stored_bytes, **common,
                    ).returning(*jobs.c)
                ).one()  # fmt: skip
                for i in range(job.search_helpers):
                    conn.execute(
                        insert(jobs).values(
                            id=uuid.uuid4().hex, kind=JobKind.SEARCH.value, parent_id=job.id,
                            created_at=self._now + 1e-6 * (i + 1), **common,
                        )
                    )  # fmt: skip
                return Job.from_row(row)
        except IntegrityError:
            earlier = None if job.idempotency_key is None else self.by_key(job.owner, job.idempotency_key)
            if earlier is not None:
                raise KeyTaken(earlier) from None
            raise

    def _check_quota(self, conn: Connection, job: NewJob, quota: Quota) -> None:
        if self.engine.dialect.name == "postgresql":  # serialise one owner's submissions
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": job.owner})
        usage = self._usage(conn, job.owner)
        if quota.max_queued and usage.queued >= quota.max_queued:
            raise QuotaExceeded("queued", usage, quota)
        if quota.max_stored_bytes and usage.stored_bytes + job.stored_bytes > quota.max_stored_bytes:
            raise QuotaExceeded("stored_bytes", usage, quota)

    def _usage(self, conn: Connection, owner: str) -> Usage:
        rows = conn.execute(
            select(jobs.c.status, func.count(), func.coalesce(func.sum(jobs.c.stored_bytes), 0))
            .where(jobs.c.owner == owner, _users_job).group_by(jobs.c.status)
        ).all()  # fmt: skip
        by_status = {status: (int(n), int(size)) for status, n, size in rows}
        return Usage(
            queued=by_status.get(JobStatus.QUEUED.value, (0, 0))[0],
            running=by_status.get(JobStatus.RUNNING.value, (0, 0))[0],
            stored_bytes=sum(size for _, size in by_status.values()),
        )

    def usage(self, owner: str) -> Usage:
        with self._read() as conn:
            return self._usage(conn, owner)

    def by_key(self, owner: str, idempotency_key: str) -> Job | None:
        query = select(jobs).where(jobs.c.owner == owner, jobs.c.idempotency_key == idempotency_key, _users_job)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
            return None if row is None else self._job(conn, row)

    def get(self, job_id: str, owner: str | None = None) -> Job | None:
        query = select(jobs).where(jobs.c.id == job_id, _users_job)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as conn:
            row = conn.execute(query).one_or_none()
            return None if row is None else self._job(conn, row)

    def list(self, owner: str, *, limit: int, offset: int) -> tuple[builtins.list[Job], int]:
        query = (
            select(jobs).where(jobs.c.owner == owner, _users_job)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc()).limit(limit).offset(offset)
        )  # fmt: skip
        with self._read() as conn:
            total = conn.execute(
                select(func.count()).select_from(jobs).where(jobs.c.owner == owner, _users_job)
            ).scalar_one()
            return [self._job(conn, row) for row in conn.execute(query)], int(total)

    def cancel(self, job_id: str, owner: str) -> Job | None:
        """Queued → cancelled now; running → ``cancel_requested`` (its worker stops it). The
        job's search helpers go with it."""
        mine = [jobs.c.id == job_id, jobs.c.owner == owner, _users_job]
        with self._write() as conn:
            if conn.execute(select(jobs.c.id).where(*mine)).first() is None:
                return None
            for target in (mine, [jobs.c.parent_id == job_id]):
                conn.execute(
                    update(jobs).where(*target, jobs.c.status == JobStatus.QUEUED.value)
                    .values(status=JobStatus.CANCELLED.value, finished_at=self._now, error_code="cancelled",
                            error="cancelled before it started")
                )  # fmt: skip
                conn.execute(
                    update(jobs).where(*target, jobs.c.status == JobStatus.RUNNING.value).values(cancel_requested=True)
                )
            return self._job(conn, conn.execute(select(jobs).where(*mine)).one())

    def delete(self, job_id: str, owner: str) -> builtins.list[str]:
        """Delete a finished job of ``owner`` with its helpers and artifact rows; the ids deleted
        (empty when there is no such finished job). The caller removes their files."""
        with self._write() as conn:
            mine = [jobs.c.id == job_id, jobs.c.owner == owner, _users_job, jobs.c.status.in_(FINISHED)]
            if conn.execute(select(jobs.c.id).where(*mine)).first() is None:
                return []
            return self._delete(conn, [job_id])

    def _delete(self, conn: Connection, ids: builtins.list[str]) -> builtins.list[str]:
        helpers = conn.execute(select(jobs.c.id).where(jobs.c.parent_id.in_(ids))).scalars().all()
        every = [*ids, *helpers]
        conn.execute(delete(artifacts_t).where(artifacts_t.c.job_id.in_(every)))
        conn.execute(delete(jobs).where(jobs.c.id.in_(every)))
        return every

    def expire(self, older_than_s: float, limit: int = 500) -> builtins.list[str]:
        """Retention: delete up to ``limit`` user jobs finished more than ``older_than_s`` ago (and
        their helpers); the ids deleted."""
        with self._write() as conn:
            old = conn.execute(
                select(jobs.c.id).where(_users_job, jobs.c.status.in_(FINISHED),
                                        jobs.c.finished_at < self._now - older_than_s).limit(limit)
            ).scalars().all()  # fmt: skip
            return self._delete(conn, list(old)) if old else []

    # --- worker side ------------------------------------------------------------------------

    def claim(self, worker_id: str, lease_s: float, max_running_per_owner: int = 0) -> Job | None:
        """The next job: of the owner served least recently, then the oldest; owners with
        ``max_running_per_owner`` jobs running are skipped (0: no cap; helpers are never held)."""
        ready = [jobs.c.status == JobStatus.QUEUED.value, jobs.c.run_after <= self._now,
                 jobs.c.attempt < jobs.c.max_attempts]  # fmt: skip
        if max_running_per_owner > 0:
            busy = (
                select(jobs.c.owner).where(jobs.c.status == JobStatus.RUNNING.value, _users_job)
                .group_by(jobs.c.owner).having(func.count() >= max_running_per_owner)
            )  # fmt: skip
            ready.append(or_(jobs.c.kind != JobKind.PRUNE.value, jobs.c.owner.not_in(busy)))
        pick = (
            select(jobs.c.id).select_from(jobs.outerjoin(turns, turns.c.owner == jobs.c.owner)).where(*ready)
            .order_by(func.coalesce(turns.c.last_claimed_at, 0.0), jobs.c.created_at, jobs.c.id).limit(1)
            .with_for_update(of=jobs, skip_locked=True).scalar_subquery()
        )  # fmt: skip
        with self._write() as conn:
            row = conn.execute(
                update(jobs).where(jobs.c.id == pick, jobs.c.status == JobStatus.QUEUED.value)
                .values(status=JobStatus.RUNNING.value, worker_id=worker_id, attempt=jobs.c.attempt + 1,
                        lease_until=self._now + lease_s, started_at=func.coalesce(jobs.c.started_at, self._now),
                        stage=None, progress=0.0, stage_started_at=None)
                .returning(*jobs.c)
            ).one_or_none()  # fmt: skip
            if row is not None and row.kind == JobKind.PRUNE.value:
                self._served(conn, row.owner)
            return None if row is None else Job.from_row(row)

    def _served(self, conn: Connection, owner: str) -> None:
        """Record that ``owner`` just had a job claimed (an upsert in either dialect)."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = dialect.insert(turns).values(owner=owner, last_claimed_at=self._now)
        conn.execute(stmt.on_conflict_do_update(index_elements=[turns.c.owner], set_={"last_claimed_at": self._now}))

    def heartbeat(self, lease: Lease, lease_s: float) -> Job | None:
        """Extend the lease; None means it is lost and the worker must stop at once."""
        with self._write() as conn:
            row = conn.execute(
                update(jobs).where(*self._fenced(lease)).values(lease_until=self._now + lease_s).returning(*jobs.c)
            ).one_or_none()
            return None if row is None else Job.from_row(row)

    def advance(self, lease: Lease, stage: str, progress: float) -> bool:
        """Record the stage and progress; a new stage's start time too (the ETA of a fine-tune)."""
        started = case((or_(jobs.c.stage.is_(None), jobs.c.stage != stage), self._now), else_=jobs.c.stage_started_at)
        with self._write() as conn:
            return bool(
                conn.execute(
                    update(jobs).where(*self._fenced(lease))
                    .values(stage=stage, progress=progress, stage_started_at=started)
                ).rowcount
            )  # fmt: skip

    def complete(self, lease: Lease, result: dict[str, Any], artifacts: builtins.list[Artifact]) -> bool:
        """Succeed and record the artifacts in one transaction, or change nothing."""
        with self._write() as conn:
            done = conn.execute(
                update(jobs).where(*self._fenced(lease))
                .values(status=JobStatus.SUCCEEDED.value, result=result, stage="done", progress=1.0,
                        finished_at=self._now, lease_until=None, error_code=None, error=None,
                        stored_bytes=jobs.c.stored_bytes + sum(a.size for a in artifacts))
            ).rowcount  # fmt: skip
            if done:
                conn.execute(delete(artifacts_t).where(artifacts_t.c.job_id == lease.job_id))
                if artifacts:
                    conn.execute(insert(artifacts_t), [{"job_id": lease.job_id, **vars(a)} for a in artifacts])
            return bool(done)

    def finish(self, lease: Lease, status: JobStatus, code: str | None, error: str | None) -> bool:
        with self._write() as conn:
            return bool(conn.execute(
                update(jobs).where(*self._fenced(lease))
                .values(status=status.value, error_code=code, error=error, finished_at=self._now, lease_until=None)
            ).rowcount)  # fmt: skip

    def retry(self, lease: Lease, delay_s: float, code: str, error: str, *, count_attempt: bool = True) -> bool:
        """Back to the queue; ``count_attempt=False`` (graceful shutdown) gives the attempt back."""
        attempt = jobs.c.attempt if count_attempt else jobs.c.attempt - 1
        with self._write() as conn:
            return bool(conn.execute(
                update(jobs).where(*self._fenced(lease))
                .values(status=JobStatus.QUEUED.value, worker_id=None, lease_until=None, attempt=attempt,
                        run_after=self._now + delay_s, error_code=code, error=error, stage=None, progress=0.0,
                        stage_started_at=None)
            ).rowcount)  # fmt: skip

    def requeue_expired(self) -> builtins.list[tuple[str, JobStatus]]:
        """Running jobs whose lease ran out: cancelled if asked, failed at the cap, else queued."""
        expired = [jobs.c.status == JobStatus.RUNNING.value, jobs.c.lease_until < self._now]
        steps: builtins.list[tuple[builtins.list[ColumnElement[bool]], dict[str, Any]]] = [
            ([jobs.c.cancel_requested.is_(True)],
             {"status": JobStatus.CANCELLED.value, "error_code": "cancelled", "error": "cancelled while running"}),
            ([jobs.c.attempt >= jobs.c.max_attempts],
             {"status": JobStatus.FAILED.value, "error_code": "lease_expired",
              "error": "the worker stopped heart-beating on the last allowed attempt"}),
            ([], {"status": JobStatus.QUEUED.value, "error_code": "lease_expired",
                  "error": "the worker stopped heart-beating; retrying", "run_after": self._now,
                  "stage": None, "progress": 0.0, "stage_started_at": None}),  # not the lost attempt's stage
        ]  # fmt: skip
        out: builtins.list[tuple[str, JobStatus]] = []
        with self._write() as conn:
            for extra, values in steps:
                finished = {"finished_at": self._now} if values["status"] != JobStatus.QUEUED.value else {}
                rows = conn.execute(
                    update(jobs).where(*expired, *extra)
                    .values(worker_id=None, lease_until=None, **values, **finished).returning(jobs.c.id)
                )  # fmt: skip
                out.extend((row.id, JobStatus(values["status"])) for row in rows)
        return out

    def known_ids(self, ids: builtins.list[str]) -> set[str]:
        """Which of ``ids`` have a row (jobs and search helpers alike)."""
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                found.update(conn.execute(select(jobs.c.id).where(jobs.c.id.in_(ids[start : start + 500]))).scalars())
        return found

    def not_running(self, ids: builtins.list[str]) -> set[str]:
        """Which of ``ids`` have a row that is not running (their scratch files are leftovers)."""
        found: set[str] = set()
        with self._read() as conn:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = select(jobs.c.id).where(jobs.c.id.in_(chunk), jobs.c.status != JobStatus.RUNNING.value)
                found.update(conn.execute(query).scalars())
        return found

    # --- metrics ----------------------------------------------------------------------------

    def counts(self, owner: str | None = None) -> dict[str, int]:
        """Jobs by status: every row (helpers too), or ``owner``'s own jobs."""
        query = select(jobs.c.status, func.count()).group_by(jobs.c.status)
        if owner is not None:
            query = query.where(jobs.c.owner == owner, _users_job)
        with self._read() as conn:
            return {status: int(n) for status, n in conn.execute(query)}

    def durations(self, owner: str | None = None) -> builtins.list[float]:
        """Run seconds of the last 1000 succeeded jobs (of ``owner``, if given)."""
        query = (
            select(jobs.c.finished_at - jobs.c.started_at)
            .where(jobs.c.status == JobStatus.SUCCEEDED.value, jobs.c.started_at.is_not(None), _users_job)
            .order_by(jobs.c.finished_at.desc()).limit(1000)
        )  # fmt: skip
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as conn:
            return [float(d) for (d,) in conn.execute(query)]
