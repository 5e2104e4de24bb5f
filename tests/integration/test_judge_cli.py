"""Response sources and judging from the command line, on a real SQLite database and the
loopback OpenAI-compatible server: `sami import-results`, `sami judge` (--now and through
a worker), `sami winrates`, `sami export` (CSV injection, confined output paths), and the
API key kept out of the database, the run directory and the output."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Job, Judgment, Response, ResponseSource
from sami_core.results import PUBLISHED_DIR
from tests.integration.conftest import Sami
from tests.openai_server import OpenAIServer

pytestmark = pytest.mark.integration

KEY = "sk-planted-7f3a9c1e5b2d48a6"
CAND = "iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0"
BASE = "base-mistral-opus-constitution-temperature-0.0"


def count(sami: Sami, model: type) -> int:
    return sami.tx(lambda c: c.execute(select(func.count()).select_from(model)).scalar_one())


def test_import_results_makes_one_source_per_file_and_links_queries(sami_sqlite: Sami) -> None:
    sami = sami_sqlite
    out = sami.cli("import-results", "--shipped").stdout
    assert CAND in out
    again = sami.cli("import-results", str(PUBLISHED_DIR))  # a folder; idempotent
    assert again.returncode == 0
    sources = sami.tx(lambda c: c.execute(
        select(ResponseSource.label, ResponseSource.kind, ResponseSource.temperatures, func.count(Response.id))
        .join(Response, Response.source_id == ResponseSource.id).group_by(ResponseSource.id)).all())
    assert len(sources) == 10
    assert {s[1] for s in sources} == {"import"} and {s[3] for s in sources} == {250}
    assert {s[0] for s in sources} == {p.stem for p in PUBLISHED_DIR.glob("*.json")}
    assert all(s[2] == [0.0] for s in sources)
    texts = sami.tx(lambda c: c.execute(
        select(Response.query_id, func.count(func.distinct(Response.query)), func.count())
        .group_by(Response.query_id)).all())
    assert len(texts) == 250 and all(n_text == 1 and n == 10 for _, n_text, n in texts)


def test_judge_now_stores_judgments_caches_and_keeps_the_key_secret(sami_sqlite: Sami) -> None:
    sami = sami_sqlite
    sami.env["SAMI_TEST_JUDGE_KEY"] = KEY
    sami.cli("import-results", "--shipped")
    with OpenAIServer(expected_key=KEY) as srv:
        args = ["judge", "--candidate", CAND, "--baseline", BASE, "--judge-model", "gpt-test",
                "--base-url", srv.base_url, "--api-key-env", "SAMI_TEST_JUDGE_KEY", "--concurrency", "4",
                "--limit", "6", "--both-orders", "--now"]
        first = sami.cli(*args, timeout=120)
        assert "12 judgments: 0 cached, 12 requests to send" in first.stdout
        assert srv.requests == 12
        assert count(sami, Judgment) == 12
        second = sami.cli(*args, timeout=120)
        assert "12 cached, 0 requests to send" in second.stdout
        assert srv.requests == 12 and count(sami, Judgment) == 12  # nothing sent, nothing duplicated
    rows = sami.tx(lambda c: c.execute(select(Judgment.candidate_position, Judgment.verdict,
                                              Judgment.judge_model)).all())
    assert {r[0] for r in rows} == {"A", "B"} and {r[2] for r in rows} == {"gpt-test"}
    assert {r[1] for r in rows} <= {"candidate", "baseline", "tie"}

    wr = sami.cli("winrates", "--json")
    table = json.loads(wr.stdout)
    assert len(table) == 1
    row = table[0]
    assert (row["candidate"], row["baseline"], row["n"]) == (CAND, BASE, 12)
    assert row["wins"] + row["losses"] + row["ties"] == 12 and 0 <= row["ci_low"] <= row["ci_high"] <= 1
    assert row["mean_len_candidate"] > 0

    # the key is nowhere: database file, run directories, shared cache, output
    db_bytes = b"".join(p.read_bytes() for p in sami.home.glob("*.db*"))
    assert db_bytes and KEY.encode() not in db_bytes
    for p in sami.home.rglob("*"):
        if p.is_file():
            assert KEY.encode() not in p.read_bytes(), p
    for proc in (first, second, wr):
        assert KEY not in proc.stdout + proc.stderr


def test_a_queued_judge_job_is_ingested_by_the_worker(sami_sqlite: Sami) -> None:
    sami = sami_sqlite
    sami.cli("import-results", str(PUBLISHED_DIR / f"{CAND}.json"), str(PUBLISHED_DIR / f"{BASE}.json"))
    with OpenAIServer() as srv:
        out = sami.cli("judge", "--candidate", CAND, "--baseline", BASE, "--judge-model", "gpt-test",
                       "--base-url", srv.base_url, "--api-key-env", "", "--limit", "5")
        assert "5 requests to send" in out.stdout and "queued judge job" in out.stdout
        sami.worker("--exit-when-idle")
        assert sami.wait_workers(timeout=120) == [0], sami.worker_logs()
        assert srv.requests == 5
    job = sami.tx(lambda c: c.execute(select(Job.id, Job.status, Job.error).where(Job.kind == "judge")).one())
    assert job.status == "succeeded", job.error
    assert sami.tx(lambda c: c.execute(select(func.count()).select_from(Judgment)
                                       .where(Judgment.job_id == job.id)).scalar_one()) == 5


def test_export_neutralises_formulas_and_confines_the_output(sami_sqlite: Sami, tmp_path: Path) -> None:
    sami = sami_sqlite
    name = "evil-mistral-opus-constitution-temperature-0.0.json"
    payload = {"constitution": {"0": "1. Be concise."}, "question": {"0": "POST: hi"},
               "response": {"0": "=cmd|' /C calc'!A0"}}
    f = tmp_path / name
    f.write_text(json.dumps(payload))
    sami.cli("import-results", str(f))
    out = sami.cli("export", "responses", "--out", "r.csv", "--source", f.stem)
    assert "wrote 1 rows" in out.stdout
    with open(sami.home / "r.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0]["text"] == "'=cmd|' /C calc'!A0" and rows[0]["query_id"] == "0"

    refused = sami.cli("export", "responses", "--out", "../x.csv", check=False)
    assert refused.returncode == 2 and "escapes" in refused.stderr
    assert not (sami.home.parent / "x.csv").exists()
    other = tmp_path / "exports"
    sami.cli("export", "winrates", "--out", "w.csv", "--out-dir", str(other))
    assert (other / "w.csv").read_text(encoding="utf-8").startswith("experiment_id,candidate,baseline,judge_model")
