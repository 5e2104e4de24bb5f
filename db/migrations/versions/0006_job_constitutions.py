"""Constitution sets: the member versions a job draws from.

Revision ID: 0006
Revises: 0005

* ``job_constitutions`` (job_id, constitution_id): when an experiment's constitution is a
  set (``constitution.paths``), each member is stored as its own version and every job of
  the experiment links to all of them here (its ``constitution_id`` stays null); each
  response then points at the version its query drew. Existing jobs keep their single
  ``constitution_id`` and get no rows.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "job_constitutions",
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("constitution_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("job_id", "constitution_id", name="pk_job_constitutions"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_job_constitutions_job_id_jobs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["constitution_id"], ["constitutions.id"],
                                name="fk_job_constitutions_constitution_id_constitutions"),
    )
    op.create_index("ix_job_constitutions_constitution_id", "job_constitutions", ["constitution_id"])


def downgrade() -> None:
    op.drop_table("job_constitutions")
