"""Single jobs: check a job's spec and enqueue it (`sami enqueue`), list, cancel and retry
jobs, and find a job's log.

Stage kinds are checked against their schema in sami_core.spec (unknown keys and wrong
types refused with ``field.path: reason``) and stored with the defaults filled in, so a
job's spec is exactly what its stage will run. The diagnostic ``sleep`` kind (the queue's
own tests and benchmarks; run by workers.diag) takes ``seconds``, ``exit_code`` and the
test switches listed in :data:`SLEEP_KEYS`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from db import queue
from db.models import Experiment
from db.reads import jobs as job_reads
from db.workspace import Workspace, default_run_dir
from sami_core.contract import LOG_FILE, KindError, check_kind
from sami_core.errors import SpecError
from sami_core.spec import STAGE_SPECS, validate_spec
from services.errors import ServiceError

SLEEP_KEYS = frozenset({"seconds", "exit_code", "grandchild", "ignore_sigterm", "checkpoints", "metrics",
                        "fail_attempts", "log_ticks", "no_outputs"})
_SLEEP_SWITCHES = ("grandchild", "ignore_sigterm", "log_ticks", "no_outputs")  # booleans

__all__ = ["KindError", "SLEEP_KEYS", "validate_job_spec", "enqueue_job", "list_jobs", "cancel", "retry",
           "log_path"]


def validate_job_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """A job's spec checked before it is enqueued, normalised (raises KindError naming the
    field: an unknown kind, a stage spec that fails its schema, a bad ``sleep`` param)."""
    check_kind(kind)
    if kind != "sleep":
        if kind not in STAGE_SPECS:
            raise KindError(f"{kind}: this stage cannot run yet (sami_core has no spec schema for it); "
                            f"runnable stages: {', '.join(sorted(STAGE_SPECS))}")
        try:
            return validate_spec(kind, spec, source=f"{kind} spec").model_dump(mode="json")
        except SpecError as err:
            raise KindError(str(err)) from None
    unknown = set(spec) - SLEEP_KEYS
    if unknown:
        raise KindError(f"sleep: unknown param(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(SLEEP_KEYS))}")
    out = dict(spec)
    try:
        out["seconds"] = float(spec.get("seconds", 0))
        out["exit_code"] = int(spec.get("exit_code", 0))
        for k in ("checkpoints", "metrics", "fail_attempts"):
            if k in spec:
                out[k] = int(spec[k])
    except (TypeError, ValueError) as err:
        raise KindError(f"sleep: {err}") from None
    if not math.isfinite(out["seconds"]) or out["seconds"] < 0:
        raise KindError(f"sleep: seconds must be a finite number >= 0, not {spec.get('seconds')!r}")
    if not 0 <= out["exit_code"] <= 255:
        raise KindError("sleep: exit_code must be in 0..255")
    for k in _SLEEP_SWITCHES:
        if k in spec and not isinstance(spec[k], bool):
            raise KindError(f"sleep: {k} must be true or false")
    return out


def enqueue_job(conn: Connection, kind: str, spec: dict[str, Any], *, workspace: Workspace | None = None,
                **kw: Any) -> int:
    """Validate ``spec`` for ``kind`` and enqueue it (``kw``: db.queue.enqueue's options).
    A ``run_dir`` must lie in the workspace (``workspace``, else the environment's)."""
    exp_id = kw.get("experiment_id")
    if exp_id is not None and conn.execute(select(Experiment.id).where(Experiment.id == exp_id)).first() is None:
        raise ServiceError(f"experiment {exp_id} does not exist (see `sami jobs --experiment latest`)")
    if kw.get("run_dir") is not None:
        ws = workspace or Workspace.from_env()
        try:
            kw["run_dir"] = ws.inside(kw["run_dir"])
        except ValueError as err:
            raise ServiceError(f"--run-dir: {err}") from None
        target = ws.resolve(kw["run_dir"])
        if target.exists() and not target.is_dir():
            raise ServiceError(f"--run-dir: {kw['run_dir']} is a file, not a directory; give a new or empty folder")
    return queue.enqueue(conn, kind, validate_job_spec(kind, spec), **kw)


def experiment_id(conn: Connection, ref: int | str) -> int:
    """An experiment id from ``ref``: an id, or ``"latest"`` for the newest experiment."""
    if ref == "latest":
        latest = job_reads.latest_experiment_id(conn)
        if latest is None:
            raise ServiceError("--experiment latest: no experiment has been submitted yet")
        return latest
    return int(ref)


def list_jobs(conn: Connection, *, experiment: int | str | None = None, statuses: Sequence[str] | None = None,
              limit: int | None = None) -> tuple[list[Row], dict[int, list[int]]]:
    """Jobs, newest first, and each one's dependencies. ``experiment``: an id, or
    ``"latest"`` for the newest experiment."""
    if experiment is not None:
        experiment = experiment_id(conn, experiment)
    rows = queue.list_jobs(conn, experiment_id=experiment, statuses=statuses, limit=limit)
    return rows, queue.dependencies(conn, [r.id for r in rows])


def cancel(conn: Connection, job_id: int) -> str:
    """Cancel a job: "cancelled" (it was not running), "cancelling" (its worker kills its
    process tree at its next heartbeat) or its state when there is nothing to cancel."""
    try:
        return queue.cancel(conn, job_id)
    except queue.QueueError as err:
        raise ServiceError(str(err)) from None


def retry(conn: Connection, job_id: int) -> tuple[Row, list[int]]:
    """Re-queue a failed, cancelled or blocked job; the job and the dependants unblocked."""
    try:
        unblocked = queue.retry(conn, job_id)
    except queue.QueueError as err:
        raise ServiceError(str(err)) from None
    return queue.get_job(conn, job_id), unblocked


def get_job(conn: Connection, job_id: int) -> Row:
    row = queue.get_job(conn, job_id)
    if row is None:
        raise ServiceError(f"no job {job_id}")
    return row


def log_path(ws: Workspace, job_id: int, kind: str, run_dir: str | None) -> Path:
    """Where a job's stage writes its log: its run directory's stage.log (the workspace's
    default run directory when the job names none)."""
    return ws.resolve(run_dir or default_run_dir(job_id, kind)) / LOG_FILE
