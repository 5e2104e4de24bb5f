"""What the Win rates page (app/views/winrates.py) shows, as functions without
Streamlit: the win-rate table (the same rows as ``sami winrates`` / ``sami export
winrates``: services.exports.winrates over db.ingest.judgment_rows), filtered, ordered by
checkpoint, and its CSV; beside it the held-out MI of evaluate jobs (the rows of ``sami
export mi``), per checkpoint and scoring model."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from typing import Any

import pandas as pd
from sqlalchemy.engine import Connection

from db import ingest
from sami_core.results import csv_safe
from services.exports import MI_COLUMNS, WINRATE_COLUMNS, winrates

COLUMNS = WINRATE_COLUMNS
ALL = "All"

_ITERATION = re.compile(r"iteration-(\d+)")
_NUMBER = re.compile(r"(\d+(?:\.\d+)?)")


def winrate_table(conn: Connection, experiment_id: int | None = None) -> list[dict[str, Any]]:
    """services.exports.winrates of the judgments (of one experiment, or all): one row per
    (experiment, candidate, baseline, judge model, temperature)."""
    return winrates(ingest.judgment_rows(conn, experiment_id=experiment_id))


def _natural(label: str) -> tuple:
    return tuple(float(p) if i % 2 else p for i, p in enumerate(_NUMBER.split(label)))


def order_key(row: dict, sources: Sequence[dict]) -> tuple:
    """Where a win-rate row's candidate goes on the x axis: experiment, then its
    checkpoint's (iteration, step); sources without a checkpoint (baselines, imported
    files) by the ``iteration-<t>`` in their label (none: first), then by label with
    numbers compared as numbers."""
    label = str(row.get("candidate"))
    found = [s for s in sources if s["label"] == label
             and (row.get("experiment_id") is None or s.get("experiment_id") in (row.get("experiment_id"), None))]
    it = step = None
    for s in found:
        if s.get("iteration") is not None:
            it, step = s["iteration"], s.get("step")
            break
    if it is None:
        m = _ITERATION.search(label)
        it = int(m.group(1)) if m else -1
    exp = row.get("experiment_id")
    return (exp is None, exp or 0, it, -1 if step is None else step, _natural(label))


def options(rows: Sequence[dict], key: str) -> list[Any]:
    """The distinct values of ``key`` in the rows, sorted (None last)."""
    return sorted(dict.fromkeys(r.get(key) for r in rows), key=lambda v: (v is None, str(v) if v is not None else ""))


def shown_rows(rows: Sequence[dict], sources: Sequence[dict], *, baseline: Any = ALL, temperature: Any = ALL,
               judge_model: Any = ALL) -> list[dict]:
    """The table's rows: filtered (``ALL`` keeps every value), ordered by checkpoint
    (:func:`order_key`), then baseline, temperature, judge model."""
    keep = [r for r in rows
            if (baseline == ALL or r["baseline"] == baseline)
            and (temperature == ALL or r["temperature"] == temperature)
            and (judge_model == ALL or r["judge_model"] == judge_model)]
    return sorted(keep, key=lambda r: (order_key(r, sources), str(r["baseline"]), r["temperature"] or 0.0,
                                       str(r["judge_model"])))


def table_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The rows as the table shows them: exactly :data:`COLUMNS`, in that order."""
    df = pd.DataFrame([{c: r.get(c) for c in COLUMNS} for r in rows], columns=list(COLUMNS))
    return df.astype({"experiment_id": "Int64"})  # ids stay integers next to imports' empty ones


def chart_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The rows for app.charts (a ``checkpoint`` column: the candidate's label, prefixed by
    its experiment when the rows span several)."""
    df = table_frame(rows)
    if df.empty:
        return df.assign(checkpoint=pd.Series(dtype=str))
    several = df["experiment_id"].nunique(dropna=False) > 1
    df["checkpoint"] = [f"e{e}/{c}" if several and not pd.isna(e) else str(c)
                        for e, c in zip(df["experiment_id"], df["candidate"])]
    return df


def chart_caption(length_controlled: bool) -> str:
    """What the win-rate chart shows, and which interval its bars are (none when length-controlled)."""
    if length_controlled:
        what = ("Length-controlled win rate: the win rate a logistic fit of the verdict on the length difference "
                "predicts at equal lengths; no interval is shown (the table's ci_low / ci_high are the raw win "
                "rate's).")
    else:
        what = ("Win rate = (wins + ties/2) / decided judgments; bars: 95% Wilson interval; invalid answers and "
                "errors are counted apart.")
    return (f"{what} Series that share a checkpoint sit side by side. PNG of the chart: use the camera icon in the "
            "chart's toolbar.")


def to_csv(rows: Sequence[dict], columns: Sequence[str] = COLUMNS) -> bytes:
    """UTF-8 CSV with a header, every cell through csv_safe: what write_csv writes to a file."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    for r in rows:
        w.writerow([csv_safe(r.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


# ---- held-out MI ------------------------------------------------------------------------------
def mi_table(conn: Connection, experiment_id: int | None = None) -> list[dict[str, Any]]:
    """The stored held-out MI (db.ingest.mi_rows: one row per evaluate job and scoring
    model) of one experiment, or of all."""
    return ingest.mi_rows(conn, experiment_id=experiment_id)


def mi_chart_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """The rows as app.charts.mi_figure takes them, ordered by experiment, iteration (the
    base model, iteration 0, first) and label: :data:`MI_COLUMNS` plus ``checkpoint`` (the
    label that sampled the responses, prefixed by its experiment when the rows span
    several) and ``series`` (``scored by <scorer>``, or ``own`` when a model scored its own
    responses)."""
    ordered = sorted(rows, key=lambda r: (r.get("experiment_id") is None, r.get("experiment_id") or 0,
                                          -1 if r.get("iteration") is None else r["iteration"],
                                          _natural(str(r.get("label"))), str(r.get("scorer"))))
    df = pd.DataFrame([{c: r.get(c) for c in MI_COLUMNS} for r in ordered], columns=list(MI_COLUMNS))
    several = df["experiment_id"].nunique(dropna=False) > 1
    df["checkpoint"] = [f"e{e}/{lab}" if several else str(lab) for e, lab in zip(df["experiment_id"], df["label"])]
    df["series"] = ["own" if sc == lab else f"scored by {sc}" for sc, lab in zip(df["scorer"], df["label"])]
    return df
