"""Reads for the Win rates page: what orders checkpoints on the x axis, and the filters.

Win rates themselves come from db.ingest.judgment_rows through workers.judging.winrates
(the same table as ``sami winrates`` and ``sami export winrates``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from db.models import Checkpoint, Experiment, Judgment, Response, ResponseSource

sources = ResponseSource.__table__
checkpoints = Checkpoint.__table__
experiments = Experiment.__table__
judgments = Judgment.__table__
responses = Response.__table__


def source_order(conn: Connection) -> list[dict[str, Any]]:
    """Every response source with what orders it: id, label, kind, experiment_id, and its
    checkpoint's iteration and step (None for baselines and imported files)."""
    stmt = (select(sources.c.id, sources.c.label, sources.c.kind, sources.c.experiment_id,
                   checkpoints.c.iteration, checkpoints.c.step)
            .select_from(sources.outerjoin(checkpoints, checkpoints.c.id == sources.c.checkpoint_id))
            .order_by(sources.c.id))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def experiment_choices(conn: Connection) -> list[dict[str, Any]]:
    """Experiments, newest first (id, name): the page's experiment filter."""
    stmt = select(experiments.c.id, experiments.c.name).order_by(experiments.c.id.desc())
    return [dict(r) for r in conn.execute(stmt).mappings()]
