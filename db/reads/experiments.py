"""Reads for the Experiments page: experiments side by side, their curves, and sweeps.

Each function is a fixed number of queries whatever the number of experiments (never
one per experiment), so the page stays fast with hundreds of experiments and millions
of metric rows:

* :func:`experiment_rows`: experiments with their job counts per status, first start,
  last finish and constitution version (3 queries);
* :func:`winrate_points`: win rates per (experiment, candidate, baseline, judge model,
  temperature), counted in SQL (1 query);
* :func:`mi_points`: the held-out MI lower bound of each evaluated model, scored by itself (1 query);
* :func:`loss_points`: the train loss per step of each iteration (1 query);
* :func:`final_losses`: the loss at the last logged step of each train job (1 query);
* :func:`sweep_rows`: sweeps with their number of experiments (1 query).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection

from db.models import (JOB_STATUSES, Constitution, Experiment, Job, Judgment, Metric, MIResult, Response,
                       ResponseSource, Sweep)

experiments = Experiment.__table__
jobs = Job.__table__
constitutions = Constitution.__table__
judgments = Judgment.__table__
responses = Response.__table__
response_sources = ResponseSource.__table__
metrics = Metric.__table__
mi_results = MIResult.__table__
sweeps = Sweep.__table__

LOSS = "loss"


def experiment_rows(conn: Connection, *, sweep_id: int | None = None, limit: int = 500) -> list[dict[str, Any]]:
    """Experiments not archived, newest first (those of ``sweep_id`` only, when given): id,
    name, spec, created_at, sweep_id, sweep_point, ``counts`` (job status -> number),
    started_at (the first job's start), finished_at (the last job's end), and
    ``constitution`` ({name, version} of the version its generate jobs use; None for a set)."""
    stmt = (select(experiments.c.id, experiments.c.name, experiments.c.spec, experiments.c.created_at,
                   experiments.c.sweep_id, experiments.c.sweep_point)
            .where(experiments.c.archived_at.is_(None)).order_by(experiments.c.id.desc()).limit(limit))
    if sweep_id is not None:
        stmt = stmt.where(experiments.c.sweep_id == sweep_id)
    rows = [dict(r) for r in conn.execute(stmt).mappings()]
    if not rows:
        return []
    ids = [r["id"] for r in rows]
    counted = [func.sum(case((jobs.c.status == s, 1), else_=0)).label(s) for s in JOB_STATUSES]
    agg = {r["experiment_id"]: r for r in conn.execute(
        select(jobs.c.experiment_id, *counted, func.min(jobs.c.started_at).label("started_at"),
               func.max(jobs.c.finished_at).label("finished_at"),
               func.min(case((jobs.c.kind == "generate", jobs.c.constitution_id))).label("constitution_id"))
        .where(jobs.c.experiment_id.in_(ids)).group_by(jobs.c.experiment_id)).mappings()}
    c_ids = {a["constitution_id"] for a in agg.values() if a["constitution_id"] is not None}
    versions = {r.id: {"name": r.name, "version": r.version} for r in conn.execute(
        select(constitutions.c.id, constitutions.c.name, constitutions.c.version)
        .where(constitutions.c.id.in_(c_ids)))} if c_ids else {}
    for r in rows:
        a = agg.get(r["id"])
        r["counts"] = {s: int(a[s] or 0) for s in JOB_STATUSES if a and a[s]} if a else {}
        r["started_at"] = a["started_at"] if a else None
        r["finished_at"] = a["finished_at"] if a else None
        r["constitution"] = versions.get(a["constitution_id"]) if a else None
    return rows


def winrate_points(conn: Connection, experiment_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Per (experiment, candidate label, baseline label, judge model, temperature): wins,
    losses, ties, invalid (invalid and error verdicts) and ``win_rate`` = (wins + ties/2)
    / (wins + losses + ties), None when nothing was decided."""
    if not experiment_ids:
        return []
    cand, base = responses.alias("cand"), responses.alias("base")
    csrc, bsrc = response_sources.alias("csrc"), response_sources.alias("bsrc")
    experiment = func.coalesce(jobs.c.experiment_id, csrc.c.experiment_id)
    stmt = (
        select(experiment.label("experiment_id"), csrc.c.label.label("candidate"), bsrc.c.label.label("baseline"),
               judgments.c.judge_model, cand.c.temperature,
               func.sum(case((judgments.c.verdict == "candidate", 1), else_=0)).label("wins"),
               func.sum(case((judgments.c.verdict == "baseline", 1), else_=0)).label("losses"),
               func.sum(case((judgments.c.verdict == "tie", 1), else_=0)).label("ties"),
               func.sum(case((judgments.c.verdict.in_(("invalid", "error")), 1), else_=0)).label("invalid"))
        .select_from(judgments.join(cand, cand.c.id == judgments.c.candidate_id)
                     .join(base, base.c.id == judgments.c.baseline_id)
                     .join(csrc, csrc.c.id == cand.c.source_id).join(bsrc, bsrc.c.id == base.c.source_id)
                     .outerjoin(jobs, jobs.c.id == judgments.c.job_id))
        .where(experiment.in_([int(i) for i in experiment_ids]))
        .group_by(experiment, csrc.c.label, bsrc.c.label, judgments.c.judge_model, cand.c.temperature)
    )
    out = []
    for r in conn.execute(stmt).mappings():
        d = {k: (int(v) if k in ("wins", "losses", "ties", "invalid") else v) for k, v in r.items()}
        n = d["wins"] + d["losses"] + d["ties"]
        d["n"] = n
        d["win_rate"] = (d["wins"] + d["ties"] / 2) / n if n else None
        out.append(d)
    return out


