"""Overview page: the demo experiment in one click, experiments with their state and
latest win rate, workers with their current job, recent failures with their error."""

from __future__ import annotations

from pathlib import Path

import yaml
from sqlalchemy import func, select

from app.overview import DEMO_SPEC
from db import ingest, queue
from db.engine import transact
from db.models import Experiment, Job, job_dependencies
from sami_core.pipeline import expand
from services import experiments as submit


def _submit_demo(engine) -> int:
    prepared = submit.prepare(DEMO_SPEC)
    return transact(engine, lambda c: submit.submit(c, prepared)).experiment_id


def _frame(at, column):
    """The table that has this column (experiments: "latest win rate"; workers: "last
    heartbeat"; failures: "error")."""
    return next(df.value for df in at.dataframe if column in df.value.columns)


def test_empty_workspace_says_how_to_start(open_page):
    at = open_page("overview")
    text = " ".join(i.value for i in at.info)
    assert "sami worker" in text and "sami import-results --shipped" in text
    assert at.button(key="overview.submit_demo").label == "Submit the demo experiment"


def test_empty_state_leaves_out_what_is_done(open_page, workspace):
    """With a worker alive and the published responses imported, the empty state no
    longer asks for either."""
    from services import results

    transact(workspace.engine, lambda c: queue.register_worker(c, name="n:1", host="n", pid=1, devices=[],
                                                               kinds=None))
    transact(workspace.engine, lambda c: results.import_results_file(c, results.shipped_results()[0]))
    at = open_page("overview")
    text = " ".join(i.value for i in at.info)
    assert "No experiment yet" in text and "1 worker alive" in text
    assert "sami worker" not in text and "import-results" not in text
    assert "1 imported response source is already in the workspace" in text


def test_a_cancelled_experiment_shows_as_cancelled(open_page, workspace):
    exp_id = _submit_demo(workspace.engine)
    jobs = transact(workspace.engine, lambda c: queue.list_jobs(c, experiment_id=exp_id), write=False)
    parents = transact(workspace.engine, lambda c: queue.dependencies(c, [j.id for j in jobs]), write=False)
    roots = [j.id for j in jobs if not parents[j.id]]
    for job_id in roots:  # cancelling the jobs that wait for nothing blocks every other one
        transact(workspace.engine, lambda c, job_id=job_id: queue.cancel(c, job_id))
    at = open_page("overview")
    (exp,) = _frame(at, "latest win rate").to_dict("records")
    assert exp["cancelled"] == len(roots) and exp["blocked"] == len(jobs) - len(roots) > 0
    assert exp["state"] == "cancelled"


def test_the_demo_button_submits_the_demo_experiment_and_links_to_the_queue(open_page, workspace):
    at = open_page("overview")
    at.button(key="overview.submit_demo").click().run()
    assert not at.exception, [e.value for e in at.exception]

    exp_id, n_jobs, n_edges = transact(workspace.engine, lambda c: (
        c.execute(select(func.max(Experiment.id))).scalar_one(),
        c.execute(select(func.count()).select_from(Job)).scalar_one(),
        c.execute(select(func.count()).select_from(job_dependencies)).scalar_one()), write=False)
    plans = expand(submit.prepare(DEMO_SPEC).exp, "runs")
    assert n_jobs == len(plans) and n_edges == sum(len(p.depends_on) for p in plans) > 0
    assert [s.value for s in at.success] == [f"Experiment {exp_id} submitted"]
    assert any("no worker is registered yet" in c.value for c in at.caption)  # submit's warning
    link = at.get("page_link")[0]
    assert (link.proto.page, link.proto.query_string) == ("queue", f"experiment={exp_id}")

    (row,) = _frame(at, "latest win rate").to_dict("records")
    assert (row["id"], row["name"], row["state"], row["jobs"], row["queued"]) == (exp_id, "demo", "queued",
                                                                                  n_jobs, n_jobs)
    assert row["blocked"] == 0 and row["iterations"] == 3


def test_workers_are_listed_with_their_current_job(open_page, workspace):
    _submit_demo(workspace.engine)
    w = transact(workspace.engine, lambda c: queue.register_worker(
        c, name="gpu-7:123", host="gpu-7", pid=123, devices=["0", "1"], kinds=None))
    job = transact(workspace.engine, lambda c: queue.claim(c, w, devices=2, lease_seconds=60))
    at = open_page("overview")
    (row,) = _frame(at, "last heartbeat").to_dict("records")
    assert (row["host"], row["devices"], row["status"]) == ("gpu-7", "0, 1", "running")
    assert row["current job"] == f"#{job.id} {job.name}" and row["last heartbeat"].endswith("s ago")
    (exp,) = _frame(at, "latest win rate").to_dict("records")
    assert (exp["state"], exp["running"]) == ("running", 1)


