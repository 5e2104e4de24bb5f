"""Writes of what jobs produce: metrics (while they run), checkpoints and responses
(when they end), and a judge run's judgments.

All are idempotent, keyed by what identifies a record ((job, name, step) for a metric,
(job, step) for a checkpoint, the sample job for a response source, (source, query,
temperature, sample index) for a response): a resumed stage that logs a step again,
or a worker that re-ingests after a crash, overwrites rather than duplicates.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from db.experiments import set_label, set_members
from db.models import (Checkpoint, Constitution, GeneratedResponse, Job, Judgment, Metric, MIResult, Response,
                       ResponseSource, utcnow)



class IngestError(ValueError):
    """A stage's output that does not match the database (a side that is no response
    source, a response that is not stored)."""


jobs = Job.__table__
metrics = Metric.__table__
checkpoints = Checkpoint.__table__
response_sources = ResponseSource.__table__
responses = Response.__table__


def _upsert(conn: Connection, table, rows: list[dict], keys: list[str]) -> None:  # noqa: ANN001
    if not rows:
        return
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(table)
    updated = {c: stmt.excluded[c] for c in rows[0] if c not in keys}
    conn.execute(stmt.on_conflict_do_update(index_elements=keys, set_=updated), rows)


def _finite_float(v: int | float) -> float | None:
    try:
        f = float(v)  # an int past 1e308 raises OverflowError
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def metric_rows(record: Mapping[str, Any]) -> list[tuple[str, float | None, Any]]:
    """Split one metrics.jsonl record into (name, value, value_json) triples.

    Numbers become ``value``; lists and dicts (e.g. the N x N ``matrix``) become
    ``value_json``; strings, booleans and non-finite numbers are kept as JSON too so
    nothing is silently lost. ``step`` is not a metric.
    """
    out: list[tuple[str, float | None, Any]] = []
    for name, v in record.items():
        if name == "step":
            continue
        if isinstance(v, (int, float)) and not isinstance(v, bool) and _finite_float(v) is not None:
            out.append((name, _finite_float(v), None))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):  # nan / inf / past 1e308
            out.append((name, None, str(v)))
        else:
            out.append((name, None, v))
    return out


def upsert_metrics(
    conn: Connection, job_id: int, records: Iterable[Mapping[str, Any]], *, now: datetime | None = None
) -> int:
    """Store metrics.jsonl records (each with an int ``step``); return the rows written."""
    now = now or utcnow()
    rows: dict[tuple[str, int], dict] = {}  # last write wins within a batch too
    for rec in records:
        step = int(rec["step"])
        for name, value, value_json in metric_rows(rec):
            rows[(name, step)] = {
                "job_id": job_id, "step": step, "name": name[:200], "value": value,
                "value_json": value_json, "created_at": now,
            }
    _upsert(conn, metrics, list(rows.values()), ["job_id", "name", "step"])
    return len(rows)


MI_FIELDS = ("n_queries", "n_constitutions", "mi_lower_bound", "mi_lower_bound_ci_low", "mi_lower_bound_ci_high",
             "row_accuracy", "row_accuracy_ci_low", "row_accuracy_ci_high", "col_accuracy", "col_accuracy_ci_low",
             "col_accuracy_ci_high", "loss")


def upsert_mi_results(conn: Connection, job_id: int, label: str, by_scorer: Mapping[str, Mapping[str, Any]], *,
                      experiment_id: int | None = None, iteration: int | None = None,
                      temperature: float | None = None) -> int:
    """Store an evaluate job's figures, one row per scoring model (``by_scorer``: scorer
    label -> {model, and every name of :data:`MI_FIELDS`}), keyed (job, scorer); return
    the rows written. Raises ValueError naming a missing or non-finite figure."""
    rows = []
    for scorer, figures in by_scorer.items():
        row = {"job_id": job_id, "experiment_id": experiment_id, "iteration": iteration, "label": label[:200],
               "scorer": str(scorer)[:200], "model": figures.get("model"), "temperature": temperature,
               "created_at": utcnow()}
        for name in MI_FIELDS:
            v = figures.get(name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ValueError(f"by_model.{scorer}.{name}: expected a finite number, got {v!r}")
            row[name] = v
        rows.append(row)
    _upsert(conn, MIResult.__table__, rows, ["job_id", "scorer"])
    return len(rows)


def mi_rows(conn: Connection, *, experiment_id: int | None = None) -> list[dict]:
    """Stored held-out MI figures (every column of mi_results but created_at), ordered by
    experiment, iteration (base first), job and scorer."""
    t = MIResult.__table__
    stmt = select(*[c for c in t.c if c.name != "created_at"])
    if experiment_id is not None:
        stmt = stmt.where(t.c.experiment_id == experiment_id)
    stmt = stmt.order_by(t.c.experiment_id, t.c.iteration, t.c.job_id, t.c.scorer)
    return [dict(r) for r in conn.execute(stmt).mappings()]


def set_metrics_offset(conn: Connection, job_id: int, offset: int) -> None:
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(metrics_offset=offset))


def upsert_checkpoints(
    conn: Connection,
    job_id: int,
    items: Iterable[Mapping[str, Any]],
    *,
    experiment_id: int | None = None,
    iteration: int | None = None,
    now: datetime | None = None,
) -> int:
    """Store checkpoints ({"step", "path", "final"}) of a job; return how many."""
    now = now or utcnow()
    rows = [
        {
            "job_id": job_id, "experiment_id": experiment_id, "iteration": iteration,
            "step": int(c["step"]), "path": str(c["path"]), "final": bool(c.get("final", False)),
            "created_at": now,
        }
        for c in items
    ]
    _upsert(conn, checkpoints, rows, ["job_id", "step"])
    return len(rows)


def find_checkpoint(conn: Connection, path: str, *, experiment_id: int | None = None) -> int | None:
    """The id of the checkpoint stored with exactly this ``path`` (of this experiment,
    when given), or None."""
    stmt = select(checkpoints.c.id).where(checkpoints.c.path == path)
    if experiment_id is not None:
        stmt = stmt.where(checkpoints.c.experiment_id == experiment_id)
    return conn.execute(stmt.order_by(checkpoints.c.id.desc()).limit(1)).scalar_one_or_none()


def upsert_response_source(
    conn: Connection,
    job_id: int,
    *,
    kind: str,
    label: str,
    checkpoint_id: int | None = None,
    model: str | None = None,
    experiment_id: int | None = None,
    temperatures: list[float] | None = None,
    now: datetime | None = None,
) -> int:
    """The response source of sample job ``job_id`` (one per job), created or updated; its id."""
    values = {"kind": kind, "label": label[:200], "checkpoint_id": checkpoint_id, "model": model,
              "experiment_id": experiment_id, "temperatures": temperatures}
    found = conn.execute(select(response_sources.c.id).where(response_sources.c.job_id == job_id)
                         .order_by(response_sources.c.id).limit(1)).scalar_one_or_none()
    if found is not None:
        conn.execute(update(response_sources).where(response_sources.c.id == found).values(**values))
        return found
    return conn.execute(
        insert(response_sources).values(job_id=job_id, created_at=now or utcnow(), **values)
        .returning(response_sources.c.id)
    ).scalar_one()


RESPONSE_KEY = ["source_id", "query_id", "temperature", "sample_index"]


def upsert_responses(
    conn: Connection, source_id: int, items: Iterable[Mapping[str, Any]], *, constitution_id: int | None = None,
    now: datetime | None = None,
) -> int:
    """Store responses ({"query_id", "query", "temperature", "text", "n_tokens",
    "sample_index"?, "constitution_id"?}) of a source; return how many. An item's own
    ``constitution_id`` wins over the argument."""
    now = now or utcnow()
    rows: dict[tuple, dict] = {}
    for r in items:
        row = {
            "source_id": source_id, "query_id": str(r["query_id"])[:200], "query": r.get("query"),
            "constitution_id": r.get("constitution_id", constitution_id), "temperature": float(r["temperature"]),
            "sample_index": int(r.get("sample_index", 0)), "text": str(r["text"]),
            "n_tokens": None if r.get("n_tokens") is None else int(r["n_tokens"]), "created_at": now,
        }
        rows[tuple(row[k] for k in RESPONSE_KEY)] = row  # last write wins within a batch too
    _upsert(conn, responses, list(rows.values()), RESPONSE_KEY)
    return len(rows)


# --- imported results files ------------------------------------------------------------------


def upsert_import_source(
    conn: Connection, label: str, *, path: str, model: str | None = None, temperatures: list[float] | None = None,
    constitution_source: str | None = None, now: datetime | None = None,
) -> int:
    """The ``import`` response source named ``label`` (one per name), created or updated; its id."""
    values = {"path": path, "model": model, "temperatures": temperatures,
              "constitution_source": None if constitution_source is None else constitution_source[:200]}
    found = conn.execute(select(response_sources.c.id).where(
        response_sources.c.kind == "import", response_sources.c.label == label[:200])
        .order_by(response_sources.c.id).limit(1)).scalar_one_or_none()
    if found is not None:
        conn.execute(update(response_sources).where(response_sources.c.id == found).values(**values))
        return found
    return conn.execute(
        insert(response_sources).values(kind="import", label=label[:200], created_at=now or utcnow(), **values)
        .returning(response_sources.c.id)
    ).scalar_one()


# --- judgments -------------------------------------------------------------------------------

judgments = Judgment.__table__

# sami_core's verdicts are from the candidate's side; the table names the preferred side.
# "error": the judge gave no answer after all attempts (counted apart, replaced by a later answer).
VERDICTS_TO_DB = {"win": "candidate", "loss": "baseline", "tie": "tie", "invalid": "invalid", "error": "error"}
VERDICTS_FROM_DB = {v: k for k, v in VERDICTS_TO_DB.items()}


def find_source(conn: Connection, ref: str, *, experiment_id: int | None = None) -> dict | None:
    """A response source by id (``"12"`` or ``"#12"``), ``label#id``, or label (this
    experiment's first when given, else the newest); None when none matches."""
    cols = [response_sources, jobs.c.run_dir.label("job_run_dir")]
    base = select(*cols).select_from(response_sources.outerjoin(jobs, jobs.c.id == response_sources.c.job_id))
    ref = ref.strip()
    ident = ref.rsplit("#", 1)[1] if "#" in ref else ref
    if ident.isdigit():
        row = conn.execute(base.where(response_sources.c.id == int(ident))).mappings().first()
        if row is not None:
            return dict(row)
    stmt = base.where(response_sources.c.label == ref)
    if experiment_id is not None:
        row = conn.execute(stmt.where(response_sources.c.experiment_id == experiment_id)
                           .order_by(response_sources.c.id.desc())).mappings().first()
        if row is not None:
            return dict(row)
    row = conn.execute(stmt.order_by(response_sources.c.id.desc())).mappings().first()
    return None if row is None else dict(row)


