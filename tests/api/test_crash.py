"""Crash safety with real processes: kill -9, resume from a checkpoint, a frozen (stale) worker, a poison job."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
import service_harness
import torch
from service_harness import stop_process, submit, wait_for

service = service_harness.service  # fixture


def descendants(pid: int) -> list[int]:
    """PIDs below ``pid`` in the process tree (from /proc)."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError):
            continue
    found, frontier = [], [pid]
    while frontier:
        below = [child for child, parent in parents.items() if parent in frontier]
        found += below
        frontier = below
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def published(service, job_id: str) -> list[str]:
    return sorted(p.name for p in (service.data_dir / "jobs" / job_id).glob("attempt-*"))


@pytest.fixture
def client(service):
    service.cancel_all_queued()
    return service.client(service.token("crash"))


def finish_with_another_worker(service, job_id: str):
    """Start a fresh worker, let it finish the job (a second attempt), stop it; the job."""
    second = service.start_worker()
    try:
        job = service.wait_status(job_id, {"succeeded", "failed"}, 150)
    finally:
        stop_process(second)
    assert job.status.value == "succeeded", job.error
    assert job.attempt == 2
    return job


def wait_running(service, job_id: str, stages: tuple[str, ...]) -> None:
    wait_for(
        lambda: (j := service.job(job_id)).status.value == "running" and j.stage in stages,
        120,
        f"stage in {stages}",
        0.1,
    )


def test_kill9_worker_mid_job_then_another_finishes_it_once(service, client):
    job_id = submit(client, exports="none").json()["id"]
    first = service.start_worker()
    wait_running(service, job_id, ("importance", "allocation", "surgery", "finetune", "export"))
    kids = descendants(first.pid)  # the forkserver, the job (its child, own process group), the tracker
    assert any(os.getpgid(pid) == pid for pid in kids), kids  # the job leads its own group
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    wait_for(lambda: not any(alive(pid) for pid in kids), 10, "the orphaned job process to die (PDEATHSIG)")
    assert service.job(job_id).status.value == "running"  # nobody knows yet: the lease has to expire

    job = finish_with_another_worker(service, job_id)
    assert len(published(service, job_id)) == 1 and published(service, job_id)[0].startswith("attempt-2-")
    assert not list((service.data_dir / "jobs" / job_id).glob("*.tmp"))
    names = {a.name for a in job.artifacts}
    assert names >= {"report.json", "model.safetensors", "spec.json"} and not names & {"model.onnx", "model.pt2"}


def epochs_checkpointed(service, job_id: str) -> int:
    """Fine-tune epochs recorded in the job's checkpoint (0 while there is none)."""
    path = service.data_dir / "jobs" / job_id / "checkpoint" / "checkpoint.pt"
    try:
        return json.loads(torch.load(path, weights_only=True)["meta"])["epochs_done"]
    except (OSError, RuntimeError, EOFError):  # absent, or replaced while we read it
        return 0


def test_a_requeued_job_resumes_from_its_checkpoint(service, client):
    job_id = submit(client, finetune='{"epochs": 3, "max_steps_per_epoch": 6}', exports="none").json()["id"]
    first = service.start_worker()
    wait_for(lambda: epochs_checkpointed(service, job_id) >= 1, 120, "a checkpoint after fine-tune epoch 1", 0.05)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(10)
    assert service.job(job_id).status.value == "running"

    job = finish_with_another_worker(service, job_id)
    assert job.result["resumed"]["cuts_done"] == 1 and 1 <= job.result["resumed"]["epochs_done"] < 3
    assert [h["epoch"] for h in job.result["finetune"]["history"]] == [1, 2, 3]  # nothing lost or repeated
    assert not (service.data_dir / "jobs" / job_id / "checkpoint").exists()  # dropped once the job succeeded


def freeze_between_transactions(service, pid: int) -> None:
    """SIGSTOP the worker's group at a moment it holds no SQLite lock.

    A process frozen inside a transaction blocks every SQLite writer until it wakes (that is
    SQLite's file locking, not a fencing question), so freeze, check that an exclusive lock can
    be had, and thaw and retry if not.
    """
    for _ in range(50):
        os.killpg(pid, signal.SIGSTOP)
        probe = sqlite3.connect(service.engine.url.database, timeout=0.5, isolation_level=None)
        try:
            probe.execute("BEGIN EXCLUSIVE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:
            os.killpg(pid, signal.SIGCONT)
            time.sleep(0.05)
        finally:
            probe.close()
    raise AssertionError("the worker always held a database lock")


def test_a_frozen_worker_past_its_lease_is_fenced_out(service, client):
    job_id = submit(client, exports="none").json()["id"]
    frozen = service.start_worker()
    wait_running(service, job_id, ("intake", "baseline", "importance"))
    freeze_between_transactions(service, frozen.pid)  # its child (own group) runs on, unsupervised
    try:
        rescuer = service.start_worker()
        wait_for(lambda: service.job(job_id).attempt == 2, 60, "a second attempt to be claimed", 0.1)
    finally:
        os.killpg(frozen.pid, signal.SIGCONT)
    try:
        job = service.wait_status(job_id, {"succeeded", "failed"}, 150)
    finally:
        stop_process(rescuer)
        stop_process(frozen)
    assert job.status.value == "succeeded" and job.attempt == 2
    assert len(published(service, job_id)) == 1 and published(service, job_id)[0].startswith("attempt-2-")
    assert all("/attempt-2-" in a.path for a in job.artifacts)


def test_a_poison_job_stops_after_max_attempts(service, client):
    job_id = submit(client, exports="none").json()["id"]
    worker = service.start_worker(AUTOPRUNE_FAILPOINT="child_start")
    try:
        job = service.wait_status(job_id, {"succeeded", "failed"}, 60)
    finally:
        stop_process(worker)
    assert job.status.value == "failed" and job.error_code == "oom_or_signal" and "SIGKILL" in job.error
    assert job.attempt == job.max_attempts == 3
    time.sleep(0.5)
    assert service.job(job_id).attempt == 3
