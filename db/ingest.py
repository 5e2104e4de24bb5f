"""Writes of what jobs produce: metrics (while they run) and checkpoints (when they end).

Both are idempotent upserts keyed by what identifies a record ((job, name, step) for a
metric, (job, step) for a checkpoint): a resumed stage that logs a step again, or a
worker that re-ingests after a crash, overwrites rather than duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from db.models import Checkpoint, Job, Metric, utcnow

jobs = Job.__table__
metrics = Metric.__table__
checkpoints = Checkpoint.__table__


def _upsert(conn: Connection, table, rows: list[dict], keys: list[str]) -> None:  # noqa: ANN001
    if not rows:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table)
    updated = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updated), rows)


def metric_rows(record: Mapping[str, Any]) -> list[tuple[str, float | None, Any]]:
    """Split one metrics.jsonl record into (name, value, value_json) triples.

    Numbers become ``value``; lists and dicts (e.g. the N x N ``matrix``) become
    ``value_json``; strings, booleans and non-finite numbers are kept as JSON too so
    nothing is silently lost. ``step`` is not a metric.
    """
    out: list[tuple[str, float | None, Any]] = []
    for name, v in record.items():
        if name == "step":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append((name, float(v), None))
        elif isinstance(v, float):  # nan / inf: JSON has no spelling for them
            out.append((name, None, str(v)))
        else:
            out.append((name, None, v))
    return out


def upsert_metrics(
    conn: Connection, job_id: int, records: Iterable[Mapping[str, Any]], *, now: datetime | None = None
) -> int:
    """Store metrics.jsonl records (each with an int ``step``); return the rows written."""
    now = now or utcnow()
    rows: dict[tuple[str, int], dict] = {}  # last write wins within a batch too
    for rec in records:
        step = int(rec["step"])
        for name, value, value_json in metric_rows(rec):
            rows[(name, step)] = {
                "job_id": job_id, "step": step, "name": name[:200], "value": value,
                "value_json": value_json, "created_at": now,
            }
    _upsert(conn, metrics, list(rows.values()), ["job_id", "name", "step"])
    return len(rows)


def set_metrics_offset(conn: Connection, job_id: int, offset: int) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(metrics_offset=offset))


def upsert_checkpoints(
    conn: Connection,
    job_id: int,
    items: Iterable[Mapping[str, Any]],
    *,
    experiment_id: int | None = None,
    iteration: int | None = None,
    now: datetime | None = None,
) -> int:
    """Store checkpoints ({"step", "path", "final"}) of a job; return how many."""
    now = now or utcnow()
    rows = [
        {
            "job_id": job_id, "experiment_id": experiment_id, "iteration": iteration,
            "step": int(c["step"]), "path": str(c["path"]), "final": bool(c.get("final", False)),
            "created_at": now,
        }
        for c in items
    ]
    _upsert(conn, checkpoints, rows, ["job_id", "step"])
    return len(rows)
