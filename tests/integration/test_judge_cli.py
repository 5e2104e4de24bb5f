"""Response sources and judging from the command line, on a real SQLite database and the
loopback OpenAI-compatible server: `sami import-results`, `sami judge` (--now and through
a worker), `sami winrates`, `sami export` (CSV injection, confined output paths), and the
API key kept out of the database, the run directory and the output."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from sqlalchemy import func, select

from db.models import Constitution, Job, Judgment, Response, ResponseSource
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

    # the constitution source from each file name; every response has a constitution
    # version, one per distinct text (identical texts in several files share it)
    listed = json.loads(sami.cli("sources", "--json").stdout)
    assert {s["label"]: s["constitution_source"] for s in listed} == {
        p.stem: p.stem.split("-constitution-")[0].rsplit("-", 1)[1] for p in PUBLISHED_DIR.glob("*.json")}
    assert count(sami, Response) == 2500
    assert sami.tx(lambda c: c.execute(select(func.count()).select_from(Response)
                                       .where(Response.constitution_id.is_(None))).scalar_one()) == 0
    pairs = sami.tx(lambda c: c.execute(
        select(Response.constitution_id, Response.query_id, ResponseSource.constitution_source, Constitution.name)
        .join(ResponseSource, ResponseSource.id == Response.source_id)
        .join(Constitution, Constitution.id == Response.constitution_id)).all())
    assert all(name == f"import:{src}" for _, _, src, name in pairs)
    versions = sami.tx(lambda c: c.execute(select(Constitution.id, Constitution.principles)).all())
    assert len({json.dumps(v.principles) for v in versions}) == len(versions) > 1  # no duplicate versions
    assert len(versions) == len({cid for cid, *_ in pairs})
    # the same query under the same constitution source: one text, so one version in every file
    per_query: dict[tuple, set] = {}
    for cid, qid, src, _ in pairs:
        per_query.setdefault((qid, src), set()).add(cid)
    assert all(len(ids) == 1 for ids in per_query.values())


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
    """With the paper's template and prices: the estimate before sending, the system
    message on every request, and the job's tokens and cost in `sami jobs`."""
    sami = sami_sqlite
    sami.cli("import-results", str(PUBLISHED_DIR / f"{CAND}.json"), str(PUBLISHED_DIR / f"{BASE}.json"))
    with OpenAIServer(always_garbage=0.3) as srv:
        out = sami.cli("judge", "--candidate", CAND, "--baseline", BASE, "--judge-model", "gpt-test",
                       "--base-url", srv.base_url, "--api-key-env", "", "--limit", "5", "--template", "paper",
                       "--unparseable", "tie", "--price-prompt", "2.5", "--price-completion", "10")
        assert "5 requests to send" in out.stdout and "queued judge job" in out.stdout
        assert re.search(r"before sending: ~[\d,]+ prompt tokens \+ at most 1,280 completion tokens "
                         r"\(estimated cost at most \$0\.\d{4}\)", out.stdout), out.stdout
        sami.worker("--exit-when-idle")
        assert sami.wait_workers(timeout=120) == [0], sami.worker_logs()
        assert srv.requests >= 5 and len(set(srv.systems.values())) == 1 and "summaries" in srv.systems.popitem()[1]
    job = sami.tx(lambda c: c.execute(select(Job.id, Job.status, Job.error, Job.outputs)
                                      .where(Job.kind == "judge")).one())
    assert job.status == "succeeded", job.error
    assert sami.tx(lambda c: c.execute(select(func.count()).select_from(Judgment)
                                       .where(Judgment.job_id == job.id)).scalar_one()) == 5
    o = job.outputs
    assert o["template"] == "paper" and o["prompt_tokens"] > 0 and o["completion_tokens"] > 0
    assert f"{o['prompt_tokens']:,} prompt + {o['completion_tokens']:,} completion tokens, estimated cost $" in \
        sami.cli("jobs").stdout
    (row,) = json.loads(sami.cli("winrates", "--json").stdout)  # unparseable answers stored as ties
    assert (row["ties"], row["invalid"], row["n"]) == (o["ties"], 0, 5) and o["ties"] >= o["unparseable"]


