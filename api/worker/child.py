"""Entry point of the child (a fork of the worker's forkserver) that runs one attempt of one job.

The child never touches the database: it reports :class:`~api.worker.messages.Progress` and then
one final message (:class:`~api.worker.messages.Done` with a search helper's result, else None;
``Cancelled``; or ``Failed``) over a pipe, and the worker writes to the store. It puts itself in
its own process group (so the worker can kill it with everything it started) and asks the kernel
to SIGKILL it if its parent, the forkserver, dies, which it does when the worker dies: a killed
worker leaves no orphan burning CPU or GPU.
"""

from __future__ import annotations

import ctypes
import errno
import os
import signal
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

from api.intake import MEMORY_ERRORS
from api.jobs.model import JobKind
from api.worker.messages import Attempt, Cancelled, Done, Failed, Final, Progress

PR_SET_PDEATHSIG = 1
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
FAILPOINT_ENV = "AUTOPRUNE_FAILPOINT"  # tests: "child_start" kills the child as it starts; "child_spin"
# burns CPU and "child_alloc" allocates without end (they meet the caps); "child_enospc": a full disk
NICENESS = 5  # a job yields the CPU to the API and the worker's heart-beats


def _isolate() -> None:
    """Own process group; SIGKILL when the parent (the worker's forkserver) dies."""
    os.setpgrp()
    parent = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker's kill path still applies
        pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _limit(attempt: Attempt) -> bool:
    """Apply the attempt's CPU-time cap (SIGXCPU past it) and, on a CPU job, its address-space cap
    (CUDA reserves far more address space than it uses, so a GPU job relies on the worker's
    cgroup). Temporary files go to the attempt's scratch dir. True when the memory cap is on."""
    import resource
    import tempfile

    if attempt.scratch_dir:
        os.makedirs(attempt.scratch_dir, exist_ok=True)
        tempfile.tempdir = attempt.scratch_dir
        os.environ["TMPDIR"] = attempt.scratch_dir
    if attempt.cpu_s > 0:
        _, hard = resource.getrlimit(resource.RLIMIT_CPU)
        soft = int(attempt.cpu_s) + 1 if hard == resource.RLIM_INFINITY else min(int(attempt.cpu_s) + 1, hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    if attempt.memory_bytes > 0 and not attempt.device.startswith("cuda"):
        import torch

        if attempt.device == "cpu" or not torch.cuda.is_available():
            from api.intake import cap_memory

            cap_memory(attempt.memory_bytes)
            return True
    return False


def _failpoint() -> None:
    point = os.environ.get(FAILPOINT_ENV)
    if point == "child_spin":
        while True:
            pass
    if point == "child_alloc":  # reserves address space without touching it (no RSS)
        import numpy as np

        hoard = []
        while True:
            hoard.append(np.empty(256 << 20, dtype=np.uint8))
    if point == "child_enospc":
        raise OSError(errno.ENOSPC, "No space left on device")


def main(attempt: Attempt, conn: Connection, stop: Event) -> None:
    _isolate()
    if os.environ.get(FAILPOINT_ENV) == "child_start":
        os.kill(os.getpid(), signal.SIGKILL)
    os.nice(NICENESS)
    import torch

    if attempt.threads:
        torch.set_num_threads(attempt.threads)
    capped = _limit(attempt)

    def progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        conn.send(Progress(stage, float(fraction)))

    conn.send(_attempt(attempt, progress, stop, capped))
    conn.close()


def _attempt(
    attempt: Attempt, progress: Callable[[str, float, dict[str, Any]], None], stop: Event, capped: bool = False
) -> Final:
    """Run the attempt; its final message, whatever happened."""
    from api.jobspec import to_jobspec
    from autoprune import pipeline
    from autoprune.context import SearchStore
    from autoprune.errors import AutopruneError, BudgetError, CancelledError

    try:
        _failpoint()
        spec = to_jobspec(
            attempt.spec, data=attempt.data, weights=attempt.weights, out_dir=attempt.out_dir, model_file=attempt.model,
            latency_repeats=attempt.latency_repeats, calibration_batches=attempt.calibration_batches,
            device=attempt.device,
        )  # fmt: skip
        search = SearchStore(attempt.search_storage, attempt.search_key) if attempt.search_storage else None
        if attempt.kind is JobKind.SEARCH:  # a helper: stopping is how it normally ends, not a cancel
            if search is None:
                raise BudgetError("only an evolution search kept in a shared storage can be helped")
            result = pipeline.help_search(
                spec, search=search, label=attempt.label, seed=attempt.helper_seed, progress=progress,
                should_stop=stop.is_set,
            )  # fmt: skip
            return Done(result)
        pipeline.run(
            spec, progress=progress, should_stop=stop.is_set, checkpoint_dir=attempt.checkpoint_dir, search=search,
            data_label=attempt.data_label,
        )  # fmt: skip
        return Done(None)
    except CancelledError:
        return Cancelled()
    except AutopruneError as exc:
        return Failed(exc.code, exc.retryable, str(exc))
    except MemoryError:
        return _out_of_memory(attempt, capped)
    except OSError as exc:
        if exc.errno in DISK_FULL:  # another job's files may go, or the operator may add space: retry
            return Failed("storage_full", True, "the server's disk is full; the job will be retried")
        return Failed("internal", False, f"{type(exc).__name__}: {exc}"[:2000])
    except Exception as exc:  # a bug or an environment failure; out-of-memory may succeed later
        if any(m in str(exc).lower() for m in MEMORY_ERRORS):
            return _out_of_memory(attempt, capped)
        return Failed("internal", False, f"{type(exc).__name__}: {exc}"[:2000])


def _out_of_memory(attempt: Attempt, capped: bool) -> Failed:
    """Past this service's own cap the job will not fit on a retry either; the machine's memory may free up."""
    if capped:
        cap = attempt.memory_bytes / 2**30
        return Failed("memory_limit", False, f"the job needed more than this service's memory cap of {cap:.1f} GiB; "
                      "try a smaller batch size or smaller inputs")  # fmt: skip
    return Failed("out_of_memory", True, "the job ran out of memory")
