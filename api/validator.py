"""The API's handle on the validator subprocess (see api.intake), so the API never imports torch.

One spawned process serves checks one at a time; it imports torch once, so a check costs
milliseconds to seconds, not a fresh interpreter. A check that outlives the timeout, or that
kills the process, gets the process killed and replaced, and the caller a 422.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from api.errors import ApiError


class Validator:
    def __init__(self, timeout_s: float, threads: int = 1) -> None:
        self.timeout_s = timeout_s
        self.threads = threads
        self._lock = threading.Lock()
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None

    def start(self) -> None:
        """Start the process now (it imports torch in the background)."""
        with self._lock:
            self._ensure()

    def _ensure(self) -> Connection:
        if self._proc is None or not self._proc.is_alive() or self._conn is None:
            self._stop()
            from api import intake

            ctx = mp.get_context("spawn")
            parent, child = ctx.Pipe()
            self._proc = ctx.Process(target=intake.serve, args=(child, self.threads), name="autoprune-validator", daemon=True)
            self._proc.start()
            child.close()
            self._conn = parent
        return self._conn

    def _stop(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def check(self, request: dict[str, Any]) -> dict[str, Any]:
        """Blocking: run one check; raises ApiError(422) for anything the inputs caused."""
        with self._lock:
            conn = self._ensure()
            try:
                conn.send(request)
                if not conn.poll(self.timeout_s):
                    self._stop()
                    raise ApiError(422, "validation_timeout", f"checking the inputs took over {self.timeout_s:g} s")
                reply = conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                self._stop()
                raise ApiError(422, "bad_input", "the inputs crashed the validator process") from None
        if reply[0] == "ok":
            return dict(reply[1])
        raise ApiError(422, reply[1], reply[2])

    def close(self) -> None:
        with self._lock:
            self._stop()
