"""Imported results and judge runs in the database (SQLite and PostgreSQL): import-results
is idempotent and links queries; a judge run's judgments.jsonl becomes judgments rows
(both positions of a pair, errors counted apart and replaced by a later answer), re-ingested without duplicates, through the
worker's `judge` output handler."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db import ingest, queue
from db.engine import transact
from db.models import Constitution, Judgment, Response, ResponseSource
from db.workspace import Workspace
from sami_core.results import PUBLISHED_DIR
from services import exports, judging, results
from workers import relay

CAND = "iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0"
BASE = "base-mistral-opus-constitution-temperature-0.0"


def count(engine, model) -> int:  # noqa: ANN001
    return transact(engine, lambda c: c.execute(select(func.count()).select_from(model)).scalar_one())


def record(query_id: str, order: str, verdict: str, key: str) -> dict:
    if verdict == "error":  # as the judge runner writes one: the (key-masked) message, no answer
        return {"pair_id": f"{query_id}@0.0", "query_id": query_id, "temperature": 0.0, "order": order,
                "judge_model": "gpt-test", "verdict": "error", "status": "error", "rationale": "", "raw": "",
                "error": "HTTP 500 (key ***)", "cache_key": key}
    return {"pair_id": f"{query_id}@0.0", "query_id": query_id, "temperature": 0.0, "order": order,
            "judge_model": "gpt-test", "verdict": verdict, "rationale": "because", "raw": "Final Response: A",
            "cache_key": key}


def test_import_is_idempotent_and_judgments_are_stored_once_per_position(engine, tmp_path: Path) -> None:  # noqa: ANN001
    for _ in range(2):
        for name in (CAND, BASE):
            transact(engine, lambda c, name=name: results.import_results_file(c, PUBLISHED_DIR / f"{name}.json"))
    assert (count(engine, ResponseSource), count(engine, Response)) == (2, 500)
    sources = {s["label"]: s for s in transact(engine, ingest.list_sources)}
    assert sources[CAND]["kind"] == "import" and sources[CAND]["n_responses"] == 250
    assert sources[CAND]["constitution_source"] == sources[BASE]["constitution_source"] == "opus"
    # every imported response has a constitution version; both files' texts share them
    by_source = transact(engine, lambda c: c.execute(
        select(Response.source_id, Response.constitution_id, Constitution.name, Constitution.principles)
        .join(Constitution, Constitution.id == Response.constitution_id, isouter=True)).all())
    assert len(by_source) == 500 and all(r.constitution_id is not None for r in by_source)
    assert {r.name for r in by_source} == {"import:opus"}
    ids = {s: {r.constitution_id for r in by_source if r.source_id == sources[s]["id"]} for s in (CAND, BASE)}
    assert ids[CAND] == ids[BASE] and count(engine, Constitution) == len(ids[CAND])
    assert all(p["principle"] and not p["principle"][0].isdigit() for r in by_source for p in r.principles)

    run_dir = tmp_path / "judge"
    run_dir.mkdir()
    recs = [record("0", "candidate_first", "win", "k0"), record("0", "baseline_first", "win", "k0"),  # same key
            record("1", "candidate_first", "loss", "k1"), record("2", "baseline_first", "tie", "k2"),
            record("3", "candidate_first", "error", "k3")]
    (run_dir / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    (run_dir / "outputs.json").write_text(json.dumps({"judgments": "judgments.jsonl"}))
    spec = {"candidate": {"path": "x", "name": f"{CAND}#{sources[CAND]['id']}"},
            "baseline": {"path": "y", "name": BASE}}

    def claim(c):  # noqa: ANN001, ANN202
        worker = queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None)
        queue.enqueue(c, "judge", spec)
        return queue.claim(c, worker, devices=0, lease_seconds=30, kinds=["judge"])

    job = transact(engine, claim)
    for _ in range(2):  # a worker that re-ingests after a crash
        transact(engine, lambda c: relay.ingest_outputs(c, job, relay.read_outputs(run_dir), run_dir,
                                                        Workspace(tmp_path)))
    assert count(engine, Judgment) == 5  # the error too, counted apart
    rows = transact(engine, ingest.judgment_rows)
    assert [(r["query_id"], r["order"], r["verdict"], r["candidate"], r["baseline"], r["job_id"]) for r in rows] == [
        ("0", "candidate_first", "win", CAND, BASE, job.id), ("0", "baseline_first", "win", CAND, BASE, job.id),
        ("1", "candidate_first", "loss", CAND, BASE, job.id), ("2", "baseline_first", "tie", CAND, BASE, job.id),
        ("3", "candidate_first", "error", CAND, BASE, job.id)]
    stored = transact(engine, lambda c: c.execute(select(Judgment.verdict, Judgment.candidate_position,
                                                         Judgment.rationale, Judgment.raw_text)
                                                  .order_by(Judgment.id)).all())
    assert [tuple(s[:2]) for s in stored] == [("candidate", "A"), ("candidate", "B"), ("baseline", "A"), ("tie", "B"),
                                              ("error", "A")]
    assert tuple(stored[-1][2:]) == ("HTTP 500 (key ***)", "HTTP 500 (key ***)")  # the message, nothing else
    (wr,) = exports.winrates(rows)
    assert (wr["n"], wr["wins"], wr["losses"], wr["ties"], wr["errors"]) == (4, 2, 1, 1, 1)
    assert wr["win_rate"] == 0.625

    # a later run: the error answered (replaces the error row), an answer then an error
    # for another pair (the error never replaces an answer)
    later = tmp_path / "judge2"
    later.mkdir()
    recs2 = [record("3", "candidate_first", "loss", "k3"), record("1", "candidate_first", "error", "k1")]
    (later / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs2))
    assert transact(engine, lambda c: ingest.ingest_judgments(c, later / "judgments.jsonl", spec)) == 2
    assert count(engine, Judgment) == 5
    (wr,) = exports.winrates(transact(engine, ingest.judgment_rows))
    assert (wr["n"], wr["wins"], wr["losses"], wr["ties"], wr["errors"]) == (5, 2, 2, 1, 0)


def test_a_judge_run_naming_an_unknown_source_is_refused(engine, tmp_path: Path) -> None:  # noqa: ANN001
    (tmp_path / "judgments.jsonl").write_text(json.dumps(record("0", "candidate_first", "win", "k")) + "\n")
    with pytest.raises(ingest.IngestError, match="no response source"):
        transact(engine, lambda c: ingest.ingest_judgments(
            c, tmp_path / "judgments.jsonl", {"candidate": {"name": "nope"}, "baseline": {"name": "base"}}))
