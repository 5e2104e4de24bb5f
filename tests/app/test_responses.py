"""Responses page: two sources side by side on the shipped published responses (imported
through services.results.import_results_file), judgments stored through
db.ingest.upsert_judgments; search, verdict filter and pagination narrow or move the
pairs; model text is shown as literal text, never as markdown or HTML."""

from __future__ import annotations

import pytest

from db import ingest
from db.engine import transact
from services import exports, judging, results

ITER1 = "iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0"
BASE = "base-mistral-opus-constitution-temperature-0.0"
VERDICTS = ("candidate", "baseline", "tie", "error")  # of queries 0, 1, 2, 3


def seed(engine) -> dict[str, int]:  # noqa: ANN001
    """Both opus-constitution files (250 responses each); judgments of ITER1 vs BASE on
    queries 0-3 (one verdict each); returns {label: source id}."""
    paths = {p.stem: p for p in results.shipped_results()}
    for name in (ITER1, BASE):
        transact(engine, lambda c, name=name: results.import_results_file(c, paths[name]))
    ids = {s["label"]: s["id"] for s in transact(engine, ingest.list_sources)}
    by_query = {side: {r["query_id"]: r for r in transact(engine, lambda c, s=ids[side]: ingest.source_responses(c, s))}
                for side in (ITER1, BASE)}
    rows = [{"job_id": None, "candidate_id": by_query[ITER1][str(q)]["id"], "baseline_id": by_query[BASE][str(q)]["id"],
             "constitution_id": by_query[ITER1][str(q)]["constitution_id"], "candidate_position": "A",
             "judge_model": "gpt-test", "verdict": v, "rationale": f"rationale for query {q}", "raw_text": "A",
             "cache_key": f"k{q}"} for q, v in enumerate(VERDICTS)]
    transact(engine, lambda c: ingest.upsert_judgments(c, rows))
    return ids


def texts(at) -> list[str]:  # noqa: ANN001
    return [t.value for t in at.text]


def captions(at) -> str:  # noqa: ANN001
    return " ".join(c.value for c in at.caption)


def published(label: str) -> dict[str, str]:
    from sami_core.results import load_published

    path = next(p for p in results.shipped_results() if p.stem == label)
    return {r.query_id: r.response for r in load_published(path).rows}


@pytest.fixture
def seeded(workspace):  # noqa: ANN001, ANN201
    return seed(workspace.engine)


def open_pair(open_page, ids, **params):  # noqa: ANN001, ANN201
    return open_page("responses", left=str(ids[ITER1]), right=str(ids[BASE]), **params)


def test_side_by_side_shows_both_sources_texts_for_the_same_query(open_page, seeded):
    at = open_pair(open_page, seeded)
    assert at.selectbox(key="responses.left").label == "Left source"
    assert at.selectbox(key="responses.right").label == "Right source"
    assert at.selectbox(key="responses.left").value == seeded[ITER1]
    left, right = published(ITER1), published(BASE)
    shown = texts(at)
    for q in ("0", "1", "9"):  # the first page: queries 0-9
        assert left[q] in shown and right[q] in shown
    assert left["10"] not in shown
    # the two texts of a query sit in two columns of the same block, left then right
    cols = list(at.columns)
    idx = next(k for k, c in enumerate(cols) if any(t.value == left["0"] for t in c.text))
    assert any(t.value == right["0"] for t in cols[idx + 1].text)
    assert "tokens ·" in captions(at) and "words" in captions(at)
    # verdict and rationale of the judged query 0
    assert any("candidate won" in t and "gpt-test" in t for t in shown)
    assert "rationale for query 0" in shown
    assert not at.exception


def test_search_narrows_and_verdict_filter_selects_judged_pairs(open_page, seeded):
    at = open_pair(open_page, seeded)
    assert "250 queries in both sources match" in captions(at)
    left = published(ITER1)
    needle = left["42"][10:40]
    at.text_input(key="responses.search").input(needle).run()
    m = [c.value for c in at.caption if "queries in both sources match" in c.value][0]
    n = int(m.split()[0])
    assert 1 <= n < 250 and left["42"] in texts(at)

    at.text_input(key="responses.search").input("").run()
    at.selectbox(key="responses.verdict").select("baseline won").run()
    assert "1 queries in both sources match" in captions(at)
    assert left["1"] in texts(at) and left["0"] not in texts(at)
    at.selectbox(key="responses.verdict").select("not judged").run()
    assert "246 queries in both sources match" in captions(at)
    assert left["0"] not in texts(at) and left["4"] in texts(at)
    assert not at.exception


def test_pagination_moves_through_queries(open_page, seeded):
    at = open_pair(open_page, seeded)
    left = published(ITER1)
    assert at.number_input(key="responses.page").value == 1
    at.button(key="responses.next").click().run()
    assert at.number_input(key="responses.page").value == 2
    shown = texts(at)
    assert left["10"] in shown and left["0"] not in shown
    at.number_input(key="responses.page").set_value(25).run()
    assert left["249"] in texts(at)
    assert at.button(key="responses.next").disabled
    at.button(key="responses.prev").click().run()
    assert at.number_input(key="responses.page").value == 24
    # a filter change goes back to the first page
    at.selectbox(key="responses.page_size").select(50).run()
    assert at.number_input(key="responses.page").value == 1 and left["49"] in texts(at)
    assert not at.exception


def test_html_and_markdown_in_a_response_are_shown_as_literal_text(open_page, workspace):
    evil = "<script>alert(1)</script> **bold** [x](javascript:alert(2))"
    items = [{"query_id": "q1", "query": "<b>query</b> _em_", "temperature": 0.0, "text": evil}]

    def write(c):  # noqa: ANN001, ANN202
        a = ingest.upsert_import_source(c, "evil", path="/x/evil.json")
        b = ingest.upsert_import_source(c, "plain", path="/x/plain.json")
        ingest.upsert_responses(c, a, items)
        ingest.upsert_responses(c, b, [{**items[0], "text": "a plain answer"}])
        return a, b

    a, b = transact(workspace.engine, write)
    at = open_page("responses", left=str(a), right=str(b))
    assert evil in texts(at) and "<b>query</b> _em_" in texts(at)
    assert not any("alert" in m.value for m in at.markdown)
    assert not any("alert" in str(getattr(h, "body", "")) for h in at.get("html"))


def test_empty_workspace_says_where_responses_come_from(open_page):
    at = open_page("responses")
    assert any("No responses yet" in i.value for i in at.info)


def test_sources_without_a_common_temperature_pair_nothing(open_page, workspace):
    def write(c):  # noqa: ANN001, ANN202
        a = ingest.upsert_import_source(c, "hot", path="/x/a.json")
        b = ingest.upsert_import_source(c, "cold", path="/x/b.json")
        ingest.upsert_responses(c, a, [{"query_id": "1", "temperature": 0.7, "text": "x"}])
        ingest.upsert_responses(c, b, [{"query_id": "1", "temperature": 0.0, "text": "y"}])
        return a, b

    a, b = transact(workspace.engine, write)
    at = open_page("responses", left=str(a), right=str(b))
    assert any("share no temperature" in i.value for i in at.info)
