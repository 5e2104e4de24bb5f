"""What the Experiments page (app/views/experiments.py) shows, as functions without
Streamlit: experiments side by side (model, constitution, N, lr, beta, iterations, state,
latest win rate, held-out MI, final loss, created, duration), filtered; the curves of the
experiments picked for comparison; a sweep's outcome per point.

Inputs are the rows of db.reads.experiments (a fixed number of queries for any number
of experiments); the latest win rate and MI are chosen as on the Overview
(app.overview.latest_winrate: the latest judged iteration against the first baseline,
lowest temperature; the latest evaluated model scored by itself).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from app.formatting import format_duration
from app.overview import experiment_state, latest_winrate
from services.sweeps import format_value, point_label

_ITERATION = re.compile(r"^iteration-(\d+)$")
COLUMNS = ["id", "name", "sweep", "model", "constitution", "N", "lr", "beta", "iterations", "state", "win rate",
           "judged", "MI (nats)", "final loss", "created", "duration"]
# What a sweep's chart can plot against the swept values: (label, table column).
OUTCOMES = {"latest win rate": "win rate", "held-out MI (nats)": "MI (nats)", "final train loss": "final loss"}


def _spec(row: Mapping[str, Any], *keys: str) -> Any:
    node: Any = row.get("spec") or {}
    for k in keys:
        node = node.get(k) if isinstance(node, Mapping) else None
    return node


def baselines(row: Mapping[str, Any]) -> list[str]:
    """The judge baselines of an experiment's spec, by label."""
    return [b if isinstance(b, str) else str(b.get("label")) for b in (_spec(row, "judge", "baselines") or [])]


def constitution_text(row: Mapping[str, Any]) -> str:
    """``name vK`` of the version its jobs use; a set: ``set of K: name``."""
    c = row.get("constitution")
    if c:
        return f"{c['name']} v{c['version']}"
    members = _spec(row, "constitution", "members")
    if members:
        return f"set of {len(members)}: {_spec(row, 'constitution', 'name') or ''}".rstrip(": ")
    return str(_spec(row, "constitution", "name") or "-")


def duration_s(row: Mapping[str, Any], now: datetime) -> float | None:
    """From the first job's start to the last one's end (to ``now`` while any job is
    running or queued); None before any job started."""
    start = row.get("started_at")
    if start is None:
        return None
    counts = row.get("counts") or {}
    busy = counts.get("running") or counts.get("queued")
    end = now if busy or row.get("finished_at") is None else row["finished_at"]
    return max(0.0, (end - start).total_seconds())


def latest_winrates(rows: Sequence[Mapping], winrate_rows: Sequence[Mapping]) -> dict[int, dict | None]:
    """experiment id -> app.overview.latest_winrate's row (None when nothing was judged)."""
    by_exp: dict[int, list[dict]] = {}
    for w in winrate_rows:
        by_exp.setdefault(w["experiment_id"], []).append(dict(w))
    return {r["id"]: latest_winrate(by_exp.get(r["id"], []), baselines(r)) for r in rows}


def latest_mis(mi_rows: Sequence[Mapping]) -> dict[int, dict]:
    """experiment id -> its latest evaluated model's MI row (the highest iteration, then job)."""
    out: dict[int, dict] = {}
    for m in mi_rows:
        cur = out.get(m["experiment_id"])
        if cur is None or ((m.get("iteration") or 0), m["job_id"]) >= ((cur.get("iteration") or 0), cur["job_id"]):
            out[m["experiment_id"]] = dict(m)
    return out


def final_loss(loss_rows: Sequence[Mapping]) -> dict[int, float]:
    """experiment id -> the loss at the last step of its latest iteration's train job
    (db.reads.experiments.final_losses rows)."""
    out: dict[int, tuple] = {}
    for r in loss_rows:
        key = (r.get("iteration") or 0, r["job_id"])
        if r["experiment_id"] not in out or key >= out[r["experiment_id"]][0]:
            out[r["experiment_id"]] = (key, r["value"])
    return {k: v for k, (_, v) in out.items()}


def table_frame(rows: Sequence[Mapping], winrate_rows: Sequence[Mapping] = (), mi_rows: Sequence[Mapping] = (),
                loss_rows: Sequence[Mapping] = (), now: datetime | None = None) -> pd.DataFrame:
    """db.reads.experiments.experiment_rows (and the win-rate, MI and final-loss rows of
    the same experiments) -> the comparison table, one row per experiment; numbers stay
    numbers (the table sorts them as such)."""
    now = now or datetime.now(timezone.utc)
    wr, mi, loss = latest_winrates(rows, winrate_rows), latest_mis(mi_rows), final_loss(loss_rows)
    out = []
    for r in rows:
        w, m = wr.get(r["id"]), mi.get(r["id"])
        out.append({
            "id": r["id"], "name": r["name"],
            "sweep": "" if r.get("sweep_id") is None else f"#{r['sweep_id']}",
            "model": str(_spec(r, "model", "path") or "-"), "constitution": constitution_text(r),
            "N": _spec(r, "n_constitutions"), "lr": _spec(r, "training", "lr"), "beta": _spec(r, "training", "beta"),
            "iterations": _spec(r, "iterations"), "state": experiment_state(r.get("counts") or {}),
            "win rate": None if w is None else w.get("win_rate"),
            "judged": "" if w is None else f"{w['candidate']} vs {w['baseline']} (n={w.get('n') or 0})",
            "MI (nats)": None if m is None else m["mi_lower_bound"], "final loss": loss.get(r["id"]),
            "created": r["created_at"], "duration": format_duration(duration_s(r, now)),
        })
    return pd.DataFrame(out, columns=COLUMNS)


