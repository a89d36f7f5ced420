"""Prometheus text exposition, computed from the store at scrape time.

Job counts and durations come from the database, so every API process reports the same
numbers whatever process did the work; request counts are this process's own. An owner's
token sees its own jobs only; the operator's token (``AUTOPRUNE_METRICS_TOKEN``) sees the whole
service, HTTP responses included.
"""

from __future__ import annotations

from collections import Counter

from api.jobs import JobStatus, JobStore

DURATION_BUCKETS = (10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class RequestCounter:
    """HTTP responses by method and status class, for this process."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def observe(self, method: str, status: int) -> None:
        self.counts[(method, f"{status // 100}xx")] += 1


def render(store: JobStore, requests: RequestCounter, owner: str | None = None) -> str:
    """The whole service's metrics, or (``owner``) that owner's jobs only."""
    counts = store.counts(owner)
    durations = store.durations(owner)
    lines = [
        "# HELP autoprune_queue_depth Jobs waiting for a worker.",
        "# TYPE autoprune_queue_depth gauge",
        f"autoprune_queue_depth {counts.get(JobStatus.QUEUED.value, 0)}",
        "# HELP autoprune_jobs Jobs by status.",
        "# TYPE autoprune_jobs gauge",
        *(f'autoprune_jobs{{status="{s.value}"}} {counts.get(s.value, 0)}' for s in JobStatus),
        "# HELP autoprune_job_duration_seconds Start-to-finish seconds of the last 1000 succeeded jobs.",
        "# TYPE autoprune_job_duration_seconds histogram",
        *(
            f'autoprune_job_duration_seconds_bucket{{le="{b}"}} {sum(d <= b for d in durations)}'
            for b in DURATION_BUCKETS
        ),
        f'autoprune_job_duration_seconds_bucket{{le="+Inf"}} {len(durations)}',
        f"autoprune_job_duration_seconds_sum {sum(durations):.3f}",
        f"autoprune_job_duration_seconds_count {len(durations)}",
    ]
    if owner is not None:
        return "\n".join(lines) + "\n"
    lines += [
        "# HELP autoprune_http_responses_total HTTP responses of this API process.",
        "# TYPE autoprune_http_responses_total counter",
        *(
            f'autoprune_http_responses_total{{method="{m}",code="{c}"}} {n}'
            for (m, c), n in sorted(requests.counts.items())
        ),
    ]
    return "\n".join(lines) + "\n"
