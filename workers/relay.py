"""From a stage's run directory to the database: progress, metrics, outputs, errors.

The stage contract (sami_core.contract): while it runs a stage rewrites
``progress.json`` atomically and appends records to ``metrics.jsonl``; on success it
writes ``outputs.json``. :class:`RunDirReader` turns those files into what
db.queue.heartbeat and db.ingest store, reading only what changed: progress when the
file's mtime or size moved, metrics from the byte offset already ingested (kept in the
job row, so a retried job continues where the last attempt stopped; a complete line
at a time, so a half-written record waits for the next poll).

When a job succeeds, :func:`ingest_outputs` hands ``outputs.json`` to the handler
registered for its kind (:func:`output_handler`), in the transaction that marks it
succeeded: ``train`` -> checkpoints rows, ``sample`` -> a response source and its
responses, ``judge`` -> judgments rows, ``generate`` -> generated_responses rows (every
response, kept or dropped; its counts stay in the job's ``outputs``). Every handler is
idempotent (db.ingest upserts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Row

from db import ingest
from db.experiments import set_members
from db.workspace import Workspace
from sami_core.contract import FILTERED_FILE, JUDGMENTS_FILE, METRICS_FILE, OUTPUTS_FILE, PROGRESS_FILE

log = logging.getLogger(__name__)

_MAX_METRICS_CHUNK = 4 << 20  # bytes read per poll; the rest waits for the next one


class RunDirReader:
    """Incremental reader of one attempt's run directory."""

    def __init__(self, run_dir: Path, metrics_offset: int = 0, *, metrics: bool = True) -> None:
        self.run_dir = run_dir
        self.metrics_offset = metrics_offset
        self.metrics = metrics  # False: progress only (a member node's job: the leader relays the metrics)
        self._progress_sig: tuple[int, int] | None = None
        self._metrics_inode: int | None = None
        self._first: tuple[float, int] | None = None  # (time, done) when first seen: for the ETA

    def progress(self) -> dict[str, Any] | None:
        """The stage's progress as db.queue.heartbeat wants it, or None if unchanged/absent."""
        path = self.run_dir / PROGRESS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        sig = (st.st_mtime_ns, st.st_size)
        if sig == self._progress_sig:
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # caught mid-write by a stage that does not write atomically: next poll
        self._progress_sig = sig
        return self._with_eta(data) if isinstance(data, dict) else None

    def _with_eta(self, data: Mapping[str, Any]) -> dict[str, Any]:
        def as_int(v: Any) -> int | None:
            return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

        done, total = as_int(data.get("done")), as_int(data.get("total"))
        eta = None
        now = time.monotonic()
        if done is not None:
            if self._first is None:
                self._first = (now, done)
            t0, d0 = self._first
            if total is not None and done > d0 and now > t0:
                eta = max(0.0, (total - done) * (now - t0) / (done - d0))
        message = data.get("message")
        unit = data.get("unit")
        return {
            "done": done, "total": total, "eta_s": eta,
            "unit": str(unit)[:32] if unit is not None else None,
            "message": str(message)[:2000] if message is not None else None,
        }

    def new_metrics(self) -> tuple[list[dict], int]:
        """Complete metrics records after the ingested offset, and the offset after them.

        A file that was replaced (a new inode: a resumed training run rewrites it
        without the steps after its last state) or is shorter than the offset was
        rewritten by the stage: read it again from the start (the upsert makes the
        repeat harmless). Lines that are not JSON objects with an integer ``step`` are
        skipped with a warning."""
        path = self.run_dir / METRICS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            return [], self.metrics_offset
        if not self.metrics:
            return [], self.metrics_offset
        size = st.st_size
        if self._metrics_inode is not None and st.st_ino != self._metrics_inode:
            self.metrics_offset = 0
        self._metrics_inode = st.st_ino
        offset = 0 if size < self.metrics_offset else self.metrics_offset
        if size == offset:
            return [], offset
        with open(path, "rb") as f:
            f.seek(offset)
            chunk = f.read(_MAX_METRICS_CHUNK)
        end = chunk.rfind(b"\n")
        if end < 0:
            if len(chunk) < _MAX_METRICS_CHUNK:
                return [], offset  # a line still being written
            # A line longer than a whole chunk: no record is that large. Skip it (up to
            # its newline, which may lie further on) so later records keep flowing.
            skip_to = _next_newline(path, offset + len(chunk))
            if skip_to is None:
                return [], offset  # its end is not written yet
            log.warning("%s: skipping a metrics line of %d bytes at offset %d (over %d)",
                        path, skip_to - offset, offset, _MAX_METRICS_CHUNK)
            return [], skip_to
        records = []
        for line in chunk[: end + 1].splitlines():
            if not line.strip():
                continue
            try:
                records.append(metrics_record(line))
            except (ValueError, KeyError, TypeError, OverflowError) as err:
                log.warning("%s: skipping a metrics line (%s): %.120r", path, err, line)
        return records, offset + end + 1