def list_sources(conn: Connection) -> list[dict]:
    """Every response source with its response count, oldest first. A sampled source also
    carries the constitution its sample job used (``constitution_name``,
    ``constitution_version``; None for imported ones, which have ``constitution_source``),
    or the set its job drew from (``constitution_set``: "set of K: ...", else None)."""
    n = (select(responses.c.source_id, func.count().label("n_responses")).group_by(responses.c.source_id)
         .subquery())
    constitutions = Constitution.__table__
    rows = conn.execute(select(response_sources, func.coalesce(n.c.n_responses, 0).label("n_responses"),
                               constitutions.c.name.label("constitution_name"),
                               constitutions.c.version.label("constitution_version"))
                        .outerjoin(n, n.c.source_id == response_sources.c.id)
                        .outerjoin(jobs, jobs.c.id == response_sources.c.job_id)
                        .outerjoin(constitutions, constitutions.c.id == jobs.c.constitution_id)
                        .order_by(response_sources.c.id)).mappings().all()
    sets = set_members(conn, [r["job_id"] for r in rows if r["job_id"] is not None])
    return [{**r, "constitution_set": set_label(sets[r["job_id"]]) if r["job_id"] in sets else None} for r in rows]


def source_constitution(source: Mapping[str, Any]) -> str:
    """How a source's constitution reads in tables: an imported file's constitution source
    (e.g. ``opus``), a sampled source's ``name vN``, or ``-``."""
    if source.get("constitution_source"):
        return str(source["constitution_source"])
    if source.get("constitution_set"):
        return str(source["constitution_set"])
    if source.get("constitution_name"):
        return f"{source['constitution_name']} v{source.get('constitution_version') or 1}"
    return "-"