def mi_points(conn: Connection, experiment_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The held-out MI of each evaluated model of these experiments, scored by itself:
    experiment_id, job_id, iteration (0 = base), label, scorer, mi_lower_bound and its
    95% interval; by experiment, iteration."""
    if not experiment_ids:
        return []
    stmt = (select(mi_results.c.experiment_id, mi_results.c.job_id, mi_results.c.iteration, mi_results.c.label,
                   mi_results.c.scorer, mi_results.c.mi_lower_bound, mi_results.c.mi_lower_bound_ci_low,
                   mi_results.c.mi_lower_bound_ci_high)
            .where(mi_results.c.experiment_id.in_([int(i) for i in experiment_ids]),
                   mi_results.c.scorer == mi_results.c.label)
            .order_by(mi_results.c.experiment_id, mi_results.c.iteration, mi_results.c.job_id))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def loss_points(conn: Connection, experiment_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The train loss of these experiments: experiment_id, iteration, job_id, step, value;
    by experiment, iteration, step (rows without a number left out)."""
    if not experiment_ids:
        return []
    stmt = (select(jobs.c.experiment_id, jobs.c.iteration, metrics.c.job_id, metrics.c.step, metrics.c.value)
            .select_from(metrics.join(jobs, jobs.c.id == metrics.c.job_id))
            .where(jobs.c.experiment_id.in_([int(i) for i in experiment_ids]), jobs.c.kind == "train",
                   metrics.c.name == LOSS, metrics.c.value.is_not(None))
            .order_by(jobs.c.experiment_id, jobs.c.iteration, jobs.c.id, metrics.c.step))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def final_losses(conn: Connection, experiment_ids: Sequence[int]) -> list[dict[str, Any]]:
    """The loss each train job of these experiments logged at its last step: experiment_id,
    iteration, job_id, step, value. Each job's last step is one index seek (metrics are
    unique by job, name and step), not a scan of its steps."""
    if not experiment_ids:
        return []
    last_step = (select(metrics.c.step)
                 .where(metrics.c.job_id == jobs.c.id, metrics.c.name == LOSS, metrics.c.value.is_not(None))
                 .order_by(metrics.c.step.desc()).limit(1).correlate(jobs).scalar_subquery())
    train = (select(jobs.c.experiment_id, jobs.c.iteration, jobs.c.id.label("job_id"), last_step.label("step"))
             .where(jobs.c.experiment_id.in_([int(i) for i in experiment_ids]), jobs.c.kind == "train")
             .subquery())
    stmt = (select(train.c.experiment_id, train.c.iteration, train.c.job_id, train.c.step, metrics.c.value)
            .select_from(train.join(metrics, and_(metrics.c.job_id == train.c.job_id, metrics.c.name == LOSS,
                                                  metrics.c.step == train.c.step)))
            .order_by(train.c.experiment_id, train.c.iteration, train.c.job_id))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def sweep_rows(conn: Connection) -> list[dict[str, Any]]:
    """Sweeps, newest first: id, name, grid, created_at, n_experiments."""
    n = (select(experiments.c.sweep_id, func.count().label("n")).where(experiments.c.sweep_id.is_not(None))
         .group_by(experiments.c.sweep_id).subquery())
    stmt = (select(sweeps.c.id, sweeps.c.name, sweeps.c.grid, sweeps.c.created_at,
                   func.coalesce(n.c.n, 0).label("n_experiments"))
            .select_from(sweeps.outerjoin(n, n.c.sweep_id == sweeps.c.id))
            .order_by(sweeps.c.id.desc()))
    return [dict(r) for r in conn.execute(stmt).mappings()]
