"""a schema of its own for Optuna's tables on PostgreSQL

Optuna's RDBStorage versions its tables with Alembic under the default ``alembic_version``
table name, the one ours uses: sharing a schema, each would read the other's revision. On
PostgreSQL the evolution studies live in schema ``optuna`` (the worker's storage URL sets
``search_path``); on SQLite they get a file of their own, so there is nothing to do.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

OPTUNA_SCHEMA = "optuna"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP SCHEMA IF EXISTS {OPTUNA_SCHEMA} CASCADE")
