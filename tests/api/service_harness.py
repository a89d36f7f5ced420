"""Real processes on loopback: an API (uvicorn) and workers as subprocesses, SQLite and PostgreSQL.

Not a conftest.py on purpose: tests/*.py import their helpers with ``from conftest import ...``,
and pytest registers every conftest.py as the module ``conftest``, so a second one here would
shadow theirs. Test modules import the fixtures they use from this module instead (each module
then gets its own session-scoped API, which also keeps modules independent).

Workers run with a 2 s lease, 0.5 s heartbeat and 1 s reaper so crash tests finish quickly;
jobs are tiny (digits, 1 epoch of 4 steps, 3 latency repeats, 2 calibration batches).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.db import make_engine, migrate
from api.jobs import Job, SqlJobStore
from api.security import TokenStore

ROOT = Path(__file__).resolve().parents[2]
TINY_FINETUNE = '{"epochs": 1, "max_steps_per_epoch": 4}'
FAST_ENV = {
    "AUTOPRUNE_LATENCY_REPEATS": "3", "AUTOPRUNE_CALIBRATION_BATCHES": "2", "AUTOPRUNE_CHILD_THREADS": "1",
    "AUTOPRUNE_LEASE_S": "2", "AUTOPRUNE_HEARTBEAT_S": "0.5", "AUTOPRUNE_REAPER_S": "1", "AUTOPRUNE_POLL_S": "0.2",
    "AUTOPRUNE_RETRY_BACKOFF_S": "0.3", "AUTOPRUNE_CANCEL_GRACE_S": "5",
    "AUTOPRUNE_MAX_UPLOAD_BYTES": str(4 << 20), "AUTOPRUNE_MAX_ARCHIVE_MEMBERS": "50",
    "AUTOPRUNE_MAX_ARCHIVE_BYTES": str(8 << 20), "AUTOPRUNE_SUBMITS_PER_MINUTE": "1000",
    "AUTOPRUNE_REQUESTS_PER_MINUTE": "100000", "OMP_NUM_THREADS": "1",
}  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM the process group, then SIGKILL it if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def _die_with_pytest() -> None:
    """Runs in each API/worker child before exec: SIGTERM it when pytest dies, since a killed pytest
    (a CI timeout, Ctrl-C twice) skips fixture teardown and would leave servers and workers behind."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Service:
    """One deployment: a data dir, a database, an API process and any number of workers."""

    def __init__(self, root: Path, database_url: str = "") -> None:
        self.root = root
        self.data_dir = root / "data"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ, **FAST_ENV, "AUTOPRUNE_DATA_DIR": str(self.data_dir),
            "AUTOPRUNE_DATABASE_URL": database_url, "AUTOPRUNE_PORT": str(self.port),
        }  # fmt: skip
        self.env.pop("AUTOPRUNE_FAILPOINT", None)
        self.procs: list[subprocess.Popen[bytes]] = []
        self.data_dir.mkdir(parents=True, exist_ok=True)
        from api.settings import Settings

        self.settings = Settings(data_dir=self.data_dir, database_url=database_url)  # as the processes see them
        self.engine = make_engine(self.settings.db_url)
        migrate(self.engine)
        self.store = SqlJobStore(self.engine)

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "autoprune.cli", *args], cwd=ROOT, env={**self.env, **env},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_pytest,
        )  # fmt: skip
        self.procs.append(proc)
        return proc

    def start_api(self, **env: str) -> subprocess.Popen[bytes]:
        """An API process; ``env`` adds settings (AUTOPRUNE_*, a failpoint) to its environment."""
        proc = self._spawn("api", ["serve"], env)

        def up() -> bool:
            assert proc.poll() is None, (self.root / f"api-{len(self.procs) - 1}.log").read_text()
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, 60, "the API to answer /healthz", 0.2)
        return proc

    def start_worker(self, concurrency: int = 1, **env: str) -> subprocess.Popen[bytes]:
        return self._spawn("worker", ["worker", "--concurrency", str(concurrency)], env)

    def token(self, owner: str) -> str:
        return TokenStore(self.engine).create(owner)

    def client(self, token: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        assert job is not None
        return job

    def wait_status(self, job_id: str, statuses: set[str], timeout: float = 120) -> Job:
        return wait_for(
            lambda: (j := self.job(job_id)).status.value in statuses and j, timeout, f"job in {statuses}", 0.2
        )

    def cancel_all_queued(self) -> None:
        for job, owner in self._queued():
            self.store.cancel(job, owner)

    def _queued(self) -> list[tuple[str, str]]:
        from sqlalchemy import text

        with self.engine.begin() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT id, owner FROM jobs WHERE status = 'queued'"))]

    def close(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.engine.dispose()


def submit(client: httpx.Client, files: dict[str, Any] | None = None, **fields: str) -> httpx.Response:
    """POST /jobs as multipart (text fields as parts without a filename)."""
    values = {
        "arch": "resnet20", "dataset": "digits", "budget": '{"flops": 0.5}', "finetune": TINY_FINETUNE,
        "ensure_faster": "false", **fields,
    }  # fmt: skip
    parts: list[tuple[str, Any]] = [(k, (None, v)) for k, v in values.items() if v is not None]
    parts += list((files or {}).items())
    return client.post("/jobs", files=parts)


@pytest.fixture(scope="session")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The shared API on SQLite; tests start the workers they need and leave no queued job behind."""
    svc = Service(tmp_path_factory.mktemp("service"))
    svc.start_api()
    yield svc
    svc.close()


@pytest.fixture(scope="module")
def worker(service: Service) -> Iterator[subprocess.Popen[bytes]]:
    """One worker for a test module, after the queue is emptied; stopped when the module ends."""
    service.cancel_all_queued()
    proc = service.start_worker()
    yield proc
    stop_process(proc)


# --- PostgreSQL ---------------------------------------------------------------------------------


def _pg_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


class PgCluster:
    """A throwaway PostgreSQL cluster on a loopback port (run as `postgres` when we are root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="autoprune-pg-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run("initdb", "-D", str(self.dir / "db"), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run("pg_ctl", "-D", str(self.dir / "db"), "-o", opts, "-l", str(self.dir / "log"), "-w", "start")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def new_database(self) -> str:
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.dir / "db"), "-m", "immediate", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PgCluster]:
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip(
            "PostgreSQL binaries (initdb, pg_ctl) not found: `make test` installs them as root (apt-get install postgresql)"
        )
    cluster = PgCluster(bindir)
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, migrated database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.db'}"
    url: str = request.getfixturevalue("postgres").new_database()
    return url.replace("postgresql://", "postgresql+psycopg://")
