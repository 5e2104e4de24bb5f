"""Reads for the Training page: train jobs and the metrics their runs logged.

A train stage appends one record per optimizer step to RUN_DIR/metrics.jsonl (loss,
row_loss, col_loss, row_accuracy, col_accuracy, mi_lower_bound, kl when beta > 0,
total_loss, lr, grad_norm, tokens_per_s, step_time_s, and ``matrix``: the N x N mean
log-prob matrix of that step); the worker stores numbers in ``metrics.value`` and lists
(the matrix) in ``metrics.value_json`` (db.ingest.metric_rows).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from db.models import Experiment, Job, Metric

jobs = Job.__table__
metrics = Metric.__table__
experiments = Experiment.__table__

MATRIX = "matrix"


def training_experiments(conn: Connection) -> list[dict[str, Any]]:
    """Experiments that have train jobs, newest first: id, name, n_train_jobs."""
    stmt = (select(experiments.c.id, experiments.c.name, func.count(jobs.c.id).label("n_train_jobs"))
            .join(jobs, jobs.c.experiment_id == experiments.c.id).where(jobs.c.kind == "train")
            .group_by(experiments.c.id, experiments.c.name).order_by(experiments.c.id.desc()))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def train_jobs(conn: Connection, experiment_id: int | None) -> list[dict[str, Any]]:
    """Train jobs of an experiment (``None``: train jobs outside any experiment), by
    iteration then id: id, name, label, iteration, status, progress_done, progress_total."""
    stmt = (select(jobs.c.id, jobs.c.name, jobs.c.label, jobs.c.iteration, jobs.c.status, jobs.c.progress_done,
                   jobs.c.progress_total)
            .where(jobs.c.kind == "train")
            .order_by(jobs.c.iteration.is_(None), jobs.c.iteration, jobs.c.id))
    stmt = stmt.where(jobs.c.experiment_id.is_(None) if experiment_id is None
                      else jobs.c.experiment_id == experiment_id)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def scalar_metrics(conn: Connection, job_ids: tuple[int, ...], names: tuple[str, ...]) -> list[dict[str, Any]]:
    """(job_id, step, name, value) of the named numeric metrics of these jobs, by job,
    name and step; rows without a number (nan, null) are left out."""
    if not job_ids or not names:
        return []
    stmt = (select(metrics.c.job_id, metrics.c.step, metrics.c.name, metrics.c.value)
            .where(metrics.c.job_id.in_(list(job_ids)), metrics.c.name.in_(list(names)),
                   metrics.c.value.is_not(None))
            .order_by(metrics.c.job_id, metrics.c.name, metrics.c.step))
    return [dict(r) for r in conn.execute(stmt).mappings()]


def matrix_steps(conn: Connection, job_id: int) -> list[int]:
    """Steps of a job that logged a log-prob matrix, ascending."""
    stmt = (select(metrics.c.step).where(metrics.c.job_id == job_id, metrics.c.name == MATRIX,
                                         metrics.c.value_json.is_not(None))
            .order_by(metrics.c.step))
    return list(conn.execute(stmt).scalars())


def matrix_at(conn: Connection, job_id: int, step: int) -> list[list[float]] | None:
    """The N x N log-prob matrix a job logged at ``step`` (rows: constitutions c_i,
    columns: responses y_j), or None."""
    stmt = select(metrics.c.value_json).where(metrics.c.job_id == job_id, metrics.c.name == MATRIX,
                                              metrics.c.step == step)
    return conn.execute(stmt).scalar_one_or_none()


def matrix_range(conn: Connection, job_id: int) -> tuple[float, float] | None:
    """The smallest and largest entry of every log-prob matrix a job logged (all its
    steps): a colour scale that stays put while one steps through the run. None when it
    logged none (or only non-finite entries)."""
    stmt = select(metrics.c.value_json).where(metrics.c.job_id == job_id, metrics.c.name == MATRIX,
                                              metrics.c.value_json.is_not(None))
    lo = hi = None
    for matrix in conn.execute(stmt).scalars():
        for row in matrix or []:
            for v in row or []:
                if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
                    lo = v if lo is None or v < lo else lo
                    hi = v if hi is None or v > hi else hi
    return None if lo is None else (float(lo), float(hi))
