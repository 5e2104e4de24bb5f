"""Reads for the Constitutions and New experiment pages: constitution versions (with
their principles), and which experiments and jobs used a version.

Versions are immutable rows (db.experiments.constitution_version makes them); jobs
point at the version they used through ``jobs.constitution_id``, or, when they draw from a
constitution set, at every member version through ``job_constitutions``. Plain functions of a
Connection returning lists of dicts (timestamps stay datetimes).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select, union_all
from sqlalchemy.engine import Connection

from db.experiments import set_label, set_members
from db.models import Constitution, Experiment, Job, job_constitutions

constitutions = Constitution.__table__
jobs = Job.__table__
experiments = Experiment.__table__


def versions(conn: Connection) -> list[dict[str, Any]]:
    """Every version of every constitution, by name then newest version first: id, name,
    version, parent_id, parent_version, description, created_at, principles,
    n_principles, n_jobs and n_experiments (that used this version)."""
    parent = constitutions.alias("parent")
    links = union_all(  # (version, job, experiment): a job's own version and its set's members
        select(jobs.c.constitution_id.label("cid"), jobs.c.id.label("job_id"), jobs.c.experiment_id)
        .where(jobs.c.constitution_id.is_not(None)),
        select(job_constitutions.c.constitution_id.label("cid"), jobs.c.id.label("job_id"), jobs.c.experiment_id)
        .select_from(job_constitutions.join(jobs, jobs.c.id == job_constitutions.c.job_id))).subquery()
    usage = (select(links.c.cid, func.count(func.distinct(links.c.job_id)).label("n_jobs"),
                    func.count(func.distinct(links.c.experiment_id)).label("n_experiments"))
             .group_by(links.c.cid).subquery())
    stmt = (select(constitutions.c.id, constitutions.c.name, constitutions.c.version, constitutions.c.parent_id,
                   parent.c.version.label("parent_version"), constitutions.c.description,
                   constitutions.c.created_at, constitutions.c.principles,
                   func.coalesce(usage.c.n_jobs, 0).label("n_jobs"),
                   func.coalesce(usage.c.n_experiments, 0).label("n_experiments"))
            .select_from(constitutions.outerjoin(parent, parent.c.id == constitutions.c.parent_id)
                         .outerjoin(usage, usage.c.cid == constitutions.c.id))
            .order_by(constitutions.c.name, constitutions.c.version.desc()))
    out = []
    for r in conn.execute(stmt).mappings():
        row = dict(r)
        row["principles"] = list(row["principles"] or [])
        row["n_principles"] = len(row["principles"])
        out.append(row)
    return out


def usage(conn: Connection, constitution_id: int) -> list[dict[str, Any]]:
    """The experiments whose jobs used this version: experiment_id, experiment (name),
    n_jobs and job_ids (ascending); jobs outside an experiment have experiment_id None."""
    stmt = (select(jobs.c.id, jobs.c.experiment_id, experiments.c.name.label("experiment"))
            .select_from(jobs.outerjoin(experiments, experiments.c.id == jobs.c.experiment_id))
            .where(or_(jobs.c.constitution_id == constitution_id,
                       jobs.c.id.in_(select(job_constitutions.c.job_id)
                                     .where(job_constitutions.c.constitution_id == constitution_id))))
            .order_by(jobs.c.experiment_id, jobs.c.id))
    by_exp: dict[Any, dict[str, Any]] = {}
    for r in conn.execute(stmt).mappings():
        row = by_exp.setdefault(r["experiment_id"], {"experiment_id": r["experiment_id"],
                                                     "experiment": r["experiment"], "n_jobs": 0, "job_ids": []})
        row["n_jobs"] += 1
        row["job_ids"].append(r["id"])
    return list(by_exp.values())


def job_versions(conn: Connection, job_ids: list[int]) -> dict[int, str]:
    """job id -> "<name> v<version>" of the constitution version it used, or "set of K:
    ..." for a job that draws from a set (jobs without either are left out): what a jobs
    table shows next to each job."""
    if not job_ids:
        return {}
    stmt = (select(jobs.c.id, constitutions.c.name, constitutions.c.version)
            .select_from(jobs.join(constitutions, constitutions.c.id == jobs.c.constitution_id))
            .where(jobs.c.id.in_([int(i) for i in job_ids])))
    out = {r.id: f"{r.name} v{r.version}" for r in conn.execute(stmt)}
    out.update({j: set_label(m) for j, m in set_members(conn, job_ids).items()})
    return out
