"""What the Queue page (app/views/queue.py) shows, as pure functions (no Streamlit): the
jobs table, ETAs and progress, the DAG as a Graphviz DOT string, and a job's log tail.

A job's log is ``RUN_DIR/stage.log`` (as `sami logs` reads it), RUN_DIR relative to the
workspace unless absolute.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from app.formatting import age_s, display_status, format_duration
from db.models import BLOCKED, CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED
from db.workspace import Workspace
from sami_core.contract import LOG_FILE
from sami_core.judge.usage import job_usage_text
from services import jobs, judging

LOG_NAME = LOG_FILE
LOG_TAIL_LINES = 200
# The tail is read from at most this many bytes at the end of the log (a log may be huge).
LOG_TAIL_BYTES = 256 * 1024

# Fill colors of the DAG's nodes by status (and "cancelling": running, cancel requested).
STATUS_COLORS = {
    "queued": "#d9d9d9",
    "running": "#9ecae1",
    "cancelling": "#fdd0a2",
    "succeeded": "#a1d99b",
    "failed": "#fc9272",
    "cancelled": "#bdbdbd",
    "blocked": "#fdae6b",
}

# How the legend names those colors.
COLOR_NAMES = {"queued": "grey", "running": "blue", "cancelling": "light orange", "succeeded": "green",
               "failed": "red", "cancelled": "dark grey", "blocked": "orange"}

TABLE_COLUMNS = ("id", "name", "kind", "experiment", "status", "progress", "progress_text", "eta", "started", "ended",
                 "duration", "devices", "attempt", "worker", "constitution", "depends_on", "age", "updated")

# The progress bars' colour: a neutral one (the theme's primary colour is red, which reads as an error).
PROGRESS_COLOR = "blue"

# What the Cancel and Retry buttons can act on (db.queue.cancel, db.queue.retry); elsewhere they are disabled.
CANCELLABLE = frozenset({QUEUED, BLOCKED, RUNNING})
RETRYABLE = frozenset({FAILED, CANCELLED, BLOCKED})


def eta_s(row: dict, now: datetime) -> float | None:
    """Seconds left for a running job: the stage's own estimate (``progress_eta_s``, as
    of ``progress_updated_at``) less the time since; None when unknown or not running."""
    if row.get("status") != "running" or row.get("progress_eta_s") is None:
        return None
    since = age_s(row.get("progress_updated_at"), now) or 0.0
    return max(0.0, row["progress_eta_s"] - since)


def progress_fraction(done: int | None, total: int | None) -> float | None:
    """done / total in [0, 1]; None when the job reported no total."""
    if not total:
        return None
    return min(1.0, max(0.0, (done or 0) / total))


def progress_text(row: dict) -> str:
    total = row.get("progress_total")
    if not total:
        return row.get("progress_message") or ""
    text = f"{row.get('progress_done') or 0}/{total}"
    if row.get("progress_unit"):
        text += f" {row['progress_unit']}"
    if row.get("progress_message"):
        text += f": {row['progress_message']}"
    return text


def constitution_label(row: dict) -> str:
    """The constitution version a job used, as "<name> v<version>", or the set it draws
    from ("set of K: ..."); "" when none."""
    if row.get("constitution_set"):
        return row["constitution_set"]
    if not row.get("constitution_name"):
        return ""
    return f"{row['constitution_name']} v{row['constitution_version']}"


def job_times(row: dict, now: datetime) -> tuple[datetime | None, datetime | None, float | None]:
    """(started, ended, duration in seconds) of a job's latest attempt: started while it
    runs or once it ran (not while it waits: a re-queued job's earlier start no longer
    applies); ended once it succeeded, failed or was cancelled; the duration from start to
    end, or to ``now`` while it runs. None where a time does not apply."""
    status = row.get("status")
    started = None if status in (QUEUED, BLOCKED) else row.get("started_at")
    ended = row.get("finished_at") if status in (SUCCEEDED, FAILED, CANCELLED) else None
    if started is None:
        return None, ended, None
    return started, ended, age_s(started, ended or now) if (ended is not None or status == RUNNING) else None


def can_cancel(status: str, cancel_requested_at: object = None) -> bool:
    """Whether Cancel does something: a queued or blocked job, or a running one whose
    cancellation was not requested yet."""
    return status in CANCELLABLE and not (status == RUNNING and cancel_requested_at is not None)


def can_retry(status: str) -> bool:
    """Whether Retry does something: a failed, cancelled or blocked job."""
    return status in RETRYABLE


def job_label(row: dict) -> str:
    """``#12 train-1 (cancelling)``: the job picker's label, with the status shown live."""
    status = display_status(row["status"], row.get("cancel_requested_at"))
    return f"#{row['id']} {row.get('name') or row['kind']} ({status})"


