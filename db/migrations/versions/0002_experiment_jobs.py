"""Experiments as DAGs of stage jobs: what each job produces, and idempotent response ingestion.

Revision ID: 0002
Revises: 0001

* ``jobs.iteration`` (0 = baseline) and ``jobs.label`` (e.g. "base", "iteration-1"):
  the plan's bookkeeping that ingestion needs (a checkpoint's iteration, a response
  source's label). Nullable: jobs enqueued by hand, and every job of an older
  database, have neither.
* ``response_sources.temperatures``: the temperatures a sample job used.
* ``responses``: one row per (source, query, temperature, sample index), so that
  ingesting a sample job's responses again updates rather than duplicates them.
  Before this revision nothing wrote responses, so the unique index cannot meet
  duplicates in an older database.

Only columns and indexes are added: existing rows are kept as they are.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
RESPONSES_KEY = "uq_responses_source_query_temperature_sample"


def upgrade() -> None:
    # SQLite adds nullable columns in place (ALTER TABLE ADD COLUMN): no table copy.
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("iteration", sa.Integer()))
        batch.add_column(sa.Column("label", sa.String(200)))
    with op.batch_alter_table("response_sources") as batch:
        batch.add_column(sa.Column("temperatures", JSON))
    op.create_index(RESPONSES_KEY, "responses", ["source_id", "query_id", "temperature", "sample_index"],
                    unique=True)


def downgrade() -> None:
    op.drop_index(RESPONSES_KEY, table_name="responses")
    with op.batch_alter_table("response_sources") as batch:
        batch.drop_column("temperatures")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("label")
        batch.drop_column("iteration")
