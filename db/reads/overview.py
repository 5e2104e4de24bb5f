"""Reads for the Overview page: experiments with their job counts, workers with the job
they run, and the latest failures with their error; and the sidebar's live counts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from db.models import FAILED, RUNNING, Experiment, Job, ResponseSource, Worker, utcnow
from db.queue import status_counts

jobs = Job.__table__
workers = Worker.__table__
experiments = Experiment.__table__

# A running worker not seen for this long is shown as silent (Overview) and not counted
# as alive (the sidebar).
SILENT_AFTER_S = 60.0


def live_counts(conn: Connection) -> dict[str, int]:
    """The sidebar's counts: ``workers`` (running and seen within :data:`SILENT_AFTER_S`)
    and jobs per status (db.queue.status_counts)."""
    since = utcnow() - timedelta(seconds=SILENT_AFTER_S)
    alive = conn.execute(select(func.count()).select_from(workers)
                         .where(workers.c.status == "running", workers.c.last_seen_at >= since)).scalar_one()
    return {"workers": alive, **status_counts(conn)}


def demo_experiments(conn: Connection, limit: int = 500) -> int:
    """How many of the newest ``limit`` experiments train the embedded demo model
    (``model.path: demo``), whose texts carry no meaning: the sidebar says so when any do."""
    specs = conn.execute(select(Experiment.spec).order_by(Experiment.id.desc()).limit(limit)).scalars()
    return sum(1 for spec in specs if ((spec or {}).get("model") or {}).get("path") == "demo")


def imported_sources(conn: Connection) -> int:
    """How many response sources were imported from results files (`sami import-results`)."""
    return conn.execute(select(func.count()).select_from(ResponseSource)
                        .where(ResponseSource.kind == "import")).scalar_one()


def experiment_rows(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Experiments, newest first: id, name, created_at, iterations (from the spec),
    judge baselines (from the spec) and ``counts`` (job status -> number of jobs)."""
    rows = conn.execute(
        select(experiments.c.id, experiments.c.name, experiments.c.created_at, experiments.c.spec)
        .where(experiments.c.archived_at.is_(None))
        .order_by(experiments.c.id.desc()).limit(limit)
    ).mappings().all()
    ids = [r["id"] for r in rows]
    counts: dict[int, dict[str, int]] = {i: {} for i in ids}
    if ids:
        for exp_id, status, n in conn.execute(
            select(jobs.c.experiment_id, jobs.c.status, func.count())
            .where(jobs.c.experiment_id.in_(ids)).group_by(jobs.c.experiment_id, jobs.c.status)
        ):
            counts[exp_id][status] = n
    out = []
    for r in rows:
        spec = r["spec"] or {}
        judge = spec.get("judge") or {}
        # baselines: `base`, `iteration-K`, or a model entry {model, label} (by its label)
        baselines = [b if isinstance(b, str) else b.get("label") for b in judge.get("baselines") or []]
        out.append({"id": r["id"], "name": r["name"], "created_at": r["created_at"],
                    "iterations": spec.get("iterations"), "baselines": baselines, "counts": counts[r["id"]]})
    return out


def worker_rows(conn: Connection, limit: int = 100) -> list[dict[str, Any]]:
    """Registered workers, most recently seen first, with ``current_jobs``: the ids and
    names of the jobs they run now."""
    rows = [dict(r) for r in conn.execute(
        select(workers.c.id, workers.c.name, workers.c.host, workers.c.pid, workers.c.devices, workers.c.kinds,
               workers.c.status, workers.c.started_at, workers.c.last_seen_at)
        .order_by(workers.c.last_seen_at.desc(), workers.c.id.desc()).limit(limit)
    ).mappings()]
    running: dict[int, list[dict]] = {r["id"]: [] for r in rows}
    if running:
        for j in conn.execute(
            select(jobs.c.id, jobs.c.name, jobs.c.kind, jobs.c.worker_id)
            .where(jobs.c.status == RUNNING, jobs.c.worker_id.in_(list(running))).order_by(jobs.c.id)
        ).mappings():
            running[j["worker_id"]].append({"id": j["id"], "name": j["name"] or j["kind"]})
    for r in rows:
        r["current_jobs"] = running[r["id"]]
    return rows


def recent_failures(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    """Failed jobs, most recent first: id, kind, name, experiment (id and name),
    attempts, finished_at and error (the stage's last log lines, or why)."""
    stmt = (
        select(jobs.c.id, jobs.c.kind, jobs.c.name, jobs.c.experiment_id, experiments.c.name.label("experiment"),
               jobs.c.attempts, jobs.c.max_attempts, jobs.c.exit_code, jobs.c.finished_at, jobs.c.error)
        .select_from(jobs.outerjoin(experiments, experiments.c.id == jobs.c.experiment_id))
        .where(jobs.c.status == FAILED)
        .order_by(func.coalesce(jobs.c.finished_at, jobs.c.updated_at).desc(), jobs.c.id.desc())
        .limit(limit)
    )
    return [dict(r) for r in conn.execute(stmt).mappings()]
