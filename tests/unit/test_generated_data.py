"""Generated data: the generate stage's per-response filter decisions (filtered.jsonl),
stored by the worker's output handler, read back a page at a time with search and
counts per filter, on a real database (SQLite; PostgreSQL when available)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from sqlalchemy import func, select

from db import ingest, queue
from db.engine import transact
from db.models import GeneratedResponse
from db.reads import generated as reads
from db.workspace import Workspace
from sami_core.prompts import DROPPED_WITH_QUERY, apply_filters, drop_reasons
from sami_core.spec import validate_spec
from tests.training_data import GENERATED_FILTERS, generated_records, write_generated_run
from workers import relay

PAPER_LIKE = SimpleNamespace(min_chars=1, drop_substrings=["[insert", "Response"], ends_with=["."],
                             require_distinct=True)


def test_drop_reasons_name_the_filter_and_agree_with_the_keep_decision():
    groups = [
        ["The post is short.", "The post is long."],  # kept
        ["The post is short.", "The post is short."],  # identical
        ["The post [insert].", "The post is fine."],  # one fails: its sibling goes with the query
        ["The post is cut", "Response: fine."],  # each fails its own filter
        ["", "Fine."],  # too short (and no "." ending): the first failed filter names it
    ]
    assert [drop_reasons(g, PAPER_LIKE) for g in groups] == [
        [None, None], ["require_distinct"] * 2, ["drop_substrings", DROPPED_WITH_QUERY],
        ["ends_with", "drop_substrings"], ["min_chars", DROPPED_WITH_QUERY]]
    keep, _ = apply_filters(groups, PAPER_LIKE)
    assert keep == [all(r is None for r in drop_reasons(g, PAPER_LIKE)) for g in groups]


def claimed_generate(engine):  # noqa: ANN001, ANN201
    def run(c):  # noqa: ANN001, ANN202
        worker = queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None)
        queue.enqueue(c, "generate", {}, name="generate-1")
        return queue.claim(c, worker, devices=0, lease_seconds=30, kinds=["generate"])
    return transact(engine, run)


def test_the_worker_stores_every_generated_response_once(engine, tmp_path: Path) -> None:  # noqa: ANN001
    job = claimed_generate(engine)
    outputs = write_generated_run(tmp_path / "gen", n_queries=20, n=2)
    ws = Workspace(tmp_path / "ws")
    for _ in range(2):  # a re-ingest (a worker that crashed after storing) updates, never duplicates
        transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, tmp_path / "gen", ws))
    n = transact(engine, lambda c: c.execute(select(func.count()).select_from(GeneratedResponse)).scalar_one())
    assert n == 40
    # counts per filter: 20 queries, k % 5 in (0, 1) kept, then ends_with / drop_substrings / require_distinct
    counts = {r["dropped_by"]: (r["queries"], r["responses"]) for r in transact(
        engine, lambda c: reads.filter_counts(c, job.id))}
    assert counts == {None: (8, 16), "ends_with": (4, 4), DROPPED_WITH_QUERY: (8, 8), "drop_substrings": (4, 4),
                      "require_distinct": (4, 8)}
    assert counts[None][0] == outputs["n_kept"]
    listed = transact(engine, reads.generate_jobs)
    assert [(j["id"], j["name"], j["n_rows"]) for j in listed] == [(job.id, "generate-1", 40)]


def test_pages_filters_and_search_are_in_sql(engine, tmp_path: Path) -> None:  # noqa: ANN001
    job = claimed_generate(engine)
    records = generated_records(n_queries=23, n=3)
    transact(engine, lambda c: ingest.upsert_generated(c, job.id, records))
    order = list(dict.fromkeys(r["query_id"] for r in records))

    def page(**kw):  # noqa: ANN003, ANN202
        return transact(engine, lambda c: reads.query_page(c, job.id, **kw))

    def count(**kw):  # noqa: ANN003, ANN202
        return transact(engine, lambda c: reads.count_queries(c, job.id, **kw))

    assert count() == 23
    first, third = page(page_size=10), page(page=3, page_size=10)
    assert [q["query_id"] for q in first] == order[:10] and [q["query_id"] for q in third] == order[20:]
    q0 = first[0]
    assert [v["variant"] for v in q0["variants"]] == [0, 1, 2] and q0["kept"]
    assert (q0["variants"][1]["prompt"], q0["variants"][1]["response"]) == (records[1]["prompt"],
                                                                            records[1]["response"])
    assert page(page=4, page_size=10) == []
    # kept / dropped / one filter: queries with a response of that status
    assert count(status=reads.KEPT) == 10 and count(status=reads.DROPPED) == 13
    assert count(status="require_distinct") == 4
    assert all(not q["kept"] and {v["dropped_by"] for v in q["variants"]} == {"ends_with", DROPPED_WITH_QUERY}
               for q in page(status="ends_with", page_size=50))
    # search: a response's text finds its query (with all N responses); %, _ are literal
    needle = records[3 * 7 + 2]["response"]  # query 7's third response
    found = page(search=needle.upper())
    assert [q["query_id"] for q in found] == [order[7]] and len(found[0]["variants"]) == 3
    assert count(search="[insert summary]") == 4 and count(search="[insert summary]", status=reads.KEPT) == 0
    assert count(search="100%") == 0 and count(search="summary_") == 0


def test_a_bad_record_is_refused_naming_the_line(engine, tmp_path: Path) -> None:  # noqa: ANN001
    job = claimed_generate(engine)
    run = tmp_path / "gen"
    run.mkdir()
    (run / "filtered.jsonl").write_text(json.dumps({"query_id": "q", "variant": 0, "prompt": "p"}) + "\n")
    with pytest.raises(relay.OutputsError, match="record 1: missing response, kept"):
        transact(engine, lambda c: relay.ingest_outputs(c, job, {"n_kept": 0, "n_dropped": 1}, run,
                                                        Workspace(tmp_path / "ws")))
    # a run directory without the file (written before the stage kept it) stores nothing
    assert transact(engine, lambda c: ingest.ingest_generated(c, job.id, tmp_path / "none.jsonl")) == 0


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_a_real_generate_run_is_stored_with_its_filter_counts(engine, tmp_path, demo_model_dir) -> None:  # noqa: ANN001
    """The demo model generates 6 queries x N=2 under strict filters; what is stored agrees
    with the stage's own outputs.json counts."""
    from sami_core.contract import FILTERED_FILE, OUTPUTS_FILE
    from sami_core.stages import run_generate

    spec = validate_spec("generate", {
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"},
        "data": {"source": "demo", "train_size": 6, "eval_size": 4},
        "filters": {**GENERATED_FILTERS, "drop_substrings": ["the"]},
        "generation": {"max_new_tokens": 12, "temperature": 1.0, "batch_size": 12}})
    run = tmp_path / "gen"
    try:
        out = run_generate(spec, run)
    except ValueError as err:  # every query dropped: a clear refusal, with its outputs written
        assert "every query was dropped" in str(err)
        out = json.loads((run / OUTPUTS_FILE).read_text())
    assert out["filtered"] == FILTERED_FILE
    job = claimed_generate(engine)
    transact(engine, lambda c: relay.ingest_outputs(c, job, out, run, Workspace(tmp_path / "ws")))
    counts = {r["dropped_by"]: r for r in transact(engine, lambda c: reads.filter_counts(c, job.id))}
    assert sum(r["responses"] for r in counts.values()) == 12
    assert counts.get(None, {"queries": 0})["queries"] == out["n_kept"]
    assert transact(engine, lambda c: reads.count_queries(c, job.id, status=reads.DROPPED)) == out["n_dropped"]
    fc = out["filter_counts"]
    for name in ("min_chars", "drop_substrings", "ends_with"):  # each response's first failure, at most its count
        assert counts.get(name, {"responses": 0})["responses"] <= fc[name]
    assert counts.get("require_distinct", {"queries": 0})["queries"] == fc["require_distinct"]
    kept_rows = [json.loads(x) for x in (run / "data.jsonl").read_text().splitlines()]
    stored = {q["query_id"]: q for q in transact(engine, lambda c: reads.query_page(c, job.id, status=reads.KEPT,
                                                                                      page_size=50))}
    assert {r["query_id"] for r in kept_rows} == set(stored)
    for r in kept_rows:
        assert [v["response"] for v in stored[r["query_id"]]["variants"]] == r["responses"]
        assert [v["prompt"] for v in stored[r["query_id"]]["variants"]] == r["generation_prompts"]
