"""The API's validator processes (see api.intake), so the API never imports torch.

A :class:`Validator` is one spawned process that serves checks one at a time; it imports torch
once, so a check costs milliseconds to seconds, not a fresh interpreter. A check that outlives
the timeout, or that kills the process, gets the process killed and replaced, and the caller a
422. Requests go out as dicts (built by api.service); replies come back as
``api.intake.CheckPassed`` or ``CheckFailed``.

A :class:`ValidatorPool` keeps ``size`` of them and is what the API awaits: a submission waits
for a free validator on the event loop (not in a thread), so however many submissions are
being checked or waiting, the threadpool that serves ``GET`` routes and ``/healthz`` stays free.
The wait is bounded: an owner may have ``per_owner`` submissions checking or waiting (429
beyond), all owners together ``queue_limit`` waiting (503 beyond, retry later), and a freed
validator goes to the waiting owner served least recently, so one owner's burst cannot starve
another's single submission.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import signal
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any, Protocol

from api.errors import ApiError
from api.intake import CheckPassed, CheckReply, ProcessLimits, Ready, serve

STARTUP_TIMEOUT_S = 300.0  # importing torch on a busy machine; not counted against a check


class Checker(Protocol):
    def check(self, request: dict[str, Any]) -> dict[str, Any]: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


class Validator:
    """One validator process; :meth:`check` blocks (call it from a thread)."""

    def __init__(self, timeout_s: float, limits: ProcessLimits | None = None) -> None:
        self.timeout_s = timeout_s
        self.limits = limits or ProcessLimits()
        self._lock = threading.Lock()
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._ready = False

    def start(self) -> None:
        """Start the process now (it imports torch in the background)."""
        with self._lock:
            self._spawn()

    def _spawn(self) -> None:
        if self._proc is not None and self._proc.is_alive() and self._conn is not None:
            return
        self._stop()
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=serve, args=(child, self.limits), name="autoprune-validator", daemon=True)
        self._proc.start()
        child.close()
        self._conn, self._ready = parent, False

    def _ensure(self) -> Connection:
        """A started process that has said it is ready (its start-up is not part of any check's time)."""
        self._spawn()
        assert self._conn is not None
        if not self._ready:
            try:
                ready = self._conn.poll(STARTUP_TIMEOUT_S) and isinstance(self._conn.recv(), Ready)
            except (EOFError, OSError):
                ready = False
            if not ready:
                self._stop()
                raise ApiError(503, "validator_unavailable", "the input validator could not start; retry later",
                               {"Retry-After": "10"})  # fmt: skip
            self._ready = True
        return self._conn

    def _stop(self) -> None:
        if self._proc is not None and self._proc.is_alive():
            self._proc.kill()
        if self._proc is not None:
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn, self._ready = None, None, False

    def _died(self) -> ApiError:
        """The error for a check during which the process ended, from how it ended."""
        proc = self._proc
        if proc is not None:
            proc.join(5)
        code = None if proc is None else proc.exitcode
        self._stop()
        self._spawn()  # the next check finds it (nearly) ready
        if code == -signal.SIGXCPU:
            return ApiError(422, "cpu_limit", f"checking the inputs used more than {self.limits.cpu_s:g} CPU seconds")
        if code == -signal.SIGKILL:
            return ApiError(422, "memory_limit", "checking the inputs ran out of memory (the process was killed)")
        return ApiError(422, "bad_input", "the inputs crashed the validator process")

    def check(self, request: dict[str, Any]) -> dict[str, Any]:
        """Blocking: run one check; raises ApiError(422) for anything the inputs caused."""
        with self._lock:
            conn = self._ensure()
            try:
                conn.send(request)
                if not conn.poll(self.timeout_s):
                    self._stop()
                    self._spawn()
                    raise ApiError(422, "validation_timeout", f"checking the inputs took over {self.timeout_s:g} s")
                reply: CheckReply = conn.recv()
            except (EOFError, OSError, BrokenPipeError):
                raise self._died() from None
        if isinstance(reply, CheckPassed):
            return dict(reply.info)
        raise ApiError(422, reply.code, reply.message)

    def close(self) -> None:
        with self._lock:
            self._stop()


class ValidatorPool:
    """``len(checkers)`` validators behind a bounded, per-owner-fair wait (see module doc)."""

    def __init__(self, checkers: list[Checker], *, queue_limit: int, per_owner: int) -> None:
        self.checkers = checkers
        self.queue_limit, self.per_owner = queue_limit, per_owner
        self._free: list[Checker] = list(checkers)
        self._waiting: dict[str, deque[asyncio.Future[Checker]]] = {}
        self._held: Counter[str] = Counter()  #: per owner: checking or waiting
        self._served: dict[str, float] = {}  #: per owner: when a validator was last handed to them
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(checkers)), thread_name_prefix="validator")

    @classmethod
    def of_processes(cls, size: int, timeout_s: float, limits: ProcessLimits, **bounds: int) -> ValidatorPool:
        return cls([Validator(timeout_s, limits) for _ in range(size)], **bounds)

    def start(self) -> None:
        for checker in self.checkers:
            checker.start()

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiting.values())

    @property
    def busy(self) -> int:
        return len(self.checkers) - len(self._free)

    async def check(self, owner: str, request: dict[str, Any]) -> dict[str, Any]:
        """Wait for a validator (fairly, boundedly), run the check in the pool's own threads."""
        checker = await self._acquire(owner)
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._executor, checker.check, request)
        running.add_done_callback(lambda _: self._release(owner, checker))  # also if the caller goes away
        return await asyncio.shield(running)

    async def _acquire(self, owner: str) -> Checker:
        if self._held[owner] >= self.per_owner:
            raise ApiError(429, "too_many_validations", f"{self._held[owner]} of your submissions are being "
                           f"checked or waiting (at most {self.per_owner}); retry when one is answered",
                           {"Retry-After": "5"})  # fmt: skip
        if self._free and not self.waiting:
            self._held[owner] += 1
            self._served[owner] = time.monotonic()
            return self._free.pop()
        if self.waiting >= self.queue_limit:
            raise ApiError(503, "validation_queue_full", f"{self.waiting} submissions are waiting to be checked; "
                           "retry in a minute", {"Retry-After": "30"})  # fmt: skip
        future: asyncio.Future[Checker] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(owner, deque()).append(future)
        self._held[owner] += 1
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(owner, future.result())  # handed over just as the caller left
            else:
                self._forget(owner, future)
            raise

    def _forget(self, owner: str, future: asyncio.Future[Checker]) -> None:
        queue = self._waiting.get(owner)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[owner]
        self._drop(owner)

    def _drop(self, owner: str) -> None:
        self._held[owner] -= 1
        if self._held[owner] <= 0:
            del self._held[owner]

    def _release(self, owner: str, checker: Checker) -> None:
        """``owner`` is done with ``checker``: hand it to the least recently served waiting owner."""
        self._drop(owner)
        while self._waiting:
            nxt = min(self._waiting, key=lambda o: self._served.get(o, 0.0))
            queue = self._waiting[nxt]
            future = queue.popleft()
            if not queue:
                del self._waiting[nxt]
            if future.done():  # cancelled while waiting
                continue
            self._served[nxt] = time.monotonic()
            future.set_result(checker)
            return
        self._free.append(checker)

    def close(self) -> None:
        for checker in self.checkers:
            checker.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
