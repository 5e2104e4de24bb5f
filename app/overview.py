"""What the Overview page (app/views/overview.py) shows, as pure functions (no
Streamlit): an experiment's state from its jobs, its latest win rate, and the workers
and failures tables."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from app.formatting import age_s, format_duration
from db.reads.overview import SILENT_AFTER_S
from sami_core.spec import EXAMPLES_DIR

DEMO_SPEC = EXAMPLES_DIR / "demo.yaml"

_ITERATION = re.compile(r"^iteration-(\d+)$")


def experiment_state(counts: dict[str, int]) -> str:
    """One word for an experiment from its jobs' statuses: ``running`` while any job
    runs; else ``failed`` if any failed; ``queued`` while any waits; ``cancelled`` when a
    job was cancelled and nothing runs or waits (its dependants are blocked by the cancel,
    so the experiment stopped because someone stopped it); ``blocked`` when only blocked
    jobs are left for another reason; ``succeeded`` when all did; ``empty`` without jobs."""
    n = {k: v for k, v in counts.items() if v}
    if not n:
        return "empty"
    for state in ("running", "failed", "queued", "cancelled", "blocked"):
        if n.get(state):
            return state
    return "succeeded" if set(n) == {"succeeded"} else "cancelled"


def empty_state_text(workers_alive: int, imported_sources: int) -> str:
    """What the Overview says when there is no experiment: how to submit one, and only
    the steps not yet done (start a worker; import the published responses)."""
    text = ("No experiment yet. Submit the demo experiment above (or one of your own on the New experiment page, "
            "or with `sami submit SPEC.yaml`)")
    if workers_alive:
        text += f"; {workers_alive} worker{'s' if workers_alive != 1 else ''} alive will run its jobs."
    else:
        text += ", and start a worker with `sami worker` to run its jobs."
    if imported_sources:
        text += (f" {imported_sources} imported response source{'s are' if imported_sources != 1 else ' is'} "
                 "already in the workspace: open Responses or Win rates to look at them.")
    else:
        text += (" To look at published responses without running anything, import them with "
                 "`sami import-results --shipped` and open Responses or Win rates.")
    return text


def _iteration(label: Any) -> int | None:
    m = _ITERATION.match(str(label or ""))
    return int(m.group(1)) if m else None


def latest_winrate(winrate_rows: Sequence[dict], baselines: Sequence[str] = ()) -> dict | None:
    """The row of services.exports.winrates to show for an experiment: its latest judged
    iteration (candidate ``iteration-<t>`` with the largest t) against its first baseline
    (the spec's first judge baseline when judged, else the first by name), at the
    lowest temperature (greedy sampling when judged). None when nothing was judged."""
    rows = [r for r in winrate_rows if _iteration(r.get("candidate")) is not None]
    if not rows:
        return None
    latest = max(_iteration(r["candidate"]) for r in rows)
    rows = [r for r in rows if _iteration(r["candidate"]) == latest]
    judged = {r["baseline"] for r in rows}
    baseline = next((b for b in baselines if b in judged), None) or sorted(judged)[0]
    rows = [r for r in rows if r["baseline"] == baseline]
    return min(rows, key=lambda r: (r.get("temperature") is None, r.get("temperature") or 0.0,
                                    str(r.get("judge_model"))))


def winrate_text(row: dict | None) -> str:
    """``iteration-2 vs base: 0.62 (n=40, T=0)``; ``-`` when nothing was judged."""
    if row is None:
        return "-"
    rate = "n/a" if row.get("win_rate") is None else f"{row['win_rate']:.2f}"
    temp = "" if row.get("temperature") is None else f", T={row['temperature']:g}"
    return f"{row['candidate']} vs {row['baseline']}: {rate} (n={row.get('n') or 0}{temp})"


def latest_mi(mi_rows: Sequence[dict]) -> tuple[dict, dict | None] | None:
    """An experiment's held-out MI to show (db.ingest.mi_rows): the latest evaluated
    model scored by itself, and the base model's own figures (None when the base was not
    evaluated); None when nothing was evaluated."""
    own = [r for r in mi_rows if r.get("scorer") == r.get("label")]
    if not own:
        return None
    latest = max(own, key=lambda r: (r.get("iteration") or 0, r.get("job_id") or 0))
    base = next((r for r in own if r.get("iteration") == 0), None)
    return latest, (base if base is not latest else None)


def mi_text(pair: tuple[dict, dict | None] | None) -> str:
    """``iteration-2: 0.21 [0.12, 0.30] (base 0.02)``: the held-out MI lower bound in nats
    with its 95% interval; ``-`` when nothing was evaluated."""
    if pair is None:
        return "-"
    latest, base = pair
    text = (f"{latest['label']}: {latest['mi_lower_bound']:.2f} "
            f"[{latest['mi_lower_bound_ci_low']:.2f}, {latest['mi_lower_bound_ci_high']:.2f}]")
    return text + (f" (base {base['mi_lower_bound']:.2f})" if base is not None else "")


def experiments_frame(rows: Sequence[dict], winrates: dict[int, dict | None], now: datetime | None = None,
                      mi: dict[int, tuple[dict, dict | None] | None] | None = None) -> pd.DataFrame:
    """db.reads.overview.experiment_rows -> the experiments table (``winrates``:
    experiment id -> :func:`latest_winrate`'s row; ``mi``: experiment id -> :func:`latest_mi`)."""
    mi = mi or {}
    now = now or datetime.now(timezone.utc)
    out = []
    for r in rows:
        c = r["counts"]
        out.append({
            "id": r["id"], "name": r["name"], "state": experiment_state(c),
            "jobs": sum(c.values()), "running": c.get("running", 0), "queued": c.get("queued", 0),
            "succeeded": c.get("succeeded", 0), "failed": c.get("failed", 0), "blocked": c.get("blocked", 0),
            "cancelled": c.get("cancelled", 0), "iterations": r.get("iterations"),
            "latest win rate": winrate_text(winrates.get(r["id"])), "held-out MI (nats)": mi_text(mi.get(r["id"])),
            "created": r["created_at"], "age": format_duration(age_s(r["created_at"], now)),
        })
    return pd.DataFrame(out, columns=["id", "name", "state", "jobs", "running", "queued", "succeeded", "failed",
                                      "blocked", "cancelled", "iterations", "latest win rate", "held-out MI (nats)", "created",
                                      "age"])


def worker_state(row: dict, now: datetime) -> str:
    """``running``, or ``silent`` when a running worker missed its heartbeats, or the
    stored status (stopped, lost)."""
    if row["status"] == "running" and (age_s(row.get("last_seen_at"), now) or 0) > SILENT_AFTER_S:
        return "silent"
    return row["status"]


def workers_alive(rows: Sequence[dict], now: datetime | None = None) -> int:
    """How many registered workers are running and heard from (:func:`worker_state`)."""
    now = now or datetime.now(timezone.utc)
    return sum(worker_state(r, now) == "running" for r in rows)


def workers_frame(rows: Sequence[dict], now: datetime | None = None) -> pd.DataFrame:
    now = now or datetime.now(timezone.utc)
    out = [{
        "id": r["id"], "name": r["name"], "host": r["host"],
        "devices": ", ".join(map(str, r["devices"] or [])) or "CPU",
        "kinds": ", ".join(r["kinds"]) if r.get("kinds") else "all", "status": worker_state(r, now),
        "last heartbeat": f"{format_duration(age_s(r['last_seen_at'], now))} ago",
        "current job": ", ".join(f"#{j['id']} {j['name']}" for j in r["current_jobs"]) or "-",
    } for r in rows]
    return pd.DataFrame(out, columns=["id", "name", "host", "devices", "kinds", "status", "last heartbeat",
                                      "current job"])


def last_line(error: str | None, width: int = 160) -> str:
    """The last non-empty line of an error text, cut at ``width`` characters."""
    lines = [ln for ln in (error or "").splitlines() if ln.strip()]
    return lines[-1][:width] if lines else ""


def failures_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """db.reads.overview.recent_failures -> a table (the error's last line; the full
    error is shown as text beside it)."""
    out = [{
        "job": r["id"], "name": r["name"] or r["kind"], "kind": r["kind"],
        "experiment": "" if r["experiment_id"] is None else f"{r['experiment_id']}: {r['experiment']}",
        "attempt": f"{r['attempts']}/{r['max_attempts']}", "finished": r["finished_at"],
        "error": last_line(r["error"]),
    } for r in rows]
    return pd.DataFrame(out, columns=["job", "name", "kind", "experiment", "attempt", "finished", "error"])
