"""Mirror one succeeded job to its experiment's trackers: the worker's one call.

``tracking.json`` (in the experiment's run directory, beside its jobs' run directories)
holds, per tracker, the run ids created so far and the jobs already mirrored (``job id:
attempt``); a lock file beside it serialises workers that finish jobs of the same
experiment at once. A job mirrored already is skipped, so a worker restarted after a crash
(or a second call) logs nothing twice; a job that was not mirrored (its tracker was down,
or its worker died first) is caught up when the experiment's next job finishes. A tracker
that fails is reported, never raised.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine, Row

from db import queue
from db.engine import transact
from db.models import Job
from db.workspace import Workspace
from sami_core.contract import LOG_FILE
from tracking.installed import install_problem
from tracking.records import JobRecord, experiment_tracking, job_record

log = logging.getLogger("sami.tracking")

STATE_FILE = "tracking.json"
LOCK_FILE = ".tracking.lock"


def requested(section: dict) -> list[str]:
    """The trackers a stored ``tracking`` section mirrors to (W&B in mode disabled: none)."""
    return [name for name in ("mlflow", "wandb") if isinstance(section.get(name), dict)
            and not (name == "wandb" and section["wandb"].get("mode") == "disabled")]


def experiment_dir(job_run_dir: str | None, experiment_id: int, workspace: Workspace) -> Path:
    """Where an experiment's tracking.json lives: the folder of its jobs' run directories."""
    if job_run_dir:
        return workspace.resolve(job_run_dir).parent
    return workspace.runs_dir / f"exp-{experiment_id:06d}"


@contextmanager
def locked_state(folder: Path) -> Iterator[tuple[dict, Callable[[], None]]]:
    """tracking.json under an exclusive lock: (the state, a function that writes it atomically)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATE_FILE
    with open(folder / LOCK_FILE, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = json.loads(path.read_text()) if path.exists() else {}
        except ValueError:
            log.warning("%s is not JSON; starting it again (runs already created may be created once more)", path)
            state = {}

        def save() -> None:
            tmp = path.with_name(f".{STATE_FILE}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(state, indent=1))
            os.replace(tmp, path)

        try:
            yield state, save
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def mirror_job(engine: Engine, job_id: int, workspace: Workspace) -> list[str]:
    """Mirror succeeded job ``job_id`` to the trackers its experiment's spec names, and with
    it every earlier succeeded job of the experiment not mirrored yet (a tracker that was
    down, a worker that died between storing a job and mirroring it); return the warnings
    (also appended to the job's stage.log). Never raises for a tracker's failure; a job
    outside an experiment, or of one without ``tracking``, costs one read."""

    def read(conn: Connection) -> tuple[str, dict, dict, list[Row]] | None:
        job = queue.get_job(conn, job_id)
        if job is None or job.experiment_id is None or job.status != "succeeded":
            return None
        found = experiment_tracking(conn, job.experiment_id)
        if found is None:
            return None
        jobs = Job.__table__
        done = conn.execute(select(jobs.c.id, jobs.c.attempts).where(
            jobs.c.experiment_id == job.experiment_id, jobs.c.status == "succeeded", jobs.c.id != job.id)
            .order_by(jobs.c.finished_at, jobs.c.id)).all()
        return (*found, [*done, job])

    got = transact(engine, read, write=False)
    if got is None:
        return []
    name, spec, section, done = got
    job = done[-1]
    folder = experiment_dir(job.run_dir, job.experiment_id, workspace)
    warnings: list[str] = []
    with locked_state(folder) as (state, save):
        failed: set[str] = set()  # a tracker that failed once in this call is not tried again in it
        for row in done:
            done_key = f"{row.id}:{row.attempts}"
            todo = [t for t in requested(section) if t not in failed
                    and done_key not in state.get(t, {}).get("mirrored", [])]
            if not todo:
                continue
            rec = transact(engine, lambda c, i=row.id: job_record(c, queue.get_job(c, i), name, spec, workspace),
                           write=False)
            for tracker in todo:
                part = state.setdefault(tracker, {})
                if rec.empty:
                    part.setdefault("mirrored", []).append(done_key)
                    continue
                try:
                    if problem := install_problem(tracker):
                        raise RuntimeError(problem)
                    _write(tracker, section[tracker], part, save, rec, folder)
                except Exception as err:  # noqa: BLE001 - any tracker failure: warn, the job stands
                    why = " ".join(str(err).split())[:500] or type(err).__name__
                    warnings.append(f"tracking: {tracker}: job {rec.key} was not mirrored ({why}); its results are "
                                    f"in the workbench, and the experiment's next job to finish tries again")
                    failed.add(tracker)
                    save()  # the run ids created before the failure
                    continue
                part.setdefault("mirrored", []).append(done_key)
            save()
    if warnings and job.run_dir:
        _append_log(workspace.resolve(job.run_dir) / LOG_FILE, warnings)
    for w in warnings:
        log.warning("job %d: %s", job_id, w)
    return warnings


def _write(tracker: str, section: dict, part: dict, save: Callable[[], None], rec: JobRecord, folder: Path) -> None:
    from tracking import backends  # its writers import the client libraries themselves

    if tracker == "mlflow":
        backends.write_mlflow(section, part, save, rec)
    else:
        backends.write_wandb(section, part, save, rec, default_dir=folder)


def _append_log(path: Path, warnings: list[str]) -> None:
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    try:
        with open(path, "a") as f:
            f.write("".join(f"=== {now} {w}\n" for w in warnings))
    except OSError as err:
        log.warning("could not write to %s: %s", path, err)