def test_export_neutralises_formulas_and_writes_where_the_user_asks(sami_sqlite: Sami, tmp_path: Path) -> None:
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

    # The user owns the shell: a path they type (here relative, leaving the folder) is theirs.
    sami.cli("export", "responses", "--out", "../x.csv")
    assert (sami.home.parent / "x.csv").read_text(encoding="utf-8").startswith("source_id,")
    other = tmp_path / "exports"
    sami.cli("export", "winrates", "--out", "w.csv", "--out-dir", str(other))
    assert (other / "w.csv").read_text(encoding="utf-8").startswith("experiment_id,candidate,baseline,judge_model")


def test_judge_errors_are_stored_counted_and_replaced_by_a_later_answer(sami_sqlite: Sami) -> None:
    """An endpoint that fails some pairs for good: the errors reach the database (winrates
    counts them, as the run's outputs do); run again once it is healthy, the answers
    replace them."""
    sami = sami_sqlite
    sami.env["SAMI_TEST_JUDGE_KEY"] = KEY
    sami.cli("import-results", str(PUBLISHED_DIR / f"{CAND}.json"), str(PUBLISHED_DIR / f"{BASE}.json"))
    with OpenAIServer(expected_key=KEY, always_error=0.4) as srv:
        args = ["judge", "--candidate", CAND, "--baseline", BASE, "--judge-model", "gpt-test",
                "--base-url", srv.base_url, "--api-key-env", "SAMI_TEST_JUDGE_KEY", "--concurrency", "4",
                "--limit", "8", "--both-orders", "--max-attempts", "2", "--backoff", "0.01", "--now"]
        first = sami.cli(*args, timeout=120)
        run_dir = Path(first.stdout.rsplit("run directory ", 1)[1].strip())
        outputs = json.loads((run_dir / "outputs.json").read_text())
        assert f"judge: {outputs['prompt_tokens']:,} prompt + {outputs['completion_tokens']:,} completion tokens\n" \
            in first.stdout  # no prices given: no cost
        assert 0 < outputs["errors"] < 16
        assert count(sami, Judgment) == 16
        (row,) = json.loads(sami.cli("winrates", "--json").stdout)
        assert row["errors"] == outputs["errors"]
        assert (row["wins"], row["losses"], row["ties"]) == (outputs["wins"], outputs["losses"], outputs["ties"])
        assert row["n"] == 16 - outputs["errors"] - outputs["invalid"]
        messages = sami.tx(lambda c: c.execute(select(Judgment.rationale, Judgment.raw_text)
                                               .where(Judgment.verdict == "error")).all())
        assert len(messages) == outputs["errors"] and all(m[0] and m[0] == m[1] for m in messages)

        srv.always_error = 0.0  # healthy again: the next run retries the errors only
        second = sami.cli(*args, timeout=120)
        assert f"{16 - outputs['errors']} cached, {outputs['errors']} requests to send" in second.stdout
    assert count(sami, Judgment) == 16
    (row,) = json.loads(sami.cli("winrates", "--json").stdout)
    assert row["errors"] == 0 and row["n"] == 16 - outputs["invalid"]
    assert row["wins"] + row["losses"] + row["ties"] == row["n"]
    assert row["wins"] + row["losses"] > outputs["wins"] + outputs["losses"]
    assert sami.tx(lambda c: c.execute(select(func.count()).select_from(Judgment)
                                       .where(Judgment.constitution_id.is_(None))).scalar_one()) == 0
    db_bytes = b"".join(p.read_bytes() for p in sami.home.glob("*.db*"))
    assert db_bytes and KEY.encode() not in db_bytes
