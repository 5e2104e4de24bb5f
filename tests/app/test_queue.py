"""Queue page: the jobs table (status, progress, ETA, attempts), deep links, a job's
detail and log tail, cancel and retry through the buttons, the experiment's DAG."""

from __future__ import annotations

import re

import pandas as pd
import yaml

from app.overview import DEMO_SPEC
from db import queue
from db.engine import transact
from services import experiments as submit


def _submit_demo(engine) -> dict[str, int]:
    """The demo experiment cut to one iteration, through the real submit path; its job ids
    by name, plus "exp"."""
    data = yaml.safe_load(DEMO_SPEC.read_text())
    prepared = submit.prepare_data({**data, "iterations": 1}, source=str(DEMO_SPEC))
    result = transact(engine, lambda c: submit.submit(c, prepared))
    return {"exp": result.experiment_id, **{j["key"]: j["id"] for j in result.jobs}}


def _worker(engine) -> int:
    return transact(engine, lambda c: queue.register_worker(c, name="node:1", host="node", pid=1, devices=[],
                                                            kinds=None))


def _run_first(engine, worker: int, *, progress: dict | None = None, outcome: str = "succeed"):
    """Claim the next claimable job; report progress; then succeed, fail or leave it running."""
    job = transact(engine, lambda c: queue.claim(c, worker, devices=0, lease_seconds=60))
    if progress is not None:
        transact(engine, lambda c: queue.heartbeat(c, job.id, worker, lease_seconds=60, progress=progress))
    if outcome == "succeed":
        transact(engine, lambda c: queue.succeed(c, job.id, worker))
    elif outcome == "fail":
        transact(engine, lambda c: queue.fail(c, job.id, worker, "Traceback ...\nValueError: bad batch", exit_code=1))
    return job


def _table(at):
    return next(df.value for df in at.dataframe if "progress" in df.value.columns)


def _status(engine, job_id: int) -> str:
    return transact(engine, lambda c: queue.get_job(c, job_id).status, write=False)


def test_table_shows_statuses_progress_eta_and_attempts(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    done = _run_first(workspace.engine, w, progress={"done": 8, "total": 8, "unit": "queries"})
    running = _run_first(workspace.engine, w, outcome="running",
                         progress={"done": 6, "total": 24, "unit": "queries", "eta_s": 90})
    at = open_page("queue", experiment=str(ids["exp"]))
    assert at.selectbox(key="queue.experiment").value == ids["exp"]
    assert at.selectbox(key="queue.experiment").label == "Experiment"
    table = _table(at).set_index("id")
    assert set(table.index) == {v for k, v in ids.items() if k != "exp"}
    assert table.loc[done.id, "status"] == "succeeded" and table.loc[done.id, "progress"] == 1.0
    row = table.loc[running.id]
    assert (row["status"], row["progress"], row["progress_text"], row["attempt"], row["worker"]) == \
        ("running", 0.25, "6/24 queries", "1/2", "node:1")
    assert re.fullmatch(r"1m (30|[12]\d)s", row["eta"])  # 90 s as of the heartbeat, counting down
    assert table.loc[ids["judge-1"], "status"] == "queued"
    assert table.loc[ids["judge-1"], "depends_on"] == f"{ids['sample-base']}, {ids['sample-1']}"
    # every job shows the constitution version it used (the demo's, stored at submit)
    assert set(table["constitution"]) == {"demo:opus/0 v1"}


def test_all_jobs_and_the_experiment_filter(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    loose = transact(workspace.engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 1}))
    at = open_page("queue")
    assert at.selectbox(key="queue.experiment").value is None
    assert loose in set(_table(at)["id"])
    at.selectbox(key="queue.experiment").select(ids["exp"]).run()
    assert loose not in set(_table(at)["id"]) and len(_table(at)) == len(ids) - 1
    assert at.query_params["experiment"] in (str(ids["exp"]), [str(ids["exp"])])  # a shareable URL


