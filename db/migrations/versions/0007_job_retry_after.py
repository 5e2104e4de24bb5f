"""A transient failure's backoff: the earliest time a requeued job may be claimed again.

Revision ID: 0007
Revises: 0006

* ``jobs.retry_after`` (nullable): set when a stage's transient failure (exit 75: an
  endpoint unreachable, a timeout, a rate limit, the hub offline) requeues the job; no
  worker claims it before then, so the attempts are spread over minutes rather than
  spent in seconds. Null (claimable at once) for every job stored before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # SQLite adds a nullable column in place (ALTER TABLE ADD COLUMN): no table copy.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("retry_after", sa.DateTime(timezone=True)))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retry_after")
