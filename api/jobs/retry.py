"""What to do after an attempt fails: retry later, or fail now (procrastinate's RetryStrategy)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """How an attempt ended, as the worker saw it."""

    code: str
    message: str
    retryable: bool


@dataclass(frozen=True, kw_only=True)
class RetryDecision:
    retry_in_s: float


@dataclass(frozen=True, kw_only=True)
class RetryStrategy:
    """Exponential backoff for retryable failures, capped by the job's ``max_attempts``.

    Non-retryable failures (a bad model, an unknown name: ``AutopruneError.retryable=False``)
    fail at once; crashes, OOM kills and lost leases retry until the cap, so a poison job
    stops after ``max_attempts`` instead of looping.
    """

    base_s: float = 5.0
    factor: float = 2.0

    def decide(self, outcome: Outcome, attempt: int, max_attempts: int) -> RetryDecision | None:
        if not outcome.retryable or attempt >= max_attempts:
            return None
        return RetryDecision(retry_in_s=self.base_s * self.factor ** (attempt - 1))
