"""How a job attempt is executed: a child process forked from a preloaded forkserver.

Not a plain ``fork`` of the worker, which has threads and a database pool; not ``spawn``, whose
fresh interpreter spends 6-8 s importing torch and the pipeline before every job on a 2-core
machine. The forkserver is a clean single-threaded process that the worker starts once and that
imports the pipeline once (it never touches CUDA, so children can); each job is a fork of it,
started in milliseconds. The worker itself never imports torch. A crash, an OOM kill or a cancel
of the child never takes the worker down; when the worker dies the forkserver exits (its pipe
from the worker closes) and the children die with it (``PR_SET_PDEATHSIG``, see ``child``).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event

from api.worker.messages import Attempt, ChildMessage


class ChildHandle:
    """One running child: its events, a polite stop and a hard kill."""

    def __init__(self, proc: BaseProcess, conn: Connection, stop: Event) -> None:
        self.proc, self.conn, self.stop = proc, conn, stop
        self.closed = False

    def events(self, timeout: float) -> list[ChildMessage]:
        """Messages that arrived within ``timeout``; none once the child's end is closed."""
        out: list[ChildMessage] = []
        if self.closed:
            self.proc.join(timeout)
            return out
        try:
            if self.conn.poll(timeout):
                while True:
                    out.append(self.conn.recv())
                    if not self.conn.poll(0):
                        break
        except (EOFError, OSError):
            self.closed = True
        return out

    @property
    def alive(self) -> bool:
        return self.proc.is_alive()

    @property
    def exitcode(self) -> int | None:
        return self.proc.exitcode

    def request_stop(self) -> None:
        """The pipeline polls this between steps and raises CancelledError."""
        self.stop.set()

    def kill(self) -> None:
        """SIGKILL the child's whole process group, then reap it."""
        if self.proc.pid is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                self.proc.kill()
        self.proc.join(10)
        self.closed = True

    def join(self, timeout: float) -> None:
        self.proc.join(timeout)
        self.conn.close()


PRELOAD = ["api.worker.child", "torch", "autoprune.pipeline", "api.jobspec"]  # what every job imports


def _ready() -> None:
    """A no-op child: its start returns once the forkserver is up."""


class ForkserverExecutor:
    """Start ``api.worker.child.main`` as a fork of the preloaded forkserver."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(PRELOAD)

    def warm_up(self) -> None:
        """Start the forkserver and wait until it has imported ``PRELOAD`` (one no-op fork).

        The worker claims no job before this returns: the first ``start`` would otherwise block
        its slot for the import, past a short lease.
        """
        proc = self.ctx.Process(target=_ready, name="autoprune-forkserver-check")
        proc.start()
        proc.join()

    def start(self, attempt: Attempt) -> ChildHandle:
        from api.worker import child

        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        stop = self.ctx.Event()
        proc = self.ctx.Process(target=child.main, args=(attempt, child_conn, stop),
                                name=f"autoprune-job-{attempt.job_id[:8]}")  # fmt: skip
        proc.start()
        child_conn.close()  # only the child holds the write end: its death reads as EOF
        return ChildHandle(proc, parent_conn, stop)
