"""Engines for SQLite and PostgreSQL, with the transaction behaviour the job queue needs.

SQLite: Python's sqlite3 runs its own BEGIN handling, which does not BEGIN for SELECTs and
upgrades deferred transactions (SQLITE_BUSY without waiting). We switch it off and emit BEGIN
ourselves: ``BEGIN IMMEDIATE`` on engines derived with ``execution_options(write=True)`` (claims,
heartbeats, completions take the write lock up front), plain ``BEGIN`` for reads. WAL is used
only from SQLite 3.51.3 on: earlier versions corrupt WAL databases that several processes
write and checkpoint at once (the WAL-reset bug), which is exactly API + workers.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from sqlalchemy import Engine, create_engine, event, literal_column
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import Float

WAL_SAFE_SQLITE = (3, 51, 3)
BUSY_TIMEOUT_MS = 30_000


def sqlite_journal_mode(version: tuple[int, ...] = sqlite3.sqlite_version_info) -> str:
    """WAL where the WAL-reset bug is fixed, the rollback journal (DELETE) before that."""
    return "WAL" if tuple(version) >= WAL_SAFE_SQLITE else "DELETE"


def make_engine(url: str) -> Engine:
    """An engine for ``url``; use ``engine.execution_options(write=True)`` for writes."""
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})
    mode = sqlite_journal_mode()

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA journal_mode={mode}")
        cursor.execute("PRAGMA synchronous=FULL")  # a 201 must survive power loss
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")

    return engine


def db_now(engine: Engine) -> ColumnElement[float]:
    """The database's clock in epoch seconds, so leases do not depend on worker clocks."""
    if engine.dialect.name == "sqlite":
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    return literal_column("CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)", Float)
