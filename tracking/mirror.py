"""Mirror one succeeded job to its experiment's trackers: the worker's one call.

``tracking.json`` (in the experiment's run directory, beside its jobs' run directories)
holds, per tracker, the run ids created so far and the jobs already mirrored (``job id:
attempt``); a lock file beside it serialises workers that finish jobs of the same
experiment at once. A job mirrored already is skipped, so a worker restarted after a crash
(or a second call) logs nothing twice. A tracker that fails is reported, never raised.
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

from sqlalchemy.engine import Connection, Engine

from db import queue
from db.engine import transact
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
    """Mirror succeeded job ``job_id`` to the trackers its experiment's spec names; return
    the warnings (also appended to the job's stage.log). Never raises for a tracker's
    failure; a job outside an experiment, or of one without ``tracking``, costs one read."""

    def read(conn: Connection) -> tuple[JobRecord, dict, str | None, int] | None:
        job = queue.get_job(conn, job_id)
        if job is None or job.experiment_id is None or job.status != "succeeded":
            return None
        found = experiment_tracking(conn, job.experiment_id)
        if found is None:
            return None
        name, spec, section = found
        return job_record(conn, job, name, spec, workspace), section, job.run_dir, job.attempts

    got = transact(engine, read, write=False)
    if got is None:
        return []
    rec, section, run_dir, attempts = got
    folder = experiment_dir(run_dir, rec.experiment_id, workspace)
    done_key = f"{rec.job_id}:{attempts}"
    warnings = []
    with locked_state(folder) as (state, save):
        for tracker in requested(section):
            part = state.setdefault(tracker, {})
            if done_key in part.get("mirrored", []):
                continue
            try:
                if problem := install_problem(tracker):
                    raise RuntimeError(problem)
                _write(tracker, section[tracker], part, save, rec, folder)
            except Exception as err:  # noqa: BLE001 - any tracker failure: warn, the job stands
                why = " ".join(str(err).split())[:500] or type(err).__name__
                warnings.append(f"tracking: {tracker}: job {rec.key} was not mirrored ({why}); its results are "
                                f"in the workbench, and the next jobs try {tracker} again")
                save()  # the run ids created before the failure
                continue
            part.setdefault("mirrored", []).append(done_key)
            save()
    if warnings and run_dir:
        _append_log(workspace.resolve(run_dir) / LOG_FILE, warnings)
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
