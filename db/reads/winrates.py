"""Reads for the Win rates page: what orders checkpoints on the x axis, and the filters.

Win rates themselves come from db.ingest.judgment_rows through services.exports.winrates
(the same table as ``sami winrates`` and ``sami export winrates``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from db.models import Checkpoint, ResponseSource
from db.reads import jobs

sources = ResponseSource.__table__
checkpoints = Checkpoint.__table__

# The page's experiment filter lists what the Queue page lists (and shares its cached read).
experiment_choices = jobs.experiment_choices


def source_order(conn: Connection) -> list[dict[str, Any]]:
    """Every response source with what orders it: id, label, kind, experiment_id, and its
    checkpoint's iteration and step (None for baselines and imported files)."""
    stmt = (select(sources.c.id, sources.c.label, sources.c.kind, sources.c.experiment_id,
                   checkpoints.c.iteration, checkpoints.c.step)
            .select_from(sources.outerjoin(checkpoints, checkpoints.c.id == sources.c.checkpoint_id))
            .order_by(sources.c.id))
    return [dict(r) for r in conn.execute(stmt).mappings()]

