"""Responses page: two sources side by side on the shipped published responses (imported
through services.results.import_results_file), judgments stored through
db.ingest.upsert_judgments; search, verdict filter and pagination narrow or move the
pairs; model text is shown as literal text, never as markdown or HTML."""

from __future__ import annotations

import html

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


def bodies(at) -> list[str]:  # noqa: ANN001
    """The st.html bodies: search results, their matches marked."""
    return [str(h.proto.body) for h in at.get("html")]


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
    assert 1 <= n < 250
    # the matching response is shown with its match marked (as escaped HTML, not as text)
    assert any(f"<mark>{html.escape(needle)}</mark>" in b for b in bodies(at))

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


ITER1_MISTRAL = "iteration-1-epoch-0.12-mistral-mistral-constitution-temperature-0.0"


def test_long_source_names_get_short_aliases_and_the_url_follows_the_choice(open_page, workspace):
    """The shipped labels differ only near their end (opus / mistral constitution): the
    select boxes show short aliases, id first, where they differ; the full names wrap in
    a caption below; choosing a source writes it to the URL."""
    paths = {p.stem: p for p in results.shipped_results()}
    for name in (ITER1, ITER1_MISTRAL, BASE):
        transact(workspace.engine, lambda c, name=name: results.import_results_file(c, paths[name]))
    ids = {s["label"]: s["id"] for s in transact(workspace.engine, ingest.list_sources)}
    at = open_page("responses", left=str(ids[ITER1]), right=str(ids[BASE]))
    box = at.selectbox(key="responses.left")
    shown = dict(zip([ids[ITER1], ids[ITER1_MISTRAL], ids[BASE]], box.options))
    assert shown[ids[ITER1]] == f"#{ids[ITER1]} iteration-1-epoch-0.12-mistral-opus…"
    assert shown[ids[ITER1_MISTRAL]] == f"#{ids[ITER1_MISTRAL]} iteration-1-epoch-0.12-mistral-mistral…"
    assert all(len(o) <= 45 for o in box.options)
    assert ITER1.replace("-", "\\-").replace(".", "\\.") in captions(at)  # the full name, markdown-escaped
    assert (at.query_params["left"], at.query_params["right"]) == (str(ids[ITER1]), str(ids[BASE]))
    at.selectbox(key="responses.right").set_value(ids[ITER1_MISTRAL]).run()
    assert at.query_params["right"] == str(ids[ITER1_MISTRAL]) and not at.exception


def test_long_posts_fold_so_both_responses_stay_in_view(open_page, seeded, workspace):
    at = open_pair(open_page, seeded)
    posts = {r["query_id"]: r["query"] or "" for r in transact(
        workspace.engine, lambda c: ingest.response_rows(c, source=seeded[ITER1]))}
    long_posts = [q for q in map(str, range(10)) if len(posts[q]) > 600]
    folded = [e for e in at.expander if e.label.startswith("Post \\(")]
    assert long_posts and len(folded) == len(long_posts)
    assert posts[long_posts[0]] in [t.value for t in folded[0].text]  # the whole post, inside the fold
    left = published(ITER1)
    assert all(left[q] in texts(at) for q in long_posts)  # the responses are outside any fold
    assert not any(left[q] in [t.value for t in e.text] for e in folded for q in long_posts)


def two_temperatures(engine) -> tuple[int, int]:  # noqa: ANN001
    """Sources a and b, queries 0-3 each at temperatures 0 and 1; a won query 0 at T=0, b
    won query 1 at T=0 and query 0 at T=1."""
    def seed(c):  # noqa: ANN001, ANN202
        a = ingest.upsert_import_source(c, "a", path="/x/a.json")
        b = ingest.upsert_import_source(c, "b", path="/x/b.json")
        for src, name in ((a, "a"), (b, "b")):
            ingest.upsert_responses(c, src, [{"query_id": str(q), "query": f"<i>post</i> {q}", "temperature": t,
                                              "text": f"{name} says <b>{q}</b> at {t}"}
                                             for q in range(4) for t in (0.0, 1.0)])
        ids = {(s, r["query_id"], r["temperature"]): r["id"] for s in (a, b) for r in ingest.source_responses(c, s)}
        ingest.upsert_judgments(c, [
            {"job_id": None, "candidate_id": ids[(a, q, t)], "baseline_id": ids[(b, q, t)], "constitution_id": None,
             "candidate_position": "A", "judge_model": "m", "verdict": v, "rationale": None, "raw_text": "A",
             "cache_key": f"{q}-{t}"} for q, t, v in (("0", 0.0, "candidate"), ("1", 0.0, "baseline"),
                                                      ("0", 1.0, "baseline"))])
        return a, b
    return transact(engine, seed)


