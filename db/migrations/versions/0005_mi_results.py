"""Held-out mutual information per evaluate job and scoring model.

Revision ID: 0005
Revises: 0004

A new table, ``mi_results``: one row per (evaluate job, scoring model) with the InfoNCE
lower bound, row and column accuracy (each with its bootstrap 95% interval) and the
loss. Nothing stored before changes. Column types are spelled out here (not imported
from db.models), so that this file keeps describing revision 0005.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FIGURES = ("mi_lower_bound", "row_accuracy", "col_accuracy")


def upgrade() -> None:
    op.create_table(
        "mi_results",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer, nullable=False),
        sa.Column("experiment_id", sa.Integer, nullable=True),
        sa.Column("iteration", sa.Integer, nullable=True),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("scorer", sa.String(200), nullable=False),
        sa.Column("model", sa.Text, nullable=True),
        sa.Column("n_queries", sa.Integer, nullable=False),
        sa.Column("n_constitutions", sa.Integer, nullable=False),
        sa.Column("temperature", sa.Float, nullable=True),
        *[sa.Column(f"{f}{suffix}", sa.Float, nullable=False) for f in FIGURES for suffix in ("", "_ci_low", "_ci_high")],
        sa.Column("loss", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_mi_results"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_mi_results_job_id_jobs", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], name="fk_mi_results_experiment_id_experiments"),
        sa.UniqueConstraint("job_id", "scorer", name="uq_mi_results_job_id_scorer"),
    )
    op.create_index("ix_mi_results_job_id", "mi_results", ["job_id"])
    op.create_index("ix_mi_results_experiment_id", "mi_results", ["experiment_id"])


def downgrade() -> None:
    op.drop_table("mi_results")
