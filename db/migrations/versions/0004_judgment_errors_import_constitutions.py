"""Judge errors stored as judgments; the constitution source of imported results.

Revision ID: 0004
Revises: 0003

* ``judgments.verdict`` may be ``'error'`` (the judge gave no answer after all attempts;
  rationale/raw_text hold the error message, with API keys already masked by the judge
  client), so win-rate tables read from the database count errors apart. A later
  successful judgment of the same (pair, position, cache key) replaces the error row.
  SQLite rebuilds the table (batch mode copies the rows); PostgreSQL drops and adds the
  CHECK constraint. Rows already stored satisfy the wider constraint and are kept.
* ``response_sources.constitution_source``: who wrote the constitution of an imported
  results file (``opus``, ``mistral``...), parsed from the file name.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

CK = "ck_judgments_verdict"
OLD = "verdict IN ('candidate', 'baseline', 'tie', 'invalid')"
NEW = "verdict IN ('candidate', 'baseline', 'tie', 'invalid', 'error')"


def _set_verdict_check(condition: str) -> None:
    # The CHECK's name as stored (older SQLite table copies may have prefixed it twice).
    names = [c["name"] for c in sa.inspect(op.get_bind()).get_check_constraints("judgments")
             if c.get("name") and "verdict" in (c.get("sqltext") or "")]
    with op.batch_alter_table("judgments") as batch:  # SQLite: copies the table, keeping its rows
        for name in names:
            batch.drop_constraint(op.f(name), type_="check")
        batch.create_check_constraint(op.f(CK), condition)


def upgrade() -> None:
    _set_verdict_check(NEW)
    with op.batch_alter_table("response_sources") as batch:
        batch.add_column(sa.Column("constitution_source", sa.String(200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("response_sources") as batch:
        batch.drop_column("constitution_source")
    op.execute("DELETE FROM judgments WHERE verdict = 'error'")
    _set_verdict_check(OLD)
