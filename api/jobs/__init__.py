"""Jobs: the value objects, the store port and its SQL implementation, the retry strategy."""

from api.jobs.model import (
    SEARCH_OVER_STAGES,
    Artifact,
    Job,
    JobKind,
    JobStatus,
    NewJob,
    Quota,
    Stage,
    Usage,
    overall_progress,
)
from api.jobs.retry import Outcome, RetryStrategy
from api.jobs.sql_store import SqlJobStore
from api.jobs.store import JobStore, KeyTaken, Lease, QuotaExceeded

__all__ = [
    "SEARCH_OVER_STAGES", "Artifact", "Job", "JobKind", "JobStatus", "JobStore", "KeyTaken", "Lease", "NewJob", "Outcome", "Quota", "QuotaExceeded",
    "RetryStrategy", "SqlJobStore", "Stage", "Usage", "overall_progress",
]  # fmt: skip