def filter_frame(df: pd.DataFrame, text: str = "", states: Iterable[str] = ()) -> pd.DataFrame:
    """Rows whose name, model or constitution contains ``text`` (case-insensitive; ``#3``
    or ``3`` also matches experiment or sweep 3), in one of ``states`` (none given: all)."""
    keep = pd.Series(True, index=df.index)
    text = (text or "").strip().lower()
    if text:
        hay = (df["name"].astype(str) + " " + df["model"].astype(str) + " " + df["constitution"].astype(str)
               + " " + df["sweep"].astype(str)).str.lower()
        keep &= hay.str.contains(text, regex=False) | (df["id"].astype(str) == text.lstrip("#"))
    states = list(states)
    if states:
        keep &= df["state"].isin(states)
    return df[keep]


def experiment_label(row: Mapping[str, Any]) -> str:
    return f"{row['id']}: {row['name']}"


def loss_frame(loss_rows: Sequence[Mapping], labels: Mapping[int, str]) -> pd.DataFrame:
    """db.reads.experiments.loss_points -> columns experiment (label), iteration, step
    (the iteration's own), total_step (steps of earlier iterations added, so iterations
    follow each other on one axis), value."""
    if not loss_rows:
        return pd.DataFrame(columns=["experiment", "iteration", "step", "total_step", "value"])
    df = pd.DataFrame(list(loss_rows))
    df["iteration"] = df["iteration"].fillna(0).astype(int)
    last = df.groupby(["experiment_id", "iteration"])["step"].max().reset_index()
    last["offset"] = last.groupby("experiment_id")["step"].transform(lambda s: s.cumsum().shift(fill_value=0))
    df = df.merge(last[["experiment_id", "iteration", "offset"]], on=["experiment_id", "iteration"])
    df["total_step"] = df["step"] + df["offset"]
    df["experiment"] = df["experiment_id"].map(labels)
    return df[["experiment", "iteration", "step", "total_step", "value"]].sort_values(
        ["experiment", "total_step"], kind="stable").reset_index(drop=True)


def winrate_frame(rows: Sequence[Mapping], winrate_rows: Sequence[Mapping], labels: Mapping[int, str]) -> pd.DataFrame:
    """Win rate per iteration (candidates ``iteration-t``) of each experiment, against the
    baseline and temperature its latest win rate uses: columns experiment, iteration,
    win_rate, baseline, n."""
    chosen = latest_winrates(rows, winrate_rows)
    out = []
    for w in winrate_rows:
        c, m = chosen.get(w["experiment_id"]), _ITERATION.match(str(w["candidate"]))
        if c is None or m is None or w["win_rate"] is None:
            continue
        if (w["baseline"], w["temperature"], w["judge_model"]) == (c["baseline"], c["temperature"], c["judge_model"]):
            out.append({"experiment": labels.get(w["experiment_id"]), "iteration": int(m[1]),
                        "win_rate": w["win_rate"], "baseline": w["baseline"], "n": w["n"]})
    df = pd.DataFrame(out, columns=["experiment", "iteration", "win_rate", "baseline", "n"])
    return df.sort_values(["experiment", "iteration"], kind="stable").reset_index(drop=True)


def mi_frame(mi_rows: Sequence[Mapping], labels: Mapping[int, str]) -> pd.DataFrame:
    """Held-out MI per iteration (0 = the base model): columns experiment, iteration, mi, ci_low, ci_high."""
    out = [{"experiment": labels.get(m["experiment_id"]), "iteration": int(m.get("iteration") or 0),
            "mi": m["mi_lower_bound"], "ci_low": m["mi_lower_bound_ci_low"], "ci_high": m["mi_lower_bound_ci_high"]}
           for m in mi_rows]
    df = pd.DataFrame(out, columns=["experiment", "iteration", "mi", "ci_low", "ci_high"])
    return df.sort_values(["experiment", "iteration"], kind="stable").reset_index(drop=True)


def sweep_frame(table: pd.DataFrame, rows: Sequence[Mapping], grid: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """A sweep's points: experiment id, one column per swept path (its value), point (a
    short label), state and the outcomes (win rate, MI, final loss), in grid order."""
    paths = list(grid)
    order = {tuple(map(repr, combo)): k for k, combo in enumerate(_combos(grid))}
    by_id = table.set_index("id")
    out = []
    for r in rows:
        point = r.get("sweep_point") or {}
        t = by_id.loc[r["id"]] if r["id"] in by_id.index else None
        out.append({"experiment": r["id"], **{p: point.get(p) for p in paths}, "point": point_label(point),
                    "state": None if t is None else t["state"],
                    **{col: None if t is None else t[col] for col in OUTCOMES.values()},
                    "_order": order.get(tuple(repr(point.get(p)) for p in paths), len(order))})
    df = pd.DataFrame(out, columns=["experiment", *paths, "point", "state", *OUTCOMES.values(), "_order"])
    return df.sort_values(["_order", "experiment"], kind="stable").drop(columns="_order").reset_index(drop=True)


def _combos(grid: Mapping[str, Sequence[Any]]) -> list[tuple]:
    return list(itertools.product(*[list(v) for v in grid.values()]))


def sweep_caption(grid: Mapping[str, Sequence[Any]]) -> str:
    """``training.lr: 1e-07, 5e-07 x training.beta: 0, 0.1 (4 points)``."""
    n = 1
    for v in grid.values():
        n *= len(v)
    return " x ".join(f"{p}: {', '.join(format_value(x) for x in v)}" for p, v in grid.items()) + f" ({n} points)"