MAX_STEP = 2**53  # steps beyond this are not counts a stage could have reached


def metrics_record(line: bytes) -> dict:
    """One metrics.jsonl line as a record; ValueError (or a subclass) when it is not a
    JSON object with an integer ``step`` in [0, 2**53] and string names. Everything a
    stage writes is untrusted: a bad line must never break the worker's transaction."""
    rec = json.loads(line.decode("utf-8"))
    if not isinstance(rec, dict):
        raise ValueError("not a JSON object")
    step = rec.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        raise ValueError("no numeric step")
    if isinstance(step, float) and not step.is_integer():
        raise ValueError(f"step {step!r} is not an integer")
    step = int(step)
    if not 0 <= step <= MAX_STEP:
        raise ValueError(f"step {step} is out of range [0, 2**53]")
    rec["step"] = step
    return rec


def _next_newline(path: Path, start: int) -> int | None:
    """The offset just after the first newline at or after ``start``, or None."""
    with open(path, "rb") as f:
        f.seek(start)
        pos = start
        while True:
            block = f.read(1 << 20)
            if not block:
                return None
            i = block.find(b"\n")
            if i >= 0:
                return pos + i + 1
            pos += len(block)


# --- errors -------------------------------------------------------------------------------

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(\w+://[^/\s:@]+:)([^@\s/]+)(@)")


def redact(text: str, env: Mapping[str, str] | None = None) -> str:
    """Hide secrets before text goes to the database: the values of environment
    variables named like keys/tokens/passwords, and passwords inside URLs."""
    env = os.environ if env is None else env
    for name, value in env.items():
        if _SECRET_NAME.search(name) and len(value) >= 6:
            text = text.replace(value, "***")
    return _URL_PASSWORD.sub(r"\1***\3", text)


def log_tail(path: Path, start: int = 0, lines: int = 20, max_bytes: int = 64 << 10) -> str:
    """The last ``lines`` lines of ``path`` after byte ``start`` (this attempt's output)."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(start, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode(errors="replace").replace("\r", "\n")
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


# --- outputs -------------------------------------------------------------------------------

OutputHandler = Callable[[Connection, Row, dict, Path, Workspace], None]
_OUTPUT_HANDLERS: dict[str, OutputHandler] = {}


def output_handler(*kinds: str) -> Callable[[OutputHandler], OutputHandler]:
    """Register ``fn(conn, job, outputs, run_dir, workspace)`` to store a kind's outputs."""

    def register(fn: OutputHandler) -> OutputHandler:
        for kind in kinds:
            _OUTPUT_HANDLERS[kind] = fn
        return fn

    return register


class OutputsError(ValueError):
    """outputs.json is unreadable or does not match its kind's shape."""


def read_outputs(run_dir: Path) -> dict | None:
    path = run_dir / OUTPUTS_FILE
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise OutputsError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise OutputsError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def ingest_outputs(conn: Connection, job: Row, outputs: dict | None, run_dir: Path, workspace: Workspace) -> None:
    """Store a succeeded job's outputs with its kind's handler (none registered: kept
    only as the job's ``outputs`` column)."""
    handler = _OUTPUT_HANDLERS.get(job.kind)
    if outputs is not None and handler is not None:
        handler(conn, job, outputs, run_dir, workspace)


def workspace_path(path: str | os.PathLike, run_dir: Path, workspace: Workspace) -> str:
    """A stage's output path as stored: relative to the workspace when inside it
    (portable across hosts that mount it elsewhere), else absolute."""
    p = Path(path)
    p = p if p.is_absolute() else run_dir / p
    try:
        return str(p.resolve().relative_to(workspace.home.resolve()))
    except ValueError:
        return str(p.resolve())


def _job_field(job: Row, name: str) -> Any:
    """A column of the job row, or None when the row does not have it (an older caller)."""
    return job._mapping.get(name)


@output_handler("train", "sleep")
def _checkpoints(conn: Connection, job: Row, outputs: dict, run_dir: Path, workspace: Workspace) -> None:
    items = outputs.get("checkpoints", [])
    if not isinstance(items, list) or not all(isinstance(c, dict) and "step" in c and "path" in c for c in items):
        raise OutputsError('outputs.json: "checkpoints" must be a list of {"step", "path", "final"}')
    iteration = _job_field(job, "iteration")
    ingest.upsert_checkpoints(
        conn, job.id,
        [{**c, "path": workspace_path(c["path"], run_dir, workspace)} for c in items],
        experiment_id=job.experiment_id, iteration=iteration if iteration is not None else outputs.get("iteration"),
    )


@output_handler("generate")
def _generated(conn: Connection, job: Row, outputs: dict, run_dir: Path, workspace: Workspace) -> None:
    """Check the counts (kept in the job's ``outputs`` column: n_kept, n_dropped, ...) and
    store every generated response, kept or dropped (filtered.jsonl -> generated_responses)."""
    for key in ("n_kept", "n_dropped"):
        if not isinstance(outputs.get(key), int):
            raise OutputsError(f'outputs.json: "{key}" must be an integer count of queries')
    try:
        ingest.ingest_generated(conn, job.id, run_dir / str(outputs.get("filtered") or FILTERED_FILE))
    except ingest.IngestError as err:
        raise OutputsError(str(err)) from None


def read_responses(path: Path) -> list[dict]:
    """The records of a sample stage's responses.jsonl, checked for the fields ingested."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise OutputsError(f"{path}: not readable ({err})") from None
    records = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError as err:
            raise OutputsError(f"{path}, line {n}: not JSON ({err})") from None
        missing = [k for k in ("query_id", "temperature", "response") if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise OutputsError(f"{path}, line {n}: missing {', '.join(missing)}")
        records.append(rec)
    return records


@output_handler("sample")
def _responses(conn: Connection, job: Row, outputs: dict, run_dir: Path, workspace: Workspace) -> None:
    """A response source for the sample job and one response per line of responses.jsonl.

    The source is a ``checkpoint`` when the sampled model is a checkpoint stored for
    this experiment (``checkpoints/final`` resolves to its step directory), else a
    ``baseline`` named by the spec's model path (e.g. ``demo`` or a hub id)."""
    name = outputs.get("responses")
    if not isinstance(name, str):
        raise OutputsError('outputs.json: "responses" must name the responses file')
    records = read_responses(run_dir / name)
    spec_model = ((job.spec or {}).get("model") or {}).get("path")
    model = outputs.get("model") or spec_model
    checkpoint_id = stored_model = None
    if isinstance(model, str) and model:
        p = Path(model).expanduser()
        p = p if p.is_absolute() else workspace.home / p  # stages run in the workspace
        if p.exists():
            stored_model = workspace_path(p, run_dir, workspace)
            checkpoint_id = ingest.find_checkpoint(conn, stored_model, experiment_id=job.experiment_id)
    label = _job_field(job, "label") or job.name or f"job-{job.id}"
    drawn = drawn_constitutions(conn, job, run_dir / name)
    temperatures = outputs.get("temperatures")
    source_id = ingest.upsert_response_source(
        conn, job.id, kind="checkpoint" if checkpoint_id is not None else "baseline", label=label,
        checkpoint_id=checkpoint_id, model=stored_model if checkpoint_id is not None else (spec_model or model),
        experiment_id=job.experiment_id, temperatures=temperatures if isinstance(temperatures, list) else None,
    )
    ingest.upsert_responses(conn, source_id, [
        {"query_id": r["query_id"], "query": r.get("query"), "temperature": r["temperature"],
         "text": r["response"], "n_tokens": r.get("n_tokens"), "constitution_id": drawn(r)} for r in records
    ])


def drawn_constitutions(conn: Connection, job: Row, path: Path):
    """A function of a responses.jsonl record -> the constitution version it was sampled
    under: the job's own version, or, when the job draws from a constitution set, the
    member version the record names (``constitution_name``)."""
    members = {m["name"]: m["id"] for m in set_members(conn, [job.id]).get(job.id, [])}

    def version(rec: dict) -> int | None:
        if not members:
            return job.constitution_id
        name = rec.get("constitution_name")
        if name not in members:
            raise OutputsError(f"{path}: the response to query {rec['query_id']} names constitution {name!r}, "
                               f"which is not one of the job's set ({', '.join(sorted(members))})")
        return members[name]

    return version


@output_handler("judge")
def _judgments(conn: Connection, job: Row, outputs: dict, run_dir: Path, workspace: Workspace) -> None:
    """One judgments row per judgment of judgments.jsonl (errors excepted), linked to the
    two response rows compared (db.ingest.ingest_judgments)."""
    try:
        ingest.ingest_judgments(conn, run_dir / JUDGMENTS_FILE, job.spec or {}, job_id=job.id,
                                experiment_id=job.experiment_id)
    except (ValueError, KeyError) as err:
        raise OutputsError(f"judgments: {err}") from None


@output_handler("evaluate")
def _mi_results(conn: Connection, job: Row, outputs: dict, run_dir: Path, workspace: Workspace) -> None:
    """One mi_results row per scoring model of the evaluate job (outputs.json's ``by_model``)."""
    by_model, label = outputs.get("by_model"), outputs.get("label")
    if not isinstance(label, str) or not isinstance(by_model, dict) or not by_model or not all(
            isinstance(v, dict) for v in by_model.values()):
        raise OutputsError('outputs.json: "label" must name the model and "by_model" map each scoring model '
                           "to its figures")
    temperature = outputs.get("temperature")
    try:
        ingest.upsert_mi_results(conn, job.id, label, by_model, experiment_id=job.experiment_id,
                                 iteration=_job_field(job, "iteration"),
                                 temperature=temperature if isinstance(temperature, (int, float)) else None)
    except ValueError as err:
        raise OutputsError(f"outputs.json: {err}") from None
