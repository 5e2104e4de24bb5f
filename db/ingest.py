"""Writes of what jobs produce: metrics (while they run), checkpoints and responses
(when they end).

All are idempotent, keyed by what identifies a record ((job, name, step) for a metric,
(job, step) for a checkpoint, the sample job for a response source, (source, query,
temperature, sample index) for a response): a resumed stage that logs a step again,
or a worker that re-ingests after a crash, overwrites rather than duplicates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from db.models import Checkpoint, Job, Metric, Response, ResponseSource, utcnow

jobs = Job.__table__
metrics = Metric.__table__
checkpoints = Checkpoint.__table__
response_sources = ResponseSource.__table__
responses = Response.__table__


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


def find_checkpoint(conn: Connection, path: str, *, experiment_id: int | None = None) -> int | None:
    """The id of the checkpoint stored with exactly this ``path`` (of this experiment,
    when given), or None."""
    stmt = select(checkpoints.c.id).where(checkpoints.c.path == path)
    if experiment_id is not None:
        stmt = stmt.where(checkpoints.c.experiment_id == experiment_id)
    return conn.execute(stmt.order_by(checkpoints.c.id.desc()).limit(1)).scalar_one_or_none()


def upsert_response_source(
    conn: Connection,
    job_id: int,
    *,
    kind: str,
    label: str,
    checkpoint_id: int | None = None,
    model: str | None = None,
    experiment_id: int | None = None,
    temperatures: list[float] | None = None,
    now: datetime | None = None,
) -> int:
    """The response source of sample job ``job_id`` (one per job), created or updated; its id."""
    values = {"kind": kind, "label": label[:200], "checkpoint_id": checkpoint_id, "model": model,
              "experiment_id": experiment_id, "temperatures": temperatures}
    found = conn.execute(select(response_sources.c.id).where(response_sources.c.job_id == job_id)
                         .order_by(response_sources.c.id).limit(1)).scalar_one_or_none()
    if found is not None:
        conn.execute(update(response_sources).where(response_sources.c.id == found).values(**values))
        return found
    return conn.execute(
        insert(response_sources).values(job_id=job_id, created_at=now or utcnow(), **values)
        .returning(response_sources.c.id)
    ).scalar_one()


RESPONSE_KEY = ["source_id", "query_id", "temperature", "sample_index"]


def upsert_responses(
    conn: Connection, source_id: int, items: Iterable[Mapping[str, Any]], *, constitution_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Store responses ({"query_id", "query", "temperature", "text", "n_tokens",
    "sample_index"?}) of a source; return how many."""
    now = now or utcnow()
    rows: dict[tuple, dict] = {}
    for r in items:
        row = {
            "source_id": source_id, "query_id": str(r["query_id"])[:200], "query": r.get("query"),
            "constitution_id": constitution_id, "temperature": float(r["temperature"]),
            "sample_index": int(r.get("sample_index", 0)), "text": str(r["text"]),
            "n_tokens": None if r.get("n_tokens") is None else int(r["n_tokens"]), "created_at": now,
        }
        rows[tuple(row[k] for k in RESPONSE_KEY)] = row  # last write wins within a batch too
    _upsert(conn, responses, list(rows.values()), RESPONSE_KEY)
    return len(rows)
