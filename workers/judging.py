"""Response sources and judgments in the database: importing published results, turning a
judge run's ``judgments.jsonl`` into rows, win-rate tables and CSV exports.

Judge stages stay database-free: a judge job's spec names its two sides by a path (a
sample run directory, or a published results file) and by a name that is the response
source's label in the database (``label#id`` when a label is not unique).
:func:`ingest_judge_run` maps each judgment back to the two response rows it compared.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db import experiments, ingest
from sami_core import constitutions
from sami_core.errors import DataError
from sami_core.results import PUBLISHED_DIR, csv_safe, load_published, safe_output_path
from sami_core.stats import count_tokens_approx, count_words, winrate_table


class JudgingError(ValueError):
    """A source that does not exist, or a judge run that does not match the database."""


# --- import-results -------------------------------------------------------------------------


def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.json`` files named or held by the given files/folders, sorted, deduplicated."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise JudgingError(f"{p}: no *.json results files in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise JudgingError(f"{p}: no such file or folder")
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def shipped_results() -> list[Path]:
    return sorted(PUBLISHED_DIR.glob("*.json"))


def import_results_file(conn: Connection, path: Path) -> dict[str, Any]:
    """One published results file -> an ``import`` response source named after the file
    (without .json) and one response per index (query_id = the index). Idempotent."""
    try:
        res = load_published(path)
    except DataError as err:
        raise JudgingError(str(err)) from None
    source_id = ingest.upsert_import_source(
        conn, res.source, path=str(path.resolve()), model=f"{res.model}:{res.checkpoint}",
        temperatures=[res.temperature], constitution_source=res.constitution_source)
    versions: dict[str, int] = {}  # constitution text -> constitutions id
    for text in dict.fromkeys(r.constitution for r in res.rows):
        versions[text] = import_constitution(conn, text, res.constitution_source, path.name)
    ingest.upsert_responses(conn, source_id, [
        {"query_id": r.query_id, "query": r.question, "temperature": res.temperature, "text": r.response,
         "constitution_id": versions[r.constitution]}
        for r in res.rows])
    return {"source_id": source_id, "source": res.source, "checkpoint": res.checkpoint, "model": res.model,
            "constitution_source": res.constitution_source, "temperature": res.temperature,
            "n_responses": len(res.rows), "constitution_ids": sorted(set(versions.values()))}


def import_principles(text: str) -> list[dict[str, str | None]]:
    """A published file's constitution text ("1. ...\n2. ...") as stored principles; a text
    that is not numbered principles is kept whole as one principle."""
    try:
        parsed = constitutions.from_reference({"positive": text, "negative": text})
        principles = [{"principle": p.principle, "antithesis": None} for p in parsed.principles]
    except constitutions.ConstitutionError:
        principles = []
    return principles or [{"principle": text.strip(), "antithesis": None}]


def import_constitution(conn: Connection, text: str, constitution_source: str, file_name: str = "") -> int:
    """The constitutions version ``import:<constitution source>`` with ``text``'s principles
    (identical principles reuse a version); its id."""
    cid, _, _ = experiments.constitution_version(
        conn, f"import:{constitution_source}"[:200], import_principles(text),
        description=f"imported from published results ({file_name})" if file_name else "imported")
    return cid


# --- judge jobs -----------------------------------------------------------------------------


def source_side(source: dict, workspace_home: Path) -> dict[str, Any]:
    """A judge spec's ``candidate``/``baseline`` entry for a response source row
    (db.ingest.find_source): where its responses are, and its label as the name."""
    if source["kind"] == "import":
        if not source.get("path"):
            raise JudgingError(f"response source {source['label']!r} has no file path")
        path = Path(source["path"])
    else:
        run_dir = source.get("job_run_dir")
        if not run_dir:
            raise JudgingError(f"response source {source['label']!r} has no sample run directory")
        path = Path(run_dir)
        path = path if path.is_absolute() else workspace_home / path
        path = path / "responses.jsonl"
    if not path.exists():
        raise JudgingError(f"response source {source['label']!r}: {path} does not exist any more")
    return {"path": str(path), "name": f"{source['label']}#{source['id']}"}


def _pick(rows: list[dict], temperature: float | None) -> dict | None:
    if temperature is not None:
        for r in rows:
            if abs(r["temperature"] - temperature) < 1e-9:
                return r
    return rows[0] if len(rows) == 1 or temperature is None and rows else None


def ingest_judge_run(conn: Connection, run_dir: Path, spec: dict, *, job_id: int | None = None,
                     experiment_id: int | None = None) -> int:
    """Store a judge run's ``judgments.jsonl`` as judgments rows (keyed by pair, position
    and cache key, so a re-ingest updates); errors (no answer) are stored with verdict
    ``error`` and the error message, and replaced when a later run answers. Returns the
    rows written.

    Each side is found by the spec's name (a source label, ``label#id``) and the response
    by (query_id, temperature)."""
    path = Path(run_dir) / "judgments.jsonl"
    if not path.exists():
        raise JudgingError(f"{path} does not exist")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    sides = {}
    for side in ("candidate", "baseline"):
        entry = spec.get(side) or {}
        name = entry.get("name") or ""
        src = ingest.find_source(conn, name, experiment_id=experiment_id) if name else None
        if src is None:
            raise JudgingError(f"judge run {run_dir}: its {side} {name or entry.get('path')!r} is no response "
                               "source in the database (import or sample it first)")
        by_query: dict[str, list[dict]] = {}
        for r in ingest.source_responses(conn, src["id"]):
            by_query.setdefault(r["query_id"], []).append(r)
        sides[side] = (by_query, entry.get("temperature"))
    rows = []
    for rec in records:
        verdict = ingest.VERDICTS_TO_DB.get(rec.get("verdict"), "error")  # anything else: no answer
        if verdict == "error":
            # The message only (the judge client masks API keys in it); the next run retries
            # the pair and its answer replaces this row.
            message = str(rec.get("error") or "judge error")
            rationale, raw = message, message
        else:
            rationale, raw = rec.get("rationale"), rec.get("raw")
        found = {}
        for side, (by_query, temp) in sides.items():
            r = _pick(by_query.get(str(rec["query_id"]), []), temp if temp is not None else rec.get("temperature"))
            if r is None:
                raise JudgingError(f"judge run {run_dir}: {side} response to query {rec['query_id']} "
                                   "is not in the database")
            found[side] = r
        rows.append({
            "job_id": job_id, "candidate_id": found["candidate"]["id"], "baseline_id": found["baseline"]["id"],
            "constitution_id": found["candidate"]["constitution_id"],
            "candidate_position": "A" if rec.get("order") == "candidate_first" else "B",
            "judge_model": str(rec.get("judge_model", ""))[:200], "verdict": verdict,
            "rationale": rationale, "raw_text": raw, "cache_key": rec["cache_key"],
        })
    return ingest.upsert_judgments(conn, rows)


# --- win rates and exports ------------------------------------------------------------------

WINRATE_COLUMNS = ("experiment_id", "candidate", "baseline", "judge_model", "temperature", "n", "wins", "losses",
                   "ties", "invalid", "errors", "win_rate", "ci_low", "ci_high", "lc_win_rate", "mean_len_candidate",
                   "mean_len_baseline")
RESPONSE_COLUMNS = ("source_id", "source", "kind", "query_id", "temperature", "sample_index", "query", "text",
                    "n_tokens")
JUDGMENT_COLUMNS = ("id", "job_id", "experiment_id", "candidate", "baseline", "judge_model", "query_id",
                    "temperature", "order", "verdict", "rationale", "candidate_text", "baseline_text", "cache_key")


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
    leaves the folder); every cell goes through csv_safe. Returns the path."""
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