def jobs_frame(rows: Sequence[dict], now: datetime | None = None) -> pd.DataFrame:
    """db.reads.jobs.job_rows -> the table the Queue page shows (:data:`TABLE_COLUMNS`);
    ``progress`` is a fraction (a succeeded job without a total counts as 1); ``started``
    and ``ended`` are times, ``duration`` text (:func:`job_times`)."""
    now = now or datetime.now(timezone.utc)
    out = []
    for r in rows:
        frac = progress_fraction(r.get("progress_done"), r.get("progress_total"))
        if frac is None and r["status"] == "succeeded":
            frac = 1.0
        started, ended, took = job_times(r, now)
        out.append({
            "id": r["id"], "name": r.get("name") or r["kind"], "kind": r["kind"], "experiment": r.get("experiment_id"),
            "status": display_status(r["status"], r.get("cancel_requested_at")),
            "progress": frac, "progress_text": progress_text(r), "eta": format_duration(eta_s(r, now)),
            "started": started, "ended": ended, "duration": format_duration(took),
            "devices": r.get("devices_required") or 0, "attempt": f"{r.get('attempts') or 0}/{r.get('max_attempts')}",
            "worker": r.get("worker") or "", "constitution": constitution_label(r), "depends_on": ", ".join(map(str, r.get("depends_on") or [])),
            "age": format_duration(age_s(r.get("created_at"), now)),
            "updated": format_duration(age_s(r.get("updated_at"), now)),
        })
    df = pd.DataFrame(out, columns=list(TABLE_COLUMNS))
    for col in ("started", "ended"):  # UTC times (NaT where none) for a datetime column
        df[col] = pd.to_datetime(df[col], utc=True).dt.tz_localize(None)
    return df


def judge_usage(job: dict) -> str | None:
    """A judge job's token usage and estimated cost (from its outputs.json, priced by its
    spec's judge), e.g. ``12,345 prompt + 678 completion tokens, estimated cost $0.0376``;
    None for other kinds and for judge jobs that have not finished."""
    if job.get("kind") != "judge":
        return None
    return job_usage_text(job.get("outputs"), job.get("spec"))


def judge_estimate(ws: Workspace, job: dict) -> str | None:
    """Before a queued judge job sends anything: how many judgments it will send and their
    approximate tokens (and cost at most, with prices); None for other jobs, and while its
    responses are not sampled yet."""
    if job.get("kind") != "judge" or job.get("status") not in ("queued", "blocked"):
        return None
    est = judging.estimate_queued(ws, job.get("spec") or {}, job.get("run_dir"))
    if est is None:
        return None
    text = f"{est.to_send} of {est.judgments} judgments to send ({est.cached} cached)"
    if est.to_send and (job.get("spec") or {}).get("judge", {}).get("provider") != "hf":
        text += f"; {est.tokens_text()}"
    return text


def legend() -> str:
    """``queued grey, running blue, ...``: the DAG's colors in words."""
    return ", ".join(f"{s} {COLOR_NAMES[s]}" for s in STATUS_COLORS)


