"""Reads for the Generated data page: what a generate job sampled, kept or dropped.

One row of ``generated_responses`` is one (job, query, variant): the prompt the response was
sampled under, the response as finished, whether its query was kept for training and the
filter that dropped it (``dropped_by``, None when kept; sami_core.prompts.drop_reasons).
Filtering (kept/dropped/one filter, text search) and pagination over queries happen in SQL,
so a page costs about the same with 100 rows as with 100,000.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from db.models import Experiment, GeneratedResponse, Job

rows_t = GeneratedResponse.__table__
jobs = Job.__table__
experiments = Experiment.__table__

# The status filter beside the filters' own names: every query, kept ones, dropped ones.
ALL, KEPT, DROPPED = "all", "kept", "dropped"


def generate_jobs(conn: Connection) -> list[dict[str, Any]]:
    """Generate jobs, newest first: id, name, label, iteration, status, experiment_id,
    experiment (its name), n_rows (generated responses stored)."""
    n = (select(rows_t.c.job_id, func.count().label("n_rows")).group_by(rows_t.c.job_id).subquery())
    stmt = (select(jobs.c.id, jobs.c.name, jobs.c.label, jobs.c.iteration, jobs.c.status, jobs.c.experiment_id,
                   experiments.c.name.label("experiment"), func.coalesce(n.c.n_rows, 0).label("n_rows"))
            .outerjoin(experiments, experiments.c.id == jobs.c.experiment_id)
            .outerjoin(n, n.c.job_id == jobs.c.id)
            .where(jobs.c.kind == "generate").order_by(jobs.c.id.desc()))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def filter_counts(conn: Connection, job_id: int) -> list[dict[str, Any]]:
    """Per reason (``dropped_by``; None = kept), in one GROUP BY: responses and distinct
    queries with a response of that reason; kept first, then by responses, descending."""
    stmt = (select(rows_t.c.dropped_by, func.count().label("responses"),
                   func.count(rows_t.c.query_id.distinct()).label("queries"))
            .where(rows_t.c.job_id == job_id).group_by(rows_t.c.dropped_by))
    out = [dict(r) for r in conn.execute(stmt).mappings()]
    return sorted(out, key=lambda r: (r["dropped_by"] is not None, -r["responses"], r["dropped_by"] or ""))


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _where(job_id: int, status: str, search: str | None):  # noqa: ANN202
    """The condition on rows selecting the queries that pass: ``status`` is :data:`ALL`,
    :data:`KEPT`, :data:`DROPPED` or a filter's name (queries with a response it dropped);
    ``search`` matches the query or any of its responses (case-insensitive)."""
    conds = [rows_t.c.job_id == job_id]
    if status == KEPT:
        conds.append(rows_t.c.kept.is_(True))
    elif status == DROPPED:
        conds.append(rows_t.c.kept.is_(False))
    elif status != ALL:
        conds.append(rows_t.c.dropped_by == status)
    if search and search.strip():
        # One scan of the job's rows for the matching queries (not a subquery per row).
        pattern = _like(search.strip())
        other = rows_t.alias("other")
        matching = select(other.c.query_id).where(other.c.job_id == job_id, or_(
            other.c.response.ilike(pattern, escape="\\"),
            and_(other.c.variant == 0, other.c.query.ilike(pattern, escape="\\"))))  # a query's text: once
        conds.append(rows_t.c.query_id.in_(matching))
    return and_(*conds)


def count_queries(conn: Connection, job_id: int, *, status: str = ALL, search: str | None = None) -> int:
    """How many queries pass the filters."""
    stmt = select(func.count(rows_t.c.query_id.distinct())).where(_where(job_id, status, search))
    return conn.execute(stmt).scalar_one()


def query_page(conn: Connection, job_id: int, *, status: str = ALL, search: str | None = None, page: int = 1,
               page_size: int = 10) -> list[dict[str, Any]]:
    """One page (1-based) of queries in the order generated: query_id, query, kept, and
    ``variants``: every response of the query (variant order) with variant, constitution,
    constitution_name, prompt, response, n_tokens, kept, dropped_by."""
    size = max(1, page_size)
    ids_stmt = (select(rows_t.c.query_id).where(_where(job_id, status, search)).group_by(rows_t.c.query_id)
                .order_by(func.min(rows_t.c.id)).limit(size).offset(max(0, page - 1) * size))
    ids = list(conn.execute(ids_stmt).scalars())
    if not ids:
        return []
    stmt = (select(rows_t.c.query_id, rows_t.c.query, rows_t.c.variant, rows_t.c.constitution,
                   rows_t.c.constitution_name, rows_t.c.prompt, rows_t.c.response, rows_t.c.n_tokens, rows_t.c.kept,
                   rows_t.c.dropped_by)
            .where(rows_t.c.job_id == job_id, rows_t.c.query_id.in_(ids)).order_by(rows_t.c.variant))
    by_query: dict[str, list[dict]] = {q: [] for q in ids}
    for r in conn.execute(stmt).mappings():
        by_query[r["query_id"]].append(dict(r))
    return [{"query_id": q, "query": next((v["query"] for v in vs if v["query"]), None),
             "kept": all(v["kept"] for v in vs), "variants": vs} for q, vs in by_query.items()]
