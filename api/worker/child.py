"""Entry point of the child (a fork of the worker's forkserver) that runs one attempt of one job.

The child never touches the database: it reports ``("progress", stage, fraction)`` and then
``("done", result)`` (a search helper's result, else None), ``("cancelled",)`` or ``("error", code, retryable, message)`` over a pipe, and
the worker writes to the store. It puts itself in its own process group (so the
worker can kill it with everything it started) and asks the kernel to SIGKILL it if its parent,
the forkserver, dies, which it does when the worker dies: a killed worker leaves no orphan burning
CPU or GPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

PR_SET_PDEATHSIG = 1
FAILPOINT_ENV = "AUTOPRUNE_FAILPOINT"  # tests: "child_start" kills the child as it starts


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


def main(payload: dict[str, Any], conn: Connection, stop: Event) -> None:
    _isolate()
    if os.environ.get(FAILPOINT_ENV) == "child_start":
        os.kill(os.getpid(), signal.SIGKILL)
    import torch

    from api.jobspec import to_jobspec
    from autoprune import pipeline
    from autoprune.errors import AutopruneError, CancelledError

    if payload["threads"]:
        torch.set_num_threads(payload["threads"])

    def progress(stage: str, fraction: float, metrics: dict[str, Any]) -> None:
        conn.send(("progress", stage, float(fraction)))

    try:
        spec = to_jobspec(
            payload["spec"], data=payload["data"], weights=payload["weights"], out_dir=payload["out_dir"],
            latency_repeats=payload["latency_repeats"], calibration_batches=payload["calibration_batches"],
            model_file=payload["model"],
        ).evolve(
            search_storage=payload["search_storage"], search_key=payload["search_key"], data_label=payload["data_label"],
            device=payload["device"],
        )  # fmt: skip
        if payload["role"] == "search":  # a helper: stopping is how it normally ends, not a cancel
            result = pipeline.help_search(
                spec, label=payload["label"], seed=payload["helper_seed"], progress=progress, should_stop=stop.is_set
            )
            reply: tuple[Any, ...] = ("done", result)
        else:
            pipeline.run(spec, progress=progress, should_stop=stop.is_set, checkpoint_dir=payload["checkpoint_dir"])
            reply = ("done", None)
    except CancelledError:
        reply = ("cancelled",)
    except AutopruneError as exc:
        reply = ("error", exc.code, exc.retryable, str(exc))
    except MemoryError:
        reply = ("error", "out_of_memory", True, "the job ran out of memory")
    except Exception as exc:  # a bug or an environment failure; out-of-memory may succeed later
        oom = "out of memory" in str(exc).lower()
        reply = ("error", "out_of_memory" if oom else "internal", oom, f"{type(exc).__name__}: {exc}"[:2000])
    conn.send(reply)
    conn.close()