def status_summary(rows: Iterable[dict]) -> str:
    """``2 running, 3 queued, 1 failed`` (statuses in life-cycle order)."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    order = ("running", "queued", "blocked", "succeeded", "failed", "cancelled")
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "no jobs"


# --- the DAG ---------------------------------------------------------------------------------


def _dot_quote(text: str) -> str:
    """A DOT double-quoted string (quotes, backslashes and newlines escaped)."""
    return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\r", "").replace("\n", "\\n") + '"'


def dag_dot(nodes: Sequence[dict], edges: Iterable[tuple[int, int]]) -> str:
    """A DOT digraph, left to right: one box per job (``#id name``, its status below,
    filled by :data:`STATUS_COLORS`) and one arrow per dependency, parent -> dependant.
    Edges to jobs not among ``nodes`` are left out."""
    ids = {n["id"] for n in nodes}
    lines = ["digraph jobs {", "  rankdir=LR;",
             '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];']
    for n in nodes:
        status = display_status(n["status"], n.get("cancel_requested_at"))
        label = f"#{n['id']} {n.get('name') or n['kind']}\n{status}"
        color = STATUS_COLORS.get(status, "#ffffff")
        tooltip = f"job {n['id']}: {status}"
        lines.append(f"  j{int(n['id'])} [label={_dot_quote(label)}, fillcolor={_dot_quote(color)}, "
                     f"tooltip={_dot_quote(tooltip)}];")
    for parent, child in edges:
        if parent in ids and child in ids:
            lines.append(f"  j{int(parent)} -> j{int(child)};")
    lines.append("}")
    return "\n".join(lines)


# --- logs ------------------------------------------------------------------------------------


def log_path(ws: Workspace, job: dict) -> Path:
    """Where `sami logs` finds a job's log: RUN_DIR/stage.log."""
    return jobs.log_path(ws, job["id"], job["kind"], job.get("run_dir"))


def log_tail(path: str | os.PathLike, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_TAIL_BYTES) -> str | None:
    """The last ``lines`` lines of a text file (read from its last ``max_bytes`` only;
    undecodable bytes replaced); None when it does not exist."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    text_lines = data.decode("utf-8", errors="replace").splitlines()
    if size > max_bytes and text_lines:
        text_lines = text_lines[1:]  # the first one is cut
    return "\n".join(text_lines[-lines:]) if lines > 0 else ""


# What each filter of a generate job's outputs.json counts (sami_core.prompts.FilterCounts).
FILTER_ROWS = (
    ("min_chars", "responses", "too short (filters.min_chars)"),
    ("drop_substrings", "responses", "containing a dropped substring (filters.drop_substrings)"),
    ("ends_with", "responses", "not ending as required (filters.ends_with)"),
    ("queries_with_invalid", "queries", "dropped: a response failed a filter above"),
    ("require_distinct", "queries", "dropped: responses not all distinct (filters.require_distinct)"),
    ("kept", "queries", "kept for training"),
)


def filter_counts_table(outputs: dict | None) -> pd.DataFrame | None:
    """A generate job's filter counts as rows (filter, what it counts, count, of how many);
    one row per dropped substring under its filter. None when the outputs have none."""
    c = (outputs or {}).get("filter_counts")
    if not isinstance(c, dict):
        return None
    total = {"responses": c.get("responses", 0), "queries": c.get("queries", 0)}
    rows = []
    for key, unit, what in FILTER_ROWS:
        rows.append({"filter": key, "what": what, "count": c.get(key, 0), "of": f"{total[unit]} {unit}"})
        if key == "drop_substrings":
            rows += [{"filter": f"  {s!r}", "what": "responses containing it", "count": k,
                      "of": f"{total['responses']} responses"} for s, k in (c.get("drop_substrings_each") or {}).items()]
    return pd.DataFrame(rows, columns=["filter", "what", "count", "of"])
