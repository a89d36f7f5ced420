"""per-owner fairness and quotas: jobs.stored_bytes, jobs.stage_started_at, owner_turns

``stored_bytes`` is what a job keeps on disk (inputs, then artifacts too), summed per owner
for the storage quota; ``stage_started_at`` times the current stage (the ETA of a fine-tune);
``owner_turns`` records when each owner last had a job claimed, so claims go to the owner
served least recently.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:  # SQLite cannot ALTER most things in place
        batch.add_column(sa.Column("stored_bytes", sa.BigInteger, nullable=False, server_default="0"))
        batch.add_column(sa.Column("stage_started_at", sa.Float, nullable=True))
    op.create_index("ix_jobs_owner_status", "jobs", ["owner", "status"])
    op.create_index("ix_jobs_finished", "jobs", ["status", "finished_at"])
    op.create_table(
        "owner_turns",
        sa.Column("owner", sa.String(64), primary_key=True),
        sa.Column("last_claimed_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("owner_turns")
    op.drop_index("ix_jobs_finished", table_name="jobs")
    op.drop_index("ix_jobs_owner_status", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("stage_started_at")
        batch.drop_column("stored_bytes")
