"""The validator pool's wait: bounded per owner and in total, fair across owners, and off the
threads that serve reads (stub checkers: no processes)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from api.errors import ApiError
from api.validator import ValidatorPool


class Stub:
    """A checker that blocks until released and records the order it was asked in."""

    def __init__(self, log: list[str], gate: threading.Event | None = None, delay: float = 0.0) -> None:
        self.log, self.gate, self.delay = log, gate, delay

    def check(self, request: dict[str, Any]) -> dict[str, Any]:
        self.log.append(request["tag"])
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        return {"tag": request["tag"]}

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_freed_validator_goes_to_the_least_recently_served_owner():
    async def scenario() -> list[str]:
        log: list[str] = []
        gate = threading.Event()
        pool = ValidatorPool([Stub(log, gate)], queue_limit=10, per_owner=10)
        first = asyncio.create_task(pool.check("alice", {"tag": "a0"}))
        await asyncio.sleep(0.05)
        burst = [asyncio.create_task(pool.check("alice", {"tag": f"a{i}"})) for i in range(1, 4)]
        await asyncio.sleep(0.01)
        bob = asyncio.create_task(pool.check("bob", {"tag": "b0"}))
        await asyncio.sleep(0.01)
        gate.set()
        await asyncio.gather(first, *burst, bob)
        pool.close()
        return log

    log = run(scenario())
    assert log[:2] == ["a0", "b0"], log  # bob's one submission is not queued behind alice's burst
    assert sorted(log) == ["a0", "a1", "a2", "a3", "b0"]


def test_per_owner_and_total_bounds_answer_at_once():
    async def scenario() -> tuple[ApiError, ApiError, float]:
        gate = threading.Event()
        pool = ValidatorPool([Stub([], gate)], queue_limit=2, per_owner=2)
        held = [asyncio.create_task(pool.check("alice", {"tag": str(i)})) for i in range(2)]
        await asyncio.sleep(0.05)
        with pytest.raises(ApiError) as per_owner:
            await pool.check("alice", {"tag": "x"})
        bob = asyncio.create_task(pool.check("bob", {"tag": "b"}))  # the second waiter: the queue is full
        await asyncio.sleep(0.01)
        start = time.monotonic()
        with pytest.raises(ApiError) as total:
            await pool.check("carol", {"tag": "c"})
        waited = time.monotonic() - start
        gate.set()
        await asyncio.gather(*held, bob)
        assert pool.busy == 0 and pool.waiting == 0
        pool.close()
        return per_owner.value, total.value, waited

    per_owner, total, waited = run(scenario())
    assert (per_owner.status, per_owner.code) == (429, "too_many_validations")
    assert (total.status, total.code) == (503, "validation_queue_full")
    assert per_owner.headers and total.headers and "Retry-After" in total.headers
    assert waited < 0.05


def test_a_caller_that_goes_away_frees_its_place_and_its_validator():
    async def scenario() -> dict[str, Any]:
        gate = threading.Event()
        pool = ValidatorPool([Stub([], gate)], queue_limit=5, per_owner=5)
        running = asyncio.create_task(pool.check("alice", {"tag": "a"}))
        waiting = asyncio.create_task(pool.check("bob", {"tag": "b"}))
        await asyncio.sleep(0.05)
        running.cancel()
        waiting.cancel()
        await asyncio.sleep(0.01)
        assert pool.waiting == 0
        gate.set()  # the cancelled check still finishes in its thread, then frees the validator
        await asyncio.sleep(0.2)
        result: dict[str, Any] = await pool.check("carol", {"tag": "c"})
        assert pool.busy == 0
        pool.close()
        return result

    assert run(scenario()) == {"tag": "c"}


def test_checks_run_in_the_pools_own_threads_not_the_event_loop():
    async def scenario() -> float:
        pool = ValidatorPool([Stub([], delay=0.5), Stub([], delay=0.5)], queue_limit=5, per_owner=5)
        checks = [asyncio.create_task(pool.check(o, {"tag": o})) for o in ("a", "b", "c")]
        start = time.monotonic()
        ticks = 0
        while not all(c.done() for c in checks):
            await asyncio.sleep(0.01)
            ticks += 1
        elapsed = time.monotonic() - start
        pool.close()
        return ticks / elapsed

    assert run(scenario()) > 20  # the loop kept ticking while three half-second checks ran