def test_failures_show_their_error_as_text(open_page, workspace):
    exp_id = _submit_demo(workspace.engine)
    w = transact(workspace.engine, lambda c: queue.register_worker(c, name="n:1", host="n", pid=1, devices=[],
                                                                   kinds=None))
    job = transact(workspace.engine, lambda c: queue.claim(c, w, devices=0, lease_seconds=60))
    error = "Traceback (most recent call last):\n  ...\nRuntimeError: <b>CUDA out of memory</b> [x](javascript:1)"
    transact(workspace.engine, lambda c: queue.fail(c, job.id, w, error, exit_code=1))
    at = open_page("overview")

    (row,) = _frame(at, "error").to_dict("records")
    assert row["job"] == job.id and row["experiment"] == f"{exp_id}: demo"
    assert row["error"] == "RuntimeError: <b>CUDA out of memory</b> [x](javascript:1)"
    assert error in [c.value for c in at.code]  # the whole error, as text
    (code,) = [c for c in at.code if c.value == error]
    assert code.proto.wrap_lines  # a long line wraps instead of scrolling out of sight
    assert not any("CUDA" in m.value for m in at.markdown)
    (exp,) = _frame(at, "latest win rate").to_dict("records")
    assert (exp["state"], exp["failed"]) == ("failed", 1)


def test_latest_win_rate_of_an_experiment(open_page, workspace):
    exp_id = _submit_demo(workspace.engine)
    eng = workspace.engine

    def seed(c) -> None:
        jobs = {r.name: r.id for r in queue.list_jobs(c, experiment_id=exp_id)}
        sides = {}
        for label, key in (("base", "sample-base"), ("iteration-1", "sample-1")):
            src = ingest.upsert_response_source(c, jobs[key], kind="baseline" if label == "base" else "checkpoint",
                                                label=label, experiment_id=exp_id, temperatures=[0.0])
            ingest.upsert_responses(c, src, [{"query_id": str(q), "temperature": 0.0, "text": f"{label} {q}"}
                                             for q in range(4)])
            sides[label] = {r["query_id"]: r["id"] for r in ingest.source_responses(c, src)}
        verdicts = ["candidate", "candidate", "candidate", "baseline"]
        ingest.upsert_judgments(c, [{
            "job_id": jobs["judge-1"], "candidate_id": sides["iteration-1"][str(q)],
            "baseline_id": sides["base"][str(q)],
            "constitution_id": None, "candidate_position": "A", "judge_model": "demo", "verdict": v,
            "rationale": "r", "raw_text": "r", "cache_key": f"k{q}"} for q, v in enumerate(verdicts)])
        w = queue.register_worker(c, name="n:1", host="n", pid=1, devices=[], kinds=None)
        first = queue.claim(c, w, devices=0, lease_seconds=60)
        queue.succeed(c, first.id, w)

    transact(eng, seed)
    at = open_page("overview")
    (exp,) = _frame(at, "latest win rate").to_dict("records")
    assert exp["latest win rate"] == "iteration-1 vs base: 0.75 (n=4, T=0)"
    assert exp["succeeded"] == 1


def test_an_experiment_with_a_model_baseline_renders(open_page, workspace):
    """A model baseline (label `instruct`, listed first) gets its sample and judge jobs, and
    the latest win rate is the one against it: the spec's first baseline, although `base`
    comes first by name and wins more often."""
    data = yaml.safe_load(Path(DEMO_SPEC).read_text())
    data["judge"]["baselines"] = [{"model": "demo", "label": "instruct"}, "base"]
    prepared = submit.prepare_data(data, source="exp.yaml")
    exp_id = transact(workspace.engine, lambda c: submit.submit(c, prepared)).experiment_id
    plans = expand(prepared.exp, "runs")
    assert {"sample-instruct", "judge-1-vs-instruct", "judge-1-vs-base"} <= {p.key for p in plans}

    def seed(c) -> None:
        jobs = {r.name: r.id for r in queue.list_jobs(c, experiment_id=exp_id)}
        sides = {}
        for label, key, kind in (("base", "sample-base", "baseline"), ("instruct", "sample-instruct", "baseline"),
                                 ("iteration-1", "sample-1", "checkpoint")):
            src = ingest.upsert_response_source(c, jobs[key], kind=kind, label=label, experiment_id=exp_id,
                                                temperatures=[0.0])
            ingest.upsert_responses(c, src, [{"query_id": str(q), "temperature": 0.0, "text": f"{label} {q}"}
                                             for q in range(4)])
            sides[label] = {r["query_id"]: r["id"] for r in ingest.source_responses(c, src)}
        for baseline, verdicts in (("base", ["candidate"] * 3 + ["baseline"]),
                                   ("instruct", ["candidate"] + ["baseline"] * 3)):
            ingest.upsert_judgments(c, [{
                "job_id": jobs[f"judge-1-vs-{baseline}"], "candidate_id": sides["iteration-1"][str(q)],
                "baseline_id": sides[baseline][str(q)], "constitution_id": None, "candidate_position": "A",
                "judge_model": "demo", "verdict": v, "rationale": "r", "raw_text": "r",
                "cache_key": f"{baseline}{q}"} for q, v in enumerate(verdicts)])
        w = queue.register_worker(c, name="n:1", host="n", pid=1, devices=[], kinds=None)
        first = queue.claim(c, w, devices=0, lease_seconds=60)
        queue.succeed(c, first.id, w)

    transact(workspace.engine, seed)
    at = open_page("overview")
    (exp,) = _frame(at, "latest win rate").to_dict("records")
    assert (exp["id"], exp["jobs"], exp["succeeded"]) == (exp_id, len(plans), 1)
    assert exp["iterations"] == data.get("iterations", 1)
    assert exp["latest win rate"] == "iteration-1 vs instruct: 0.25 (n=4, T=0)"