def source_responses(conn: Connection, source_id: int) -> list[dict]:
    """(id, query_id, temperature, constitution_id) of a source's responses."""
    rows = conn.execute(select(responses.c.id, responses.c.query_id, responses.c.temperature,
                               responses.c.constitution_id).where(responses.c.source_id == source_id)
                        .order_by(responses.c.id)).mappings().all()
    return [dict(r) for r in rows]


JUDGMENT_KEY = ["candidate_id", "baseline_id", "candidate_position", "cache_key"]


def upsert_judgments(conn: Connection, rows: list[dict]) -> int:
    """Store judgments keyed by (candidate response, baseline response, position shown,
    cache key): ingesting a judge run again updates, never duplicates; return how many.

    An ``error`` row (no answer) is replaced by a later answer for the same key, but never
    replaces an answer already stored."""
    by_key = {tuple(r[k] for k in JUDGMENT_KEY): r for r in rows}
    if not by_key:
        return 0
    batch = list(by_key.values())
    dialect_insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    stmt = dialect_insert(judgments)
    updated = {c: stmt.excluded[c] for c in batch[0] if c not in JUDGMENT_KEY}
    keep_answers = (judgments.c.verdict == "error") | (stmt.excluded.verdict != "error")
    conn.execute(stmt.on_conflict_do_update(index_elements=JUDGMENT_KEY, set_=updated, where=keep_answers), batch)
    return len(by_key)


