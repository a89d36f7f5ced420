"""Database: engine factory, tables, Alembic migrations. Nothing connects at import time."""

from api.db.engine import db_now, make_engine, sqlite_journal_mode
from api.db.migrate import migrate

__all__ = ["db_now", "make_engine", "migrate", "sqlite_journal_mode"]
