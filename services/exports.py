"""Win-rate tables and CSV exports (`sami winrates`, `sami export`, the app's Win rates
page and its "Download CSV"): one definition of the columns, one formula-safe writer.
"""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db import ingest
from sami_core.results import csv_safe, safe_output_path
from sami_core.stats import count_tokens_approx, count_words, winrate_table
from services.errors import JudgingError

EXPORTS = ("responses", "judgments", "winrates", "mi")

WINRATE_COLUMNS = ("experiment_id", "candidate", "baseline", "judge_model", "temperature", "n", "wins", "losses",
                   "ties", "invalid", "errors", "win_rate", "ci_low", "ci_high", "lc_win_rate", "mean_len_candidate",
                   "mean_len_baseline")
RESPONSE_COLUMNS = ("source_id", "source", "kind", "query_id", "temperature", "sample_index", "query", "text",
                    "n_tokens")
JUDGMENT_COLUMNS = ("id", "job_id", "experiment_id", "candidate", "baseline", "judge_model", "query_id",
                    "temperature", "order", "verdict", "rationale", "candidate_text", "baseline_text", "cache_key")

# Held-out MI (evaluate jobs): one row per (job, scoring model). `label` sampled the
# responses, `scorer` scored them (the label itself, or e.g. the base model).
MI_COLUMNS = ("experiment_id", "job_id", "iteration", "label", "scorer", "model", "n_queries", "n_constitutions",
              "temperature", "mi_lower_bound", "mi_lower_bound_ci_low", "mi_lower_bound_ci_high", "row_accuracy",
              "row_accuracy_ci_low", "row_accuracy_ci_high", "col_accuracy", "col_accuracy_ci_low",
              "col_accuracy_ci_high", "loss")


def stats_records(rows: Sequence[dict]) -> list[dict]:
    """db.ingest.judgment_rows -> the judgment dicts sami_core.stats expects (lengths in words)."""
    return [{
        "experiment_id": r["experiment_id"], "candidate": r["candidate"], "baseline": r["baseline"],
        "judge_model": r["judge_model"], "temperature": r["temperature"], "verdict": r["verdict"],
        "pair_id": f"{r['query_id']}@{r['temperature']}", "order": r["order"],
        "words_candidate": count_words(r["candidate_text"]), "words_baseline": count_words(r["baseline_text"]),
        "tokens_candidate": r["candidate_tokens"] or count_tokens_approx(r["candidate_text"]),
        "tokens_baseline": r["baseline_tokens"] or count_tokens_approx(r["baseline_text"]),
    } for r in rows]


def winrates(rows: Sequence[dict]) -> list[dict]:
    """One row per (experiment, candidate, baseline, judge model, temperature): counts, win rate = (wins + ties/2) /
    decided, 95% Wilson interval, length-controlled win rate, mean lengths in words."""
    table = winrate_table(stats_records(rows), group_by=WINRATE_COLUMNS[:5])
    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and v != v else v  # nan (no decided judgment) -> empty

    return [{c: clean(t.get(c)) for c in WINRATE_COLUMNS} for t in table]


def write_csv(rows: Iterable[dict], columns: Sequence[str], folder: str | Path, name: str) -> Path:
    """Write ``rows`` as UTF-8 CSV with a header to ``folder/name`` (refused when the name
    leaves the folder: for names that come from elsewhere, e.g. a browser); every cell goes
    through csv_safe. Returns the path."""
    try:
        target = safe_output_path(folder, name)
    except ValueError as err:
        raise JudgingError(str(err)) from None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow([csv_safe(r.get(c)) for c in columns])
    return target


def write_csv_file(rows: Iterable[dict], columns: Sequence[str], path: str | Path) -> Path:
    """Write ``rows`` as UTF-8 CSV (header, cells through csv_safe) to ``path``, a path its
    user chose (the command line: no folder guard). Written to a temporary file beside it
    and renamed, so a failure leaves no half-written file. OSError when it cannot be written."""
    target = Path(path).expanduser().absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(columns)
            for r in rows:
                w.writerow([csv_safe(r.get(c)) for c in columns])
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def export_rows(conn: Connection, what: str, *, experiment_id: int | None = None,
                source: str | None = None) -> tuple[list[dict], Sequence[str]]:
    """The rows and columns of one export (``what`` in :data:`EXPORTS`), optionally of one
    experiment and one response source (id, label or label#id; not for ``mi``, the held-out
    MI of evaluate jobs)."""
    if what not in EXPORTS:
        raise JudgingError(f"unknown export {what!r}; one of: {', '.join(EXPORTS)}")
    if what == "mi":
        if source:
            raise JudgingError("--source: the mi export is per evaluate job, not per response source; "
                               "use --experiment")
        return ingest.mi_rows(conn, experiment_id=experiment_id), MI_COLUMNS
    source_id = None
    if source:
        src = ingest.find_source(conn, source, experiment_id=experiment_id)
        if src is None:
            raise JudgingError(f"--source {source!r}: no such response source")
        source_id = src["id"]
    if what == "responses":
        return ingest.response_rows(conn, experiment_id=experiment_id, source=source_id), RESPONSE_COLUMNS
    rows = ingest.judgment_rows(conn, experiment_id=experiment_id, source=source_id)
    if what == "winrates":
        return winrates(rows), WINRATE_COLUMNS
    return rows, JUDGMENT_COLUMNS



ITERATION_COLUMNS = ("iteration", "label", "mi", "mi_ci_low", "mi_ci_high", "baseline", "judge_model", "temperature",
                     "n", "win_rate", "ci_low", "ci_high")


def _iteration_of(label: str) -> int | None:
    """0 for 'base', K for 'iteration-K', else None (another model)."""
    if label == "base":
        return 0
    k = label.removeprefix("iteration-")
    return int(k) if k != label and k.isdigit() else None


def iteration_rows(conn: Connection, experiment_id: int) -> list[dict]:
    """An experiment's progress, one row per model (the base model, then each iteration)
    and judged comparison: its held-out MI as it scores its own responses (95% bootstrap
    interval) and its win rate against a baseline (95% Wilson interval; ``n`` decided
    judgments). What `sami summary` prints (and `make demo-queue` at its end)."""
    mi = {r["label"]: r for r in ingest.mi_rows(conn, experiment_id=experiment_id) if r["scorer"] == r["label"]}
    wr: dict[str, list[dict]] = {}
    for r in winrates(ingest.judgment_rows(conn, experiment_id=experiment_id)):
        wr.setdefault(r["candidate"], []).append(r)
    labels = [x for x in set(mi) | set(wr) if _iteration_of(x) is not None]
    out = []
    for label in sorted(labels, key=_iteration_of):
        m = mi.get(label, {})
        row = {"iteration": _iteration_of(label), "label": label, "mi": m.get("mi_lower_bound"),
               "mi_ci_low": m.get("mi_lower_bound_ci_low"), "mi_ci_high": m.get("mi_lower_bound_ci_high")}
        for w in wr.get(label) or [{}]:
            out.append({**row, **{c: w.get(c) for c in ITERATION_COLUMNS[5:]}})
    return out
