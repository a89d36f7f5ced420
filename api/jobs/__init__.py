"""Jobs: the value objects, the store port and its SQL implementation, the retry strategy."""

from api.jobs.model import Artifact, Job, JobStatus, NewJob, overall_progress
from api.jobs.retry import Outcome, RetryStrategy
from api.jobs.sql_store import SqlJobStore
from api.jobs.store import JobStore, Lease

__all__ = [
    "Artifact", "Job", "JobStatus", "JobStore", "Lease", "NewJob", "Outcome", "RetryStrategy", "SqlJobStore",
    "overall_progress",
]  # fmt: skip