def _pick_response(rows: list[dict], temperature: float | None) -> dict | None:
    if temperature is not None:
        for r in rows:
            if abs(r["temperature"] - temperature) < 1e-9:
                return r
    return rows[0] if len(rows) == 1 or temperature is None and rows else None


def ingest_judgments(conn: Connection, path: Path, spec: Mapping[str, Any], *, job_id: int | None = None,
                     experiment_id: int | None = None) -> int:
    """Store a judge run's ``judgments.jsonl`` (``path``) as judgments rows (keyed by pair, position
    and cache key, so a re-ingest updates); errors (no answer) are stored with verdict
    ``error`` and the error message, and replaced when a later run answers. Returns the
    rows written.

    Each side is found by the spec's name (a source label, ``label#id``) and the response
    by (query_id, temperature)."""
    path = Path(path)
    run_dir = path.parent
    if not path.exists():
        raise IngestError(f"{path} does not exist")
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    sides = {}
    for side in ("candidate", "baseline"):
        entry = spec.get(side) or {}
        name = entry.get("name") or ""
        src = find_source(conn, name, experiment_id=experiment_id) if name else None
        if src is None:
            raise IngestError(f"judge run {run_dir}: its {side} {name or entry.get('path')!r} is no response "
                               "source in the database (import or sample it first)")
        by_query: dict[str, list[dict]] = {}
        for r in source_responses(conn, src["id"]):
            by_query.setdefault(r["query_id"], []).append(r)
        sides[side] = (by_query, entry.get("temperature"))
    rows = []
    for rec in records:
        verdict = VERDICTS_TO_DB.get(rec.get("verdict"), "error")  # anything else: no answer
        if verdict == "error":
            # The message only (the judge client masks API keys in it); the next run retries
            # the pair and its answer replaces this row.
            message = str(rec.get("error") or "judge error")
            rationale, raw = message, message
        else:
            rationale, raw = rec.get("rationale"), rec.get("raw")
        found = {}
        for side, (by_query, temp) in sides.items():
            r = _pick_response(by_query.get(str(rec["query_id"]), []), temp if temp is not None else rec.get("temperature"))
            if r is None:
                raise IngestError(f"judge run {run_dir}: {side} response to query {rec['query_id']} "
                                   "is not in the database")
            found[side] = r
        rows.append({
            "job_id": job_id, "candidate_id": found["candidate"]["id"], "baseline_id": found["baseline"]["id"],
            "constitution_id": found["candidate"]["constitution_id"],
            "candidate_position": "A" if rec.get("order") == "candidate_first" else "B",
            "judge_model": str(rec.get("judge_model", ""))[:200], "verdict": verdict,
            "rationale": rationale, "raw_text": raw, "cache_key": rec["cache_key"],
        })
    return upsert_judgments(conn, rows)


def judgment_rows(conn: Connection, *, experiment_id: int | None = None, source: int | None = None) -> list[dict]:
    """Judgments as plain dicts for statistics and exports: ids, both sources' labels, the
    verdict from the candidate's side (win/loss/tie/invalid/error), both response texts."""
    cand, base = responses.alias("cand"), responses.alias("base")
    csrc, bsrc = response_sources.alias("csrc"), response_sources.alias("bsrc")
    experiment = func.coalesce(jobs.c.experiment_id, csrc.c.experiment_id)
    stmt = (
        select(judgments.c.id, judgments.c.job_id, experiment.label("experiment_id"), judgments.c.judge_model,
               judgments.c.verdict, judgments.c.candidate_position, judgments.c.rationale, judgments.c.cache_key,
               cand.c.query_id, cand.c.temperature, cand.c.text.label("candidate_text"),
               cand.c.n_tokens.label("candidate_tokens"), base.c.text.label("baseline_text"),
               base.c.n_tokens.label("baseline_tokens"), csrc.c.id.label("candidate_source_id"),
               csrc.c.label.label("candidate"), bsrc.c.id.label("baseline_source_id"),
               bsrc.c.label.label("baseline"))
        .select_from(judgments.join(cand, cand.c.id == judgments.c.candidate_id)
                     .join(base, base.c.id == judgments.c.baseline_id)
                     .join(csrc, csrc.c.id == cand.c.source_id).join(bsrc, bsrc.c.id == base.c.source_id)
                     .outerjoin(jobs, jobs.c.id == judgments.c.job_id))
        .order_by(judgments.c.id)
    )
    if experiment_id is not None:
        stmt = stmt.where(experiment == experiment_id)
    if source is not None:
        stmt = stmt.where((csrc.c.id == source) | (bsrc.c.id == source))
    out = []
    for r in conn.execute(stmt).mappings():
        d = dict(r)
        d["verdict"] = VERDICTS_FROM_DB.get(d["verdict"], d["verdict"])
        d["order"] = "candidate_first" if d.pop("candidate_position") == "A" else "baseline_first"
        out.append(d)
    return out


