"""Reads for the Queue page: jobs with their worker and dependencies, one job's detail,
an experiment's DAG, and what a cancel blocked.

Plain functions of a Connection returning lists of dicts (timestamps stay datetimes),
so that ``app.state.load`` can cache them and pandas can frame them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from db.experiments import set_label, set_members
from db.models import BLOCKED, Constitution, Experiment, Job, Worker, job_dependencies
from db.queue import dependencies

jobs = Job.__table__
workers = Worker.__table__
experiments = Experiment.__table__
constitutions = Constitution.__table__
deps = job_dependencies

# What the jobs table needs (no spec, outputs, error: they can be large; job_detail has them).
_TABLE_COLUMNS = (
    "id", "kind", "name", "status", "experiment_id", "iteration", "label", "priority", "devices_required",
    "attempts", "max_attempts", "worker_id", "cancel_requested_at", "progress_done", "progress_total",
    "progress_unit", "progress_message", "progress_eta_s", "progress_updated_at", "created_at",
    "updated_at", "started_at", "finished_at",
)


def experiment_choices(conn: Connection) -> list[dict[str, Any]]:
    """Experiments, newest first: id and name (the Queue page's selectbox)."""
    rows = conn.execute(select(experiments.c.id, experiments.c.name).order_by(experiments.c.id.desc()))
    return [dict(r) for r in rows.mappings()]


def job_rows(conn: Connection, experiment_id: int | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    """Jobs, newest first (at most ``limit``), with ``worker`` (its name), the
    constitution version the job used (``constitution_name``, ``constitution_version``;
    ``constitution_set``, "set of K: ...", when it draws from a set, else None)
    and ``depends_on`` (ids); only experiment ``experiment_id``'s when given."""
    stmt = (select(*[jobs.c[c] for c in _TABLE_COLUMNS], workers.c.name.label("worker"),
                   constitutions.c.name.label("constitution_name"),
                   constitutions.c.version.label("constitution_version"))
            .select_from(jobs.outerjoin(workers, workers.c.id == jobs.c.worker_id)
                         .outerjoin(constitutions, constitutions.c.id == jobs.c.constitution_id))
            .order_by(jobs.c.id.desc()).limit(limit))
    if experiment_id is not None:
        stmt = stmt.where(jobs.c.experiment_id == experiment_id)
    out = [dict(r) for r in conn.execute(stmt).mappings()]
    parents = dependencies(conn, [r["id"] for r in out])
    sets = set_members(conn, [r["id"] for r in out])
    for r in out:
        r["depends_on"] = parents[r["id"]]
        r["constitution_set"] = set_label(sets[r["id"]]) if r["id"] in sets else None
    return out


def job_detail(conn: Connection, job_id: int) -> dict[str, Any] | None:
    """Every column of one job, plus ``worker`` (name), ``experiment`` (name),
    ``depends_on`` and ``dependants`` (ids); None when there is no such job."""
    row = conn.execute(
        select(jobs, workers.c.name.label("worker"), experiments.c.name.label("experiment"),
               constitutions.c.name.label("constitution_name"), constitutions.c.version.label("constitution_version"))
        .select_from(jobs.outerjoin(workers, workers.c.id == jobs.c.worker_id)
                     .outerjoin(experiments, experiments.c.id == jobs.c.experiment_id)
                     .outerjoin(constitutions, constitutions.c.id == jobs.c.constitution_id))
        .where(jobs.c.id == job_id)
    ).mappings().first()
    if row is None:
        return None
    out = dict(row)
    out["depends_on"] = dependencies(conn, [job_id])[job_id]
    members = set_members(conn, [job_id]).get(job_id)
    out["constitution_set"] = set_label(members) if members else None
    out["dependants"] = list(conn.execute(
        select(deps.c.job_id).where(deps.c.depends_on_id == job_id).order_by(deps.c.job_id)).scalars())
    return out


def experiment_graph(conn: Connection, experiment_id: int) -> dict[str, list]:
    """An experiment's DAG: ``nodes`` (id, name, kind, status, cancel_requested_at), in
    id order, and ``edges`` as (depends_on_id, job_id) pairs."""
    nodes = [dict(r) for r in conn.execute(
        select(jobs.c.id, jobs.c.name, jobs.c.kind, jobs.c.status, jobs.c.cancel_requested_at)
        .where(jobs.c.experiment_id == experiment_id).order_by(jobs.c.id)).mappings()]
    parents = dependencies(conn, [n["id"] for n in nodes])
    return {"nodes": nodes, "edges": [(p, child) for child, ps in parents.items() for p in ps]}


def blocked_by(conn: Connection, job_id: int) -> list[int]:
    """Ids of the jobs blocked because ``job_id`` failed or was cancelled (directly or
    through other blocked jobs): db.queue.block_dependants names it in their error."""
    stmt = (select(jobs.c.id)
            .where(jobs.c.status == BLOCKED, jobs.c.error.like(f"blocked: dependency job {int(job_id)} %"))
            .order_by(jobs.c.id))
    return list(conn.execute(stmt).scalars())


def latest_experiment_id(conn: Connection) -> int | None:
    """The newest experiment's id (None when none has been submitted)."""
    return conn.execute(select(func.max(experiments.c.id))).scalar_one()


def all_workers(conn: Connection) -> list[Any]:
    """Every registered worker row (all columns), newest first (`sami workers`)."""
    return conn.execute(select(workers).order_by(workers.c.id.desc())).all()
