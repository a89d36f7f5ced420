"""ORM tables. Times are epoch seconds (float) from the database clock; ids are UUID4 hex."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class TokenRow(Base):
    """An API token: only its SHA-256 is stored."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[float] = mapped_column(Float)


class JobRow(Base):
    """One pruning job and its lease; the worker fences its writes with (attempt, worker_id)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_claim", "status", "run_after", "created_at"),
        Index("ix_jobs_owner_created", "owner", "created_at"),
        Index("ix_jobs_parent", "parent_id"),
        Index("ux_jobs_owner_idempotency", "owner", "idempotency_key", unique=True),  # NULL keys never collide
        Index("ix_jobs_owner_status", "owner", "status"),
        Index("ix_jobs_finished", "status", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    # "prune": a user's job; "search": a helper adding trials to its parent's evolution search
    kind: Mapped[str] = mapped_column(String(16), server_default="prune")
    parent_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    inputs: Mapped[dict[str, Any]] = mapped_column(JSON)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    run_after: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # the submitter's Idempotency-Key, and the SHA-256 of the request it came with (a replay must match)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    request_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stored_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")  # inputs + artifacts on disk
    stage_started_at: Mapped[float | None] = mapped_column(Float, nullable=True)  # when the current stage began


class OwnerTurnRow(Base):
    """When each owner last had a job claimed: claims go to the owner served least recently."""

    __tablename__ = "owner_turns"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_claimed_at: Mapped[float] = mapped_column(Float)


class ArtifactRow(Base):
    """A published output file; downloads resolve only paths recorded here."""

    __tablename__ = "artifacts"

    job_id: Mapped[str] = mapped_column(String(32), ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text)  # relative to the data dir
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