def response_rows(conn: Connection, *, experiment_id: int | None = None, source: int | None = None) -> list[dict]:
    """Responses with their source's label, for exports."""
    stmt = (select(responses.c.id, response_sources.c.id.label("source_id"), response_sources.c.label.label("source"),
                   response_sources.c.kind, responses.c.query_id, responses.c.temperature, responses.c.sample_index,
                   responses.c.query, responses.c.text, responses.c.n_tokens)
            .select_from(responses.join(response_sources, response_sources.c.id == responses.c.source_id))
            .order_by(response_sources.c.id, responses.c.id))
    if experiment_id is not None:
        stmt = stmt.where(response_sources.c.experiment_id == experiment_id)
    if source is not None:
        stmt = stmt.where(response_sources.c.id == source)
    return [dict(r) for r in conn.execute(stmt).mappings()]


# --- generated data --------------------------------------------------------------------------

GENERATED_KEY = ["job_id", "query_id", "variant"]
_GENERATED_BATCH = 1000  # rows per INSERT (13 columns: far below SQLite's bound-parameter limit)


def upsert_generated(conn: Connection, job_id: int, records: Iterable[Mapping[str, Any]], *,
                     now: datetime | None = None) -> int:
    """Store a generate job's responses, the records of its ``filtered.jsonl`` ({"query_id",
    "variant", "prompt", "response", "kept", "dropped_by", "query"?, "constitution"?,
    "constitution_name"?, "n_tokens"?}), keyed (job, query, variant) so that a re-ingest
    updates; return how many. Raises IngestError naming the record and field that is
    missing."""
    now = now or utcnow()
    rows: dict[tuple, dict] = {}
    for n, r in enumerate(records, 1):
        if not isinstance(r, Mapping):
            raise IngestError(f"generated record {n}: expected a JSON object, got {type(r).__name__}")
        missing = [k for k in ("query_id", "variant", "prompt", "response", "kept") if k not in r]
        if missing:
            raise IngestError(f"generated record {n}: missing {', '.join(missing)}")
        kept = bool(r["kept"])
        row = {"job_id": job_id, "query_id": str(r["query_id"])[:200], "variant": int(r["variant"]),
               "query": r.get("query"), "constitution": r.get("constitution"),
               "constitution_name": None if r.get("constitution_name") is None else str(r["constitution_name"])[:200],
               "prompt": str(r["prompt"]), "response": str(r["response"]),
               "n_tokens": None if r.get("n_tokens") is None else int(r["n_tokens"]), "kept": kept,
               "dropped_by": None if kept else str(r.get("dropped_by") or "unknown")[:32], "created_at": now}
        rows[(row["query_id"], row["variant"])] = row  # last write wins within a file too
    batch = list(rows.values())
    table = GeneratedResponse.__table__
    for k in range(0, len(batch), _GENERATED_BATCH):
        _upsert(conn, table, batch[k:k + _GENERATED_BATCH], GENERATED_KEY)
    return len(batch)


def ingest_generated(conn: Connection, job_id: int, path: Path) -> int:
    """Store a generate run's ``filtered.jsonl`` (``path``) as generated_responses rows;
    return how many (0 when the file is absent: a run written before the stage kept it)."""
    path = Path(path)
    if not path.exists():
        return 0
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError as err:
            raise IngestError(f"{path}, line {n}: not JSON ({err})") from None
    try:
        return upsert_generated(conn, job_id, records)
    except IngestError as err:
        raise IngestError(f"{path}: {err}") from None