def test_won_counts_and_the_query_count_follow_the_temperature(open_page, workspace):
    a, b = two_temperatures(workspace.engine)
    at = open_page("responses", left=str(a), right=str(b))
    assert "Judgments between these sources: baseline won: 2, candidate won: 1" in captions(at)
    assert "4 queries in both sources match (8 response pairs over 2 temperatures)" in captions(at)
    at.selectbox(key="responses.temperature").set_value(1.0).run()
    assert "Judgments between these sources at temperature 1: baseline won: 1" in captions(at)
    assert "candidate won" not in captions(at)
    assert "4 queries in both sources match;" in captions(at)


def test_search_matches_are_marked_in_escaped_html(open_page, workspace):
    a, b = two_temperatures(workspace.engine)
    at = open_page("responses", left=str(a), right=str(b))
    at.text_input(key="responses.search").input("B>2").run()
    shown = bodies(at)
    assert any("a says &lt;<mark>b&gt;2</mark>&lt;/b&gt; at 0.0" in h for h in shown)
    assert not any("<b>" in h or "<i>" in h for h in shown)  # the texts' own tags are escaped
    assert "2 queries in both sources match" not in captions(at) and "1 queries" in captions(at)


def test_judge_these_two_sources_shows_cached_and_queues_a_judge_job(open_page, seeded, workspace):
    """The rule judge (no key, no network) on the pair: first every judgment is to send; a
    run of it on 5 pairs fills the shared cache, and the form then counts them as cached;
    the button queues a judge job with the candidate and baseline named by label#id."""
    from sqlalchemy import select

    from db.models import Job

    def open_form():  # noqa: ANN202
        at = open_pair(open_page, seeded)
        at.toggle(key="responses.judge.open").set_value(True).run()
        at.selectbox(key="responses.judge.provider").set_value("rule").run()
        at.text_input(key="responses.judge.model").input("concision").run()
        at.text_input(key="responses.judge.key_env").input("").run()
        return at

    at = open_form()
    infos = " ".join(i.value for i in at.info).replace("\\", "")  # markdown-escaped
    assert "250 judgments of 250 pairs: 0 already cached" in infos and "250 requests to send" in infos
    opts = judging.JudgeOptions(candidate=str(seeded[ITER1]), baseline=str(seeded[BASE]), provider="rule",
                                model="concision", api_key_env=None, limit=5)
    plan = judging.plan_judge(lambda fn: transact(workspace.engine, fn), workspace.ws, opts, {})
    judging.run_judge_now(lambda fn: transact(workspace.engine, fn), workspace.ws, plan)
    at = open_form()
    infos = " ".join(i.value for i in at.info).replace("\\", "")  # markdown-escaped
    assert "5 already cached" in infos and "245 requests to send" in infos
    at.button(key="responses.judge.queue").click().run()
    assert any("Queued judge job" in s.value for s in at.success)
    jobs = transact(workspace.engine, lambda c: c.execute(select(Job.kind, Job.spec).where(Job.kind == "judge")).all())
    assert len(jobs) == 1
    spec = jobs[0].spec
    assert spec["candidate"]["name"] == f"{ITER1}#{seeded[ITER1]}"
    assert spec["baseline"]["name"] == f"{BASE}#{seeded[BASE]}"
    assert spec["judge"]["provider"] == "rule" and spec["judge"]["model"] == "concision"
    # the other way round: the right side as the candidate
    at.radio(key="responses.judge.candidate").set_value(1).run()  # the right side as the candidate
    assert f"candidate {BASE} against baseline {ITER1}" in " ".join(i.value for i in at.info).replace("\\", "")


def test_judge_form_without_the_key_counts_but_does_not_queue(open_page, seeded, monkeypatch):
    monkeypatch.delenv("SAMI_TEST_NO_KEY", raising=False)
    at = open_pair(open_page, seeded)
    at.toggle(key="responses.judge.open").set_value(True).run()
    at.selectbox(key="responses.judge.provider").set_value("openai").run()
    at.text_input(key="responses.judge.key_env").input("SAMI_TEST_NO_KEY").run()
    assert "250 requests to send" in " ".join(i.value for i in at.info)
    assert any("$SAMI_TEST_NO_KEY is not set" in w.value.replace("\\", "") for w in at.warning)
    assert at.button(key="responses.judge.queue").disabled
