"""A job's child runs under a CPU-time cap and (on a CPU job) a memory cap; exceeding one is a
clear, non-retryable job error, and a full disk is a retryable one (issue 20, cases 2 and 7).

The child's entry point runs in a forked process with a failpoint standing in for the work.
"""

from __future__ import annotations

import multiprocessing as mp
import signal

import pytest

from api.worker import child
from api.worker.loop import _died
from api.worker.messages import Attempt, Failed


def attempt(tmp_path, **changes) -> Attempt:
    values = dict(
        job_id="j" * 32, kind=child.JobKind.PRUNE, spec={}, data="digits", weights=None, model=None,
        out_dir=str(tmp_path / "out"), checkpoint_dir=str(tmp_path / "ckpt"), latency_repeats=1,
        calibration_batches=1, threads=1, device="cpu", search_storage=None, search_key="j" * 32, data_label="d",
        label="l", helper_seed=0, scratch_dir=str(tmp_path / "scratch"),
    )  # fmt: skip
    return Attempt(**{**values, **changes})


def run_child(monkeypatch, failpoint: str, job: Attempt) -> tuple[int | None, object]:
    monkeypatch.setenv("AUTOPRUNE_FAILPOINT", failpoint)
    ctx = mp.get_context("fork")
    parent, conn = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=child.main, args=(job, conn, ctx.Event()))
    proc.start()
    conn.close()
    try:
        message = parent.recv() if parent.poll(60) else None
    except EOFError:  # it died without a final message
        message = None
    proc.join(60)
    return proc.exitcode, message


def test_a_job_over_its_cpu_cap_fails_with_cpu_limit(monkeypatch, tmp_path):
    code, message = run_child(monkeypatch, "child_spin", attempt(tmp_path, cpu_s=1.0))
    assert code == -signal.SIGXCPU and message is None
    ending = _died(code, 1.0)
    assert ending.outcome is not None
    assert (ending.outcome.code, ending.outcome.retryable) == ("cpu_limit", False)


def test_a_cpu_job_over_its_memory_cap_fails_with_memory_limit(monkeypatch, tmp_path):
    code, message = run_child(monkeypatch, "child_alloc", attempt(tmp_path, memory_bytes=512 << 20))
    assert code == 0
    assert isinstance(message, Failed) and (message.code, message.retryable) == ("memory_limit", False)
    assert "memory cap of 0.5 GiB" in message.message


def test_a_full_disk_inside_a_job_is_retryable_storage_full(monkeypatch, tmp_path):
    code, message = run_child(monkeypatch, "child_enospc", attempt(tmp_path))
    assert isinstance(message, Failed) and (message.code, message.retryable) == ("storage_full", True)


@pytest.mark.parametrize("capped", [True, False])
def test_memory_errors_without_a_cap_stay_retryable(tmp_path, capped):
    failed = child._out_of_memory(attempt(tmp_path, memory_bytes=1 << 30), capped)
    assert (failed.code, failed.retryable) == (("memory_limit", False) if capped else ("out_of_memory", True))
