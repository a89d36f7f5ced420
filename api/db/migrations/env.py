"""Alembic environment: runs on the connection handed over by api.db.migrate (or a URL)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from api.db.tables import Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic upgrade head` from the command line
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from api.settings import get_settings

        url = get_settings().db_url
    with create_engine(url).begin() as conn:
        context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
        context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
