"""Everything one API process holds open: engine, stores, validator pool, limiters. Built in lifespan."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass

from sqlalchemy import Engine

from api.artifacts import ArtifactStore
from api.db import make_engine, migrate, sqlite_journal_mode
from api.intake import ProcessLimits
from api.jobs import SqlJobStore
from api.metrics import RequestCounter
from api.security import RateLimiter, TokenStore
from api.service import JobService
from api.settings import Settings
from api.validator import ValidatorPool

log = logging.getLogger(__name__)


@dataclass
class AppState:
    settings: Settings
    engine: Engine
    tokens: TokenStore
    service: JobService
    requests: RateLimiter
    submits: RateLimiter
    responses: RequestCounter

    @classmethod
    def open(cls, settings: Settings, responses: RequestCounter) -> AppState:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(settings.db_url)
        if engine.dialect.name == "sqlite":
            log.info("SQLite %s: journal_mode=%s", sqlite3.sqlite_version, sqlite_journal_mode())
        migrate(engine)
        artifacts = ArtifactStore(settings.data_dir)
        store = SqlJobStore(engine)
        artifacts.sweep_partials()
        artifacts.sweep_scratch(store.not_running)
        if swept := artifacts.sweep_orphans(store.known_ids):
            log.warning("removed %d job dirs that no job row names (an API stopped mid-submission)", swept)
        limits = ProcessLimits(
            memory_bytes=settings.validator_memory_bytes, cpu_s=settings.validation_cpu_s,
            threads=max(settings.child_threads, 1),
        )  # fmt: skip
        validators = ValidatorPool.of_processes(
            settings.validators, settings.validation_timeout_s, limits,
            queue_limit=settings.validation_queue, per_owner=settings.validations_per_owner,
        )  # fmt: skip
        validators.start()
        service = JobService(settings=settings, store=store, artifacts=artifacts, validators=validators)
        return cls(
            settings=settings, engine=engine, tokens=TokenStore(engine), service=service,
            requests=RateLimiter(settings.requests_per_minute), submits=RateLimiter(settings.submits_per_minute),
            responses=responses,
        )  # fmt: skip

    def close(self) -> None:
        self.service.validators.close()
        self.engine.dispose()