def test_dag_has_every_job_and_dependency(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    edges = transact(workspace.engine, lambda c: queue.dependencies(c, [v for k, v in ids.items() if k != "exp"]),
                     write=False)
    w = _worker(workspace.engine)
    failed = _run_first(workspace.engine, w, outcome="fail")  # sample-base fails: judge-1 is blocked
    at = open_page("queue", experiment=str(ids["exp"]))
    (chart,) = at.get("graphviz_chart")
    dot = chart.proto.spec
    for name, job_id in ids.items():
        if name != "exp":
            assert f'j{job_id} [label="#{job_id} {name}\\n' in dot
    n_edges = 0
    for child, parents in edges.items():
        for p in parents:
            assert f"j{p} -> j{child};" in dot
            n_edges += 1
    assert dot.count("->") == n_edges > 0
    assert f'#{failed.id} sample-base\\nfailed", fillcolor="#fc9272"' in dot
    assert f'#{ids["judge-1"]} judge-1\\nblocked"' in dot


def test_cancel_a_queued_job_blocks_its_dependants(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    at = open_page("queue", job=str(ids["train-1"]))
    assert at.selectbox(key="queue.job").value == ids["train-1"]
    assert at.selectbox(key="queue.experiment").value == ids["exp"]  # the job's experiment
    at.button(key="queue.cancel").click().run()
    assert not at.exception
    assert _status(workspace.engine, ids["train-1"]) == "cancelled"
    assert {_status(workspace.engine, ids[k]) for k in ("sample-1", "evaluate-1", "judge-1")} == {"blocked"}
    (msg,) = [s.value for s in at.success]
    assert msg == (f"Job {ids['train-1']} cancelled; blocked its dependants {ids['sample-1']}, {ids['evaluate-1']}, "
                   f"{ids['judge-1']}.")
    assert _table(at).set_index("id").loc[ids["train-1"], "status"] == "cancelled"
    # The picker's label says so; Cancel has nothing left to do, Retry has.
    assert at.selectbox(key="queue.job").format_func(ids["train-1"]) == f"#{ids['train-1']} train-1 (cancelled)"
    assert at.button(key="queue.cancel").disabled and not at.button(key="queue.retry").disabled


def test_retry_a_failed_job_requeues_it_and_unblocks_its_dependants(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    failed = _run_first(workspace.engine, w, outcome="fail")
    assert _status(workspace.engine, ids["judge-1"]) == "blocked"
    at = open_page("queue", job=str(failed.id))
    assert "ValueError: bad batch" in "".join(c.value for c in at.code)  # the error, as text
    at.button(key="queue.retry").click().run()
    assert not at.exception
    assert _status(workspace.engine, failed.id) == "queued" and _status(workspace.engine, ids["judge-1"]) == "queued"
    assert [s.value for s in at.success] == [f"Job {failed.id} is queued; unblocked {ids['judge-1']}."]
    # A queued job cannot be retried: Retry is disabled, Cancel is not.
    assert at.button(key="queue.retry").disabled and not at.button(key="queue.cancel").disabled


def test_buttons_are_enabled_only_where_they_act(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    done = _run_first(workspace.engine, w)
    running = _run_first(workspace.engine, w, outcome="running")

    def buttons(job_id: int) -> tuple[bool, bool]:
        at = open_page("queue", job=str(job_id))
        return at.button(key="queue.cancel").disabled, at.button(key="queue.retry").disabled

    assert buttons(done.id) == (True, True)  # succeeded: nothing to cancel or retry
    assert buttons(running.id) == (False, True)
    assert buttons(ids["judge-1"]) == (False, True)  # queued
    transact(workspace.engine, lambda c: queue.cancel(c, running.id))  # running: cancellation requested
    at = open_page("queue", job=str(running.id))
    assert at.button(key="queue.cancel").disabled
    assert at.selectbox(key="queue.job").format_func(running.id).endswith("(cancelling)")


def test_the_picker_label_follows_a_cancel_by_the_worker(open_page, workspace):
    """A running job cancelled from the Queue page: its label goes from (running) to
    (cancelling) at once, and to (cancelled) once its worker has stopped it, without
    leaving the page."""
    _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    running = _run_first(workspace.engine, w, outcome="running")
    at = open_page("queue", job=str(running.id))
    label = lambda: at.selectbox(key="queue.job").format_func(running.id)  # noqa: E731
    assert label().endswith("(running)")
    at.button(key="queue.cancel").click().run()
    assert [i.value for i in at.info][-1].startswith(f"Job {running.id}: cancellation requested")
    assert label().endswith("(cancelling)")
    transact(workspace.engine, lambda c: queue.mark_cancelled(c, running.id, w))
    at.run()  # the next refresh
    assert label().endswith("(cancelled)") and at.button(key="queue.cancel").disabled
    assert _table(at).set_index("id").loc[running.id, "status"] == "cancelled"


def test_table_has_start_end_and_duration_and_a_neutral_progress_colour(open_page, workspace):
    import json

    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    done = _run_first(workspace.engine, w)
    running = _run_first(workspace.engine, w, outcome="running", progress={"done": 1, "total": 4})
    at = open_page("queue", experiment=str(ids["exp"]))
    table = _table(at).set_index("id")
    assert {"started", "ended", "duration"} <= set(table.columns)
    assert table.loc[done.id, "ended"] >= table.loc[done.id, "started"]
    assert re.fullmatch(r"\d+s", table.loc[done.id, "duration"])
    assert pd.isna(table.loc[running.id, "ended"]) and re.fullmatch(r"\d+s", table.loc[running.id, "duration"])
    queued = table.loc[ids["judge-1"]]
    assert pd.isna(queued["started"]) and queued["duration"] == "-"
    (frame,) = [df for df in at.dataframe if "progress" in df.value.columns]
    config = json.loads(frame.proto.columns)
    assert config["progress"]["type_config"]["color"] == "blue"


def test_a_long_error_wraps(open_page, workspace):
    _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    failed = _run_first(workspace.engine, w, outcome="fail")
    at = open_page("queue", job=str(failed.id))
    (error,) = [c for c in at.code if "bad batch" in c.value]
    assert error.proto.wrap_lines


def test_log_tail_shows_the_last_lines_of_the_stage_log(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    job = transact(workspace.engine, lambda c: queue.get_job(c, ids["generate-1"]), write=False)
    run_dir = workspace.ws.resolve(job.run_dir)
    at = open_page("queue", job=str(job.id))
    assert any("No log yet" in c.value for c in at.caption)
    run_dir.mkdir(parents=True)
    (run_dir / "stage.log").write_text("".join(f"step {i} <script>x</script>\n" for i in range(500)))
    at = open_page("queue", job=str(job.id))
    (tail,) = [c.value for c in at.code if "step " in c.value]
    lines = tail.splitlines()
    assert len(lines) == 200 and lines[0] == "step 300 <script>x</script>" and lines[-1].startswith("step 499 ")
    assert str(run_dir) in [c.value for c in at.code]
    assert at.get("json")  # the spec


def test_bad_links_show_an_error_not_an_exception(open_page, workspace):
    _submit_demo(workspace.engine)
    at = open_page("queue", job="999999")
    assert at.error[0].value.startswith("No job '999999'")
    assert at.selectbox(key="queue.job").value is None
    at = open_page("queue", job="abc", experiment="12345")
    assert [e.value for e in at.error] == ["No experiment '12345': showing all jobs.", "No job 'abc'."]
    at = open_page("queue", job="[x](http://evil.example)")  # a link's text is not markdown
    assert at.error[0].value == r"No job '\[x\]\(http\://evil\.example\)'."


def test_empty_queue_says_what_to_do(open_page):
    at = open_page("queue")
    assert any("sami worker" in i.value for i in at.info)


def test_viewing_the_pages_writes_nothing(open_page, workspace):
    """Opening, refreshing or leaving the pages never touches a job: only the buttons write."""
    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    _run_first(workspace.engine, w, outcome="running", progress={"done": 1, "total": 4})

    def snapshot(c):
        return [tuple(r) for r in queue.list_jobs(c)]

    before = transact(workspace.engine, snapshot, write=False)
    for query in ({}, {"experiment": str(ids["exp"])}, {"job": str(ids["sample-base"])}, {"job": str(ids["train-1"])}):
        at = open_page("queue", **query)
        at.run()  # a refresh
    open_page("overview")
    assert transact(workspace.engine, snapshot, write=False) == before


def test_a_generate_job_shows_what_each_filter_dropped(open_page, workspace):
    ids = _submit_demo(workspace.engine)
    w = _worker(workspace.engine)
    counts = {"responses": 8, "min_chars": 0, "drop_substrings": 2, "drop_substrings_each": {"[insert": 1, "]": 2},
              "ends_with": 3, "queries": 4, "queries_with_invalid": 2, "require_distinct": 1, "kept": 1}
    while (job := transact(workspace.engine, lambda c: queue.claim(c, w, devices=0, lease_seconds=60))) is not None:
        outputs = {"n_kept": 1, "filter_counts": counts} if job.id == ids["generate-1"] else None
        transact(workspace.engine, lambda c: queue.succeed(c, job.id, w, outputs=outputs))
        if outputs:
            break
    at = open_page("queue", job=str(ids["generate-1"]))
    assert not at.exception
    (table,) = [df.value for df in at.dataframe if "filter" in df.value.columns]
    got = dict(zip(table["filter"].str.strip(), zip(table["count"], table["of"])))
    assert got["drop_substrings"] == (2, "8 responses") and got["'[insert'"] == (1, "8 responses")
    assert got["ends_with"] == (3, "8 responses") and got["require_distinct"] == (1, "4 queries")
    assert got["queries_with_invalid"] == (2, "4 queries") and got["kept"] == (1, "4 queries")
    at = open_page("queue", job=str(ids["train-1"]))  # no filter counts: no table
    assert not [df for df in at.dataframe if "filter" in df.value.columns]


def test_a_judge_job_shows_its_tokens_and_estimated_cost(open_page, workspace):
    spec = {"judge": {"provider": "openai", "model": "gpt-4o", "price_prompt_per_mtok": 2.5,
                      "price_completion_per_mtok": 10.0}}
    job_id = transact(workspace.engine, lambda c: queue.enqueue(c, "judge", spec, name="judge-now"))
    w = _worker(workspace.engine)
    transact(workspace.engine, lambda c: queue.claim(c, w, devices=0, lease_seconds=60))
    transact(workspace.engine, lambda c: queue.succeed(c, job_id, w, outputs={
        "wins": 3, "prompt_tokens": 12345, "completion_tokens": 678, "cost_usd": 0.03764}))
    at = open_page("queue", job=str(job_id))
    assert "judge usage: 12,345 prompt + 678 completion tokens, estimated cost $0.0376" in [t.value for t in at.text]


def test_a_queued_judge_job_shows_what_it_will_send(open_page, workspace):
    import re as re_

    from sami_core.results import PUBLISHED_DIR

    cand, base = (str(PUBLISHED_DIR / f"{name}-mistral-opus-constitution-temperature-0.0.json")
                  for name in ("iteration-1-epoch-0.12", "base"))
    spec = {"judge": {"provider": "openai", "model": "gpt-4o", "price_prompt_per_mtok": 2.5,
                      "price_completion_per_mtok": 10.0},
            "candidate": {"path": cand}, "baseline": {"path": base}, "limit": 4, "template": "paper"}
    job_id = transact(workspace.engine, lambda c: queue.enqueue(c, "judge", spec, name="judge-later"))
    at = open_page("queue", job=str(job_id))
    (line,) = [t.value for t in at.text if t.value.startswith("judge estimate")]
    assert re_.fullmatch(r"judge estimate before sending: 4 of 4 judgments to send \(0 cached\); ~[\d,]+ prompt "
                         r"tokens \+ at most 1,024 completion tokens \(estimated cost at most \$0\.\d{4}\)", line), line
