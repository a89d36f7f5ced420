"""Bring a database to the newest schema with Alembic, safely from several processes at once.

The API, every worker and ``autoprune token`` call :func:`migrate` at start-up. The upgrade runs
inside one write transaction that first takes a lock (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL:
a transaction-scoped advisory lock), so concurrent starters wait and then find the schema
current instead of racing to create the same tables.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, text

MIGRATIONS = Path(__file__).parent / "migrations"
ADVISORY_LOCK_ID = 0x6A0B5  # any constant shared by every autoprune process


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def migrate(engine: Engine) -> None:
    """Upgrade to ``head``; a no-op when the schema is current."""
    config = alembic_config()
    with engine.execution_options(write=True).begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": ADVISORY_LOCK_ID})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
