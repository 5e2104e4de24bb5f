"""Judgments stored per pair and position, as judge jobs ingest them.

Revision ID: 0003
Revises: 0002

``judgments.cache_key`` was unique, but one cache key can stand for several judgments:
the same texts shown the same way (e.g. a candidate whose response equals the
baseline's, judged in both orders) are one judge request, reused from the cache. A
judgment is now identified by (candidate response, baseline response, position shown,
cache key); ``cache_key`` keeps a plain index for cache look-ups. Rows already stored
satisfy the new key (they were unique on cache_key alone), so they are kept as they are.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

KEY = "uq_judgments_pair_position_key"


def upgrade() -> None:
    with op.batch_alter_table("judgments") as batch:  # SQLite: copies the table, keeping its rows
        batch.drop_constraint("uq_judgments_cache_key", type_="unique")
    op.create_index("ix_judgments_cache_key", "judgments", ["cache_key"])
    op.create_index(KEY, "judgments", ["candidate_id", "baseline_id", "candidate_position", "cache_key"],
                    unique=True)


def downgrade() -> None:
    op.drop_index(KEY, table_name="judgments")
    op.drop_index("ix_judgments_cache_key", table_name="judgments")
    with op.batch_alter_table("judgments") as batch:
        batch.create_unique_constraint("uq_judgments_cache_key", ["cache_key"])
