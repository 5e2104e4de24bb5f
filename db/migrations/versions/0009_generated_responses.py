"""Generated data: every response a generate job sampled, kept or dropped.

Revision ID: 0009
Revises: 0008

A new table, ``generated_responses``: one row per (generate job, query, variant) with the
query, the variant's constitution, the generation prompt, the response as finished, its
token count, whether the query was kept for training and the filter that dropped it
(null when kept). Nothing stored before changes; generate jobs that finished before this
revision have no rows (their run directories keep generations.jsonl and data.jsonl).
Column types are spelled out here (not imported from db.models), so that this file keeps
describing revision 0009.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "generated_responses",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("query_id", sa.String(200), nullable=False),
        sa.Column("variant", sa.Integer, nullable=False),
        sa.Column("query", sa.Text, nullable=True),
        sa.Column("constitution", sa.Text, nullable=True),
        sa.Column("constitution_name", sa.String(200), nullable=True),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("response", sa.Text, nullable=False),
        sa.Column("n_tokens", sa.Integer, nullable=True),
        sa.Column("kept", sa.Boolean, nullable=False),
        sa.Column("dropped_by", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_generated_responses"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_generated_responses_job_id_jobs",
                                ondelete="CASCADE"),
    )
    op.create_index("uq_generated_responses_job_query_variant", "generated_responses",
                    ["job_id", "query_id", "variant"], unique=True)
    op.create_index("ix_generated_responses_job_dropped_by", "generated_responses",
                    ["job_id", "dropped_by", "query_id"])


def downgrade() -> None:
    op.drop_table("generated_responses")
