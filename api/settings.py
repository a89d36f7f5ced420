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
    max_fields: int = 16
    max_archive_members: int = 20_000
    max_archive_bytes: int = 2048 * MiB
    max_tensor_elements: int = 200_000_000
    validation_timeout_s: float = 120.0

    # access
    requests_per_minute: int = 600
    submits_per_minute: int = 30

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
            "max_job_s": self.max_job_s, "latency_repeats": self.latency_repeats,
        }  # fmt: skip
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"AUTOPRUNE_{name.upper()} must be positive, not {value}")
        if self.heartbeat_s * 2 > self.lease_s:
            raise ValueError("AUTOPRUNE_LEASE_S must be at least twice AUTOPRUNE_HEARTBEAT_S, or live jobs lose their lease")
        if ":memory:" in self.database_url or self.database_url.rstrip("/") == "sqlite:":
            raise ValueError("an in-memory SQLite database cannot be shared by the API and the workers")
        url = self.database_url.lower()
        if self.environment == "production" and any(f":{p}@" in url for p in KNOWN_DEFAULT_PASSWORDS):
            raise ValueError("the database password is a well-known default; set a real one in production")
        if self.environment == "production" and self.host in ("0.0.0.0", "::") and url.startswith("sqlite"):
            raise ValueError("serving on all interfaces with SQLite: use PostgreSQL behind a proxy in production")
        return self

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
