"""Scratch space (issue 20, case 4): what a submission's check or a job's attempt extracts lives
inside the job's own directory, never the system temp dir, and is removed on every ending and
swept at start."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from api import intake
from api.artifacts import ArtifactStore
from api.intake import ProcessLimits, run_check, scratch_dir
from api.jobs import Job, JobStatus
from api.settings import Settings
from api.worker import child
from api.worker.loop import Worker
from api.worker.messages import Attempt, Failed


def npz_zip(path: Path) -> Path:
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for split, n in (("train", 40), ("test", 10)):
            buf = io.BytesIO()
            np.savez(buf, x=rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8), y=rng.integers(0, 2, n))
            zf.writestr(f"{split}.npz", buf.getvalue())
    return path


def test_a_check_extracts_inside_the_job_dir_and_leaves_nothing(tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    job_dir = tmp_path / "jobs" / ("a" * 32)
    extracted_to: list[Path] = []
    from autoprune.data import sources

    real = sources.extract_archive
    monkeypatch.setattr(sources, "extract_archive", lambda a, d, lim: extracted_to.append(Path(d)) or real(a, d, lim))
    request = {
        "spec": {"arch": "resnet20", "budget": {"flops": 0.5}, "method": "global"},
        "data": str(npz_zip(tmp_path / "data.zip")), "weights": None, "scratch": str(scratch_dir(job_dir)),
        "limits": {"max_archive_members": 10, "max_archive_bytes": 1 << 24, "max_upload_bytes": 1 << 24,
                   "max_tensor_elements": 10**8, "max_model_params": 10**8, "max_model_macs": 10**10},
    }  # fmt: skip
    reply = run_check(request, ProcessLimits())
    assert isinstance(reply, intake.CheckPassed), reply
    assert extracted_to and all(d.is_relative_to(job_dir) for d in extracted_to)
    assert not scratch_dir(job_dir).exists() and not list(system_tmp.iterdir())


def test_an_attempt_puts_its_temporary_files_in_its_scratch_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", None)
    monkeypatch.setenv("TMPDIR", str(tmp_path / "elsewhere"))
    scratch = tmp_path / "jobs" / "j" / "scratch" / "attempt-1-w"
    job = Attempt(
        job_id="j" * 32, kind=child.JobKind.PRUNE, spec={}, data="digits", weights=None, model=None, out_dir="o",
        checkpoint_dir="c", latency_repeats=1, calibration_batches=1, threads=1, device="cpu", search_storage=None,
        search_key="j", data_label="d", label="l", helper_seed=0, scratch_dir=str(scratch),
    )  # fmt: skip
    assert child._limit(job) is False
    assert Path(tempfile.gettempdir()) == scratch and scratch.is_dir()


def test_sweep_removes_scratch_of_jobs_that_are_not_running(tmp_path):
    store = ArtifactStore(tmp_path)
    for job_id in ("done", "running", "rowless"):
        (store.scratch_dir(job_id, "attempt-1-w") / "x").write_text("x")
    swept = store.sweep_scratch(lambda ids: {i for i in ids if i == "done"})
    assert swept == 1
    assert not (store.job_dir("done") / "scratch").exists()
    assert (store.job_dir("running") / "scratch" / "attempt-1-w" / "x").exists()
    assert (store.job_dir("rowless") / "scratch").exists()  # a submission being checked: sweep_orphans' business
    store.scratch_dir("running", "attempt-2-v")  # a new attempt clears the earlier one's leftovers
    assert [p.name for p in (store.job_dir("running") / "scratch").iterdir()] == ["attempt-2-v"]


class FailingChild:
    """A child that has already failed: its one message, then closed."""

    def __init__(self) -> None:
        self.sent = False
        self.closed = False

    def events(self, timeout: float) -> list[Any]:
        if self.sent:
            self.closed = True
            return []
        self.sent = True
        return [Failed("bad_model", False, "no")]

    alive = False
    exitcode = 0

    def kill(self) -> None: ...
    def join(self, timeout: float) -> None: ...
    def request_stop(self) -> None: ...


class Store:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def finish(self, lease: Any, status: JobStatus, code: str | None, error: str | None) -> bool:
        self.calls.append(("finish", status, code))
        return True

    def heartbeat(self, lease: Any, lease_s: float) -> None:
        return None

    def advance(self, *args: Any) -> bool:
        return True


def test_the_worker_removes_an_attempts_scratch_dir_when_it_ends(tmp_path):
    settings = Settings(data_dir=tmp_path, database_url="sqlite:///" + str(tmp_path / "x.db"), heartbeat_s=30)
    store, artifacts = Store(), ArtifactStore(tmp_path)
    worker = Worker(settings, store, artifacts)  # type: ignore[arg-type]
    started: list[Attempt] = []

    class Executor:
        def start(self, attempt: Attempt) -> FailingChild:
            started.append(attempt)
            (Path(attempt.scratch_dir or "") / "extracted.bin").write_bytes(b"x")
            return FailingChild()

    worker.executor = Executor()  # type: ignore[assignment]
    job = Job(id="b" * 32, owner="o", status=JobStatus.RUNNING, spec={}, inputs={}, attempt=1, max_attempts=1)
    worker._run(job)
    (attempt,) = started
    assert Path(attempt.scratch_dir or "").is_relative_to(artifacts.job_dir(job.id))
    assert not (artifacts.job_dir(job.id) / "scratch").exists()
    assert store.calls == [("finish", JobStatus.FAILED, "bad_model")]
