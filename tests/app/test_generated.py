"""Generated data page: a generate job's responses (stored through the worker's output
handler from a run directory in the stage's format), counts per filter, the status filter,
search with marks, pages, and per query its N prompts and responses side by side."""

from __future__ import annotations

import html
from pathlib import Path

from db import queue
from db.engine import transact
from db.experiments import create_experiment
from sami_core.prompts import DROPPED_WITH_QUERY
from tests.training_data import generated_records, write_generated_run
from workers import relay


def generate_job(workspace, tmp_path: Path, *, n_queries: int, experiment: str | None = None) -> int:  # noqa: ANN001
    """A claimed generate job whose run directory the worker's output handler ingests."""
    def run(c):  # noqa: ANN001, ANN202
        exp = create_experiment(c, experiment, {}) if experiment else None
        worker = queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None)
        queue.enqueue(c, "generate", {}, name="generate-1", experiment_id=exp)
        return queue.claim(c, worker, devices=0, lease_seconds=30, kinds=["generate"])
    job = transact(workspace.engine, run)
    run_dir = tmp_path / f"gen-{job.id}"
    outputs = write_generated_run(run_dir, n_queries=n_queries, n=2)
    transact(workspace.engine, lambda c: relay.ingest_outputs(c, job, outputs, run_dir, workspace.ws))
    return job.id


def texts(at) -> list[str]:  # noqa: ANN001
    return [t.value for t in at.text]


def test_counts_per_filter_and_each_querys_responses_side_by_side(open_page, workspace, tmp_path):
    job = generate_job(workspace, tmp_path, n_queries=20, experiment="exp")
    records = generated_records(20, 2)
    at = open_page("generated")
    assert at.selectbox(key="generated.job").value == job
    assert "kept 8 of 20 queries \\(16 of 40 responses\\) for training" in " ".join(c.value for c in at.caption)
    counts = at.dataframe[0].value
    assert dict(zip(counts["filter"], counts["queries"])) == {"-": 8, DROPPED_WITH_QUERY: 8, "ends_with": 4,
                                                             "drop_substrings": 4, "require_distinct": 4}
    # the first page: queries 0-9, each with its two responses in two columns, prompts folded
    shown = texts(at)
    assert records[0]["response"] in shown and records[19]["response"] in shown and records[20]["response"] not in shown
    cols = list(at.columns)
    idx = next(k for k, c in enumerate(cols) if any(t.value == records[4]["response"] for t in c.text))
    assert any(t.value == records[5]["response"] for t in cols[idx + 1].text)
    assert any(t.value == records[5]["prompt"] for e in cols[idx + 1].expander for t in e.text)
    captions = [c.value.replace("\\", "") for c in at.caption]
    assert any("Variant 1 · dropped: does not end as required (ends_with)" in c for c in captions)
    # the filter narrows to queries with a response it dropped; Next pages on
    at.selectbox(key="generated.status").set_value("require_distinct").run()
    assert "4 queries match; page 1 of 1." in " ".join(c.value for c in at.caption)
    assert records[8]["response"] in texts(at) and records[0]["response"] not in texts(at)
    at.selectbox(key="generated.status").set_value("all").run()
    at.button(key="generated.next").click().run()
    assert at.number_input(key="generated.page").value == 2 and records[20]["response"] in texts(at)
    assert at.query_params["job"] == str(job) and not at.exception


def test_search_marks_matches_and_the_url_picks_the_job(open_page, workspace, tmp_path):
    first = generate_job(workspace, tmp_path, n_queries=5, experiment="one")
    generate_job(workspace, tmp_path, n_queries=10, experiment="two")
    at = open_page("generated", job=str(first))
    assert at.selectbox(key="generated.job").value == first
    at.text_input(key="generated.search").input("[INSERT summary]").run()
    assert "1 queries match" in " ".join(c.value for c in at.caption)
    bodies = [str(h.proto.body) for h in at.get("html")]
    assert any(f"<mark>{html.escape('[insert summary]')}</mark>" in b for b in bodies)
    assert not at.exception


def test_experiment_link_opens_its_latest_generate_job_and_empty_states_say_why(open_page, workspace, tmp_path):
    import streamlit as st

    from db.reads.generated import generate_jobs

    at = open_page("generated")
    assert any("No generate jobs yet" in i.value for i in at.info)
    one = generate_job(workspace, tmp_path, n_queries=5, experiment="one")
    generate_job(workspace, tmp_path, n_queries=5, experiment="two")
    exp_one = next(j["experiment_id"] for j in transact(workspace.engine, generate_jobs) if j["id"] == one)
    st.cache_data.clear()  # the empty page's reads were cached (ttl) a moment ago
    at = open_page("generated", experiment=str(exp_one))
    assert at.selectbox(key="generated.job").value == one
    pending = transact(workspace.engine, lambda c: queue.enqueue(c, "generate", {}, name="generate-2"))
    st.cache_data.clear()
    at = open_page("generated", job=str(pending))
    assert any("No generated responses stored for this job" in i.value for i in at.info)
