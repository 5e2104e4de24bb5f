"""Sweeps: experiments submitted together as the points of a grid over spec fields.

Revision ID: 0008
Revises: 0007

* ``sweeps`` (id, name, grid, created_at): one row per submitted sweep; ``grid`` is the
  spec's ``sweep`` section ({dotted path: [values]}).
* ``experiments.sweep_id`` (nullable, indexed) and ``experiments.sweep_point`` (the
  point's values, {dotted path: value}): null for every experiment stored before, and
  for any submitted on its own.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("grid", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweeps"),
    )
    with op.batch_alter_table("experiments") as batch:
        batch.add_column(sa.Column("sweep_id", sa.Integer))
        batch.add_column(sa.Column("sweep_point", JSON))
        batch.create_foreign_key("fk_experiments_sweep_id_sweeps", "sweeps", ["sweep_id"], ["id"])
        batch.create_index("ix_experiments_sweep_id", ["sweep_id"])


def downgrade() -> None:
    with op.batch_alter_table("experiments") as batch:
        batch.drop_index("ix_experiments_sweep_id")
        batch.drop_constraint("fk_experiments_sweep_id_sweeps", type_="foreignkey")
        batch.drop_column("sweep_point")
        batch.drop_column("sweep_id")
    op.drop_table("sweeps")
