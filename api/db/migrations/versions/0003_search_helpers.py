"""search helpers: jobs.kind and jobs.parent_id

A job of kind ``search`` is a helper row: it adds trials to the evolution search of its parent
(a ``prune`` job) and is never shown to users on its own.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("kind", sa.String(16), nullable=False, server_default="prune"))
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
    op.create_index("ix_jobs_parent", "jobs", ["parent_id"])


def downgrade() -> None:
    op.drop_index("ix_jobs_parent", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("parent_id")
        batch.drop_column("kind")
