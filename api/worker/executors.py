"""How a job attempt is executed: a spawned child process (the worker never imports torch).

``spawn`` (not fork) because the worker has threads and a database pool, and CUDA cannot be
forked. A crash, an OOM kill or a cancel of the child never takes the worker down.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Any


class ChildHandle:
    """One running child: its events, a polite stop and a hard kill."""

    def __init__(self, proc: BaseProcess, conn: Connection, stop: Event) -> None:
        self.proc, self.conn, self.stop = proc, conn, stop
        self.closed = False

    def events(self, timeout: float) -> list[tuple[Any, ...]]:
        """Messages that arrived within ``timeout``; none once the child's end is closed."""
        out: list[tuple[Any, ...]] = []
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


class SpawnExecutor:
    """Start ``api.worker.child.main`` in a fresh interpreter."""

    def __init__(self) -> None:
        self.ctx = mp.get_context("spawn")

    def start(self, payload: dict[str, Any]) -> ChildHandle:
        from api.worker import child

        parent_conn, child_conn = self.ctx.Pipe(duplex=False)
        stop = self.ctx.Event()
        proc = self.ctx.Process(target=child.main, args=({**payload, "parent_pid": os.getpid()}, child_conn, stop),
                                name=f"autoprune-job-{payload['job_id'][:8]}")  # fmt: skip
        proc.start()
        child_conn.close()  # only the child holds the write end: its death reads as EOF
        return ChildHandle(proc, parent_conn, stop)
