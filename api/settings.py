"""Service configuration from ``AUTOPRUNE_*`` environment variables (pydantic-settings).

Nothing is read at import time: :func:`get_settings` builds and caches one instance, and tests
build their own. The validators refuse configurations that would be unsafe rather than
silently fixing them.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

from pydantic import model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

MiB = 1 << 20
KNOWN_DEFAULT_PASSWORDS = ("changethis", "postgres", "password", "secret")


class Settings(BaseSettings):
    """Every knob of the API, the validator and the workers."""

    model_config = SettingsConfigDict(env_prefix="AUTOPRUNE_", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("autoprune-data")
    database_url: str = ""  # empty: SQLite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8000

    # uploads and inputs
    max_upload_bytes: int = 512 * MiB
    max_field_bytes: int = 64 * 1024
    max_fields: int = 32
    max_archive_members: int = 20_000
    max_archive_bytes: int = 2048 * MiB
    max_tensor_elements: int = 200_000_000
    validation_timeout_s: float = 120.0
    validators: int = 2  # validator processes: submissions checked at once
    validation_queue: int = 16  # submissions that may wait for a validator (beyond: 503, retry)
    validations_per_owner: int = 4  # one owner's submissions being checked or waiting (beyond: 429)
    validator_memory_bytes: int = 4096 * MiB  # memory one check may map on top of the started validator (0: no cap)
    validation_cpu_s: float = 120.0  # CPU seconds one check may use
    max_data_bytes: int = 512 * MiB  # an uploaded dataset's arrays once decoded (npz 'x' bytes)
    max_model_params: int = 150_000_000  # an architecture's parameters (vit_h_14: 632M)
    max_model_macs: int = 50_000_000_000  # multiply-accumulates of one forward pass at the data's input size

    # per-owner quotas and retention (0: none)
    max_queued_per_owner: int = 20  # an owner's jobs waiting to run (beyond: 429 queue_quota)
    max_running_per_owner: int = 2  # an owner's jobs running at once (the rest wait their turn)
    max_stored_bytes_per_owner: int = 20 * 1024 * MiB  # inputs + artifacts kept (beyond: 413 storage_quota)
    retention_days: float = 30.0  # finished jobs (rows, inputs, artifacts) are deleted this long after
    retention_sweep_s: float = 3600.0  # how often a worker looks for them

    # access
    requests_per_minute: int = 600
    submits_per_minute: int = 30
    metrics_token: str = ""  # a separate bearer token for the whole service's /metrics; owners see only theirs
    docs: bool | None = None  # /docs, /redoc and /openapi.json (default: on in development, off in production)

    # workers
    lease_s: float = 60.0
    heartbeat_s: float = 10.0
    reaper_s: float = 15.0
    poll_s: float = 1.0
    max_attempts: int = 3
    retry_backoff_s: float = 5.0
    max_job_s: float = 6 * 3600.0
    cancel_grace_s: float = 10.0
    child_threads: int = 0  # 0: the worker's cores divided by its concurrency
    device: str = "auto"  # where a worker's jobs compute: auto (its CUDA GPU if any), cpu, cuda[:N]
    child_memory_bytes: int = (
        16 * 1024 * MiB
    )  # memory a CPU job may map on top of its started process (0: no cap; not on a GPU)
    max_job_cpu_s: float = 0.0  # CPU seconds one attempt may use (0: max_job_s x its threads)

    # pipeline knobs the operator (not the caller) decides
    latency_repeats: int = 30
    calibration_batches: int = 8

    @model_validator(mode="after")
    def _refuse_unsafe(self) -> Settings:
        positive = {
            "max_upload_bytes": self.max_upload_bytes, "max_field_bytes": self.max_field_bytes,
            "max_fields": self.max_fields, "max_archive_members": self.max_archive_members,
            "max_archive_bytes": self.max_archive_bytes, "max_tensor_elements": self.max_tensor_elements,
            "requests_per_minute": self.requests_per_minute, "submits_per_minute": self.submits_per_minute,
            "lease_s": self.lease_s, "heartbeat_s": self.heartbeat_s, "max_attempts": self.max_attempts,
            "max_job_s": self.max_job_s, "latency_repeats": self.latency_repeats, "validators": self.validators,
            "validation_queue": self.validation_queue, "validations_per_owner": self.validations_per_owner,
            "validation_cpu_s": self.validation_cpu_s, "max_data_bytes": self.max_data_bytes,
            "max_model_params": self.max_model_params, "max_model_macs": self.max_model_macs,
        }  # fmt: skip
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"AUTOPRUNE_{name.upper()} must be positive, not {value}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError(
                "AUTOPRUNE_LEASE_S must be at least twice AUTOPRUNE_HEARTBEAT_S, or live jobs lose their lease"
            )
        if ":memory:" in self.database_url or self.database_url.rstrip("/") == "sqlite:":
            raise ValueError("an in-memory SQLite database cannot be shared by the API and the workers")
        url = self.database_url.lower()
        if self.environment == "production" and any(f":{p}@" in url for p in KNOWN_DEFAULT_PASSWORDS):
            raise ValueError("the database password is a well-known default; set a real one in production")
        if self.metrics_token and len(self.metrics_token) < 24:
            raise ValueError("AUTOPRUNE_METRICS_TOKEN must be at least 24 characters (e.g. `openssl rand -hex 16`)")
        if self.environment == "production" and self.host in ("0.0.0.0", "::") and url.startswith("sqlite"):
            raise ValueError("serving on all interfaces with SQLite: use PostgreSQL behind a proxy in production")
        return self

    @property
    def docs_enabled(self) -> bool:
        return self.environment == "development" if self.docs is None else self.docs

    @property
    def db_url(self) -> str:
        """The SQLAlchemy URL: psycopg 3 for PostgreSQL, a file in data_dir by default."""
        url = self.database_url or f"sqlite:///{(self.data_dir / 'autoprune.db').resolve()}"
        for prefix in ("postgresql://", "postgres://"):
            if url.startswith(prefix):
                return "postgresql+psycopg://" + url.removeprefix(prefix)
        return url

    @property
    def search_storage_url(self) -> str:
        """Where evolution searches keep their Optuna studies (resumable, visible to every worker).

        Not in the jobs' schema: Optuna versions its tables with Alembic's default table name, as
        we do. PostgreSQL: the same database, schema ``optuna`` (migration 0002); SQLite: a file
        of its own beside the database.
        """
        url = self.db_url
        if url.startswith("postgresql"):
            return url + ("&" if "?" in url else "?") + "options=-csearch_path%3Doptuna"
        return f"sqlite:///{(self.data_dir / 'optuna.db').resolve()}"


@functools.cache
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings()
