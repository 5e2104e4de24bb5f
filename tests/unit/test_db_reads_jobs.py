"""The Queue and Overview pages' reads (db.reads.jobs, db.reads.overview) on a real
database, and their pure helpers (app.queue, app.overview)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest

from app import overview as ov
from app import queue as qv
from db import experiments, queue
from db.engine import transact
from db.reads import jobs as reads
from db.reads import overview as overview_reads

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def _dag(conn) -> dict[str, int]:
    """An experiment of four jobs: a -> b -> d, a -> c -> d."""
    exp = experiments.create_experiment(conn, "exp", {"iterations": 1, "judge": {"baselines": ["base"]}})
    ids = experiments.enqueue_plan(conn, [
        {"key": "a", "kind": "sleep", "name": "a", "experiment_id": exp},
        {"key": "b", "kind": "sleep", "name": "b", "experiment_id": exp, "depends_on": ["a"]},
        {"key": "c", "kind": "sleep", "name": "c", "experiment_id": exp, "depends_on": ["a"]},
        {"key": "d", "kind": "sleep", "name": "d", "experiment_id": exp, "depends_on": ["b", "c"]},
    ])
    return {"exp": exp, **ids}


def test_job_rows_carry_worker_names_and_dependencies(engine):
    ids = transact(engine, _dag)
    other = transact(engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 1}))
    w = transact(engine, lambda c: queue.register_worker(c, name="gpu-node:7", host="gpu-node", pid=7,
                                                         devices=["0"], kinds=None))
    claimed = transact(engine, lambda c: queue.claim(c, w, devices=1, lease_seconds=60))
    assert claimed.id == ids["a"]

    rows = transact(engine, lambda c: reads.job_rows(c, ids["exp"]), write=False)
    assert [r["id"] for r in rows] == [ids["d"], ids["c"], ids["b"], ids["a"]]  # newest first, this experiment only
    by_id = {r["id"]: r for r in rows}
    assert by_id[ids["d"]]["depends_on"] == [ids["b"], ids["c"]]
    assert by_id[ids["a"]]["worker"] == "gpu-node:7" and by_id[ids["a"]]["status"] == "running"
    everything = transact(engine, lambda c: reads.job_rows(c), write=False)
    assert {r["id"] for r in everything} == {*by_id, other}

    detail = transact(engine, lambda c: reads.job_detail(c, ids["a"]), write=False)
    assert detail["dependants"] == [ids["b"], ids["c"]] and detail["experiment"] == "exp"
    assert detail["spec"] == {} and detail["run_dir"].startswith("runs/job-")
    assert transact(engine, lambda c: reads.job_detail(c, 999_999), write=False) is None

    graph = transact(engine, lambda c: reads.experiment_graph(c, ids["exp"]), write=False)
    assert [n["id"] for n in graph["nodes"]] == [ids[k] for k in "abcd"]
    assert sorted(graph["edges"]) == sorted([(ids["a"], ids["b"]), (ids["a"], ids["c"]),
                                             (ids["b"], ids["d"]), (ids["c"], ids["d"])])


def test_blocked_by_names_the_transitive_dependants_of_a_cancelled_job(engine):
    ids = transact(engine, _dag)
    assert transact(engine, lambda c: queue.cancel(c, ids["b"])) == "cancelled"
    blocked = transact(engine, lambda c: reads.blocked_by(c, ids["b"]), write=False)
    assert blocked == [ids["d"]]
    assert transact(engine, lambda c: reads.blocked_by(c, ids["c"]), write=False) == []


def test_overview_reads_counts_workers_and_failures(engine):
    ids = transact(engine, _dag)
    w = transact(engine, lambda c: queue.register_worker(c, name="n:1", host="n", pid=1, devices=[], kinds=None))
    idle = transact(engine, lambda c: queue.register_worker(c, name="n:2", host="n", pid=2, devices=["0", "1"],
                                                            kinds=["train"]))
    transact(engine, lambda c: queue.claim(c, w, devices=0, lease_seconds=60))
    transact(engine, lambda c: queue.fail(c, ids["a"], w, "Traceback ...\nValueError: boom", exit_code=1))
    transact(engine, lambda c: queue.claim(c, w, devices=0, lease_seconds=60))  # nothing claimable now

    (exp,) = transact(engine, overview_reads.experiment_rows, write=False)
    assert exp["counts"] == {"failed": 1, "blocked": 3} and exp["iterations"] == 1 and exp["baselines"] == ["base"]
    assert ov.experiment_state(exp["counts"]) == "failed"

    workers = {r["id"]: r for r in transact(engine, overview_reads.worker_rows, write=False)}
    assert workers[w]["current_jobs"] == [] and workers[idle]["devices"] == ["0", "1"]

    (failure,) = transact(engine, overview_reads.recent_failures, write=False)
    assert failure["id"] == ids["a"] and failure["experiment"] == "exp" and failure["error"].endswith("boom")
    assert ov.last_line(failure["error"]) == "ValueError: boom"


# --- pure helpers ------------------------------------------------------------------------------


@pytest.mark.parametrize("counts, state", [
    ({}, "empty"),
    ({"running": 1, "failed": 1, "queued": 2}, "running"),
    ({"failed": 1, "queued": 2}, "failed"),
    ({"succeeded": 2, "queued": 1}, "queued"),
    ({"succeeded": 2, "blocked": 1, "cancelled": 1}, "cancelled"),  # the cancel blocked the rest
    ({"succeeded": 1, "cancelled": 1, "queued": 1}, "queued"),  # the rest still runs
    ({"failed": 1, "cancelled": 1, "blocked": 2}, "failed"),
    ({"succeeded": 2, "blocked": 1}, "blocked"),
    ({"succeeded": 3, "queued": 0}, "succeeded"),
    ({"succeeded": 3, "cancelled": 1}, "cancelled"),
])
def test_experiment_state(counts, state):
    assert ov.experiment_state(counts) == state


def test_empty_state_names_only_the_steps_not_done():
    fresh = ov.empty_state_text(workers_alive=0, imported_sources=0)
    assert "`sami worker`" in fresh and "`sami import-results --shipped`" in fresh
    done = ov.empty_state_text(workers_alive=1, imported_sources=10)
    assert "sami worker" not in done and "import-results" not in done
    assert "1 worker alive" in done and "10 imported response sources are already in the workspace" in done
    assert "2 workers alive" in ov.empty_state_text(2, 0) and "import-results" in ov.empty_state_text(2, 0)


def test_workers_alive_counts_running_workers_heard_from():
    rows = [{"status": "running", "last_seen_at": T0}, {"status": "running", "last_seen_at": T0 - timedelta(hours=1)},
            {"status": "stopped", "last_seen_at": T0}]
    assert ov.workers_alive(rows, now=T0 + timedelta(seconds=5)) == 1


def test_latest_winrate_picks_the_last_iteration_against_the_first_baseline_at_the_lowest_temperature():
    def row(cand, base, t, rate):
        return {"candidate": cand, "baseline": base, "temperature": t, "judge_model": "m", "win_rate": rate, "n": 10}

    rows = [row("iteration-1", "base", 0.0, 0.5), row("iteration-2", "iteration-1", 0.0, 0.6),
            row("iteration-2", "base", 1.0, 0.7), row("iteration-2", "base", 0.0, 0.8), row("opus", "base", 0.0, 0.9)]
    best = ov.latest_winrate(rows, ["base", "iteration-1"])
    assert (best["candidate"], best["baseline"], best["temperature"]) == ("iteration-2", "base", 0.0)
    assert ov.winrate_text(best) == "iteration-2 vs base: 0.80 (n=10, T=0)"
    assert ov.latest_winrate(rows, ["iteration-1"])["win_rate"] == 0.6
    assert ov.latest_winrate([row("opus", "base", 0.0, 0.9)]) is None and ov.winrate_text(None) == "-"


def test_eta_and_progress():
    row = {"status": "running", "progress_eta_s": 100.0, "progress_updated_at": T0}
    assert qv.eta_s(row, T0 + timedelta(seconds=30)) == 70.0
    assert qv.eta_s(row, T0 + timedelta(seconds=300)) == 0.0
    assert qv.eta_s({**row, "status": "queued"}, T0) is None
    assert qv.progress_fraction(3, 4) == 0.75 and qv.progress_fraction(3, None) is None
    assert qv.progress_fraction(9, 4) == 1.0


def test_jobs_frame_shows_progress_status_and_attempts():
    rows = [
        {"id": 2, "kind": "train", "name": "train-1", "status": "running", "cancel_requested_at": T0,
         "progress_done": 5, "progress_total": 20, "progress_unit": "steps", "progress_eta_s": 60.0,
         "progress_updated_at": T0, "devices_required": 2, "attempts": 1, "max_attempts": 3, "worker": "n:1",
         "depends_on": [1], "created_at": T0, "updated_at": T0},
        {"id": 1, "kind": "generate", "name": None, "status": "succeeded", "devices_required": 0, "attempts": 1,
         "max_attempts": 3, "depends_on": [], "created_at": T0, "updated_at": T0},
    ]
    df = qv.jobs_frame(rows, now=T0 + timedelta(seconds=10))
    assert list(df.columns) == list(qv.TABLE_COLUMNS)
    first, second = df.to_dict("records")
    assert first["status"] == "cancelling" and first["progress"] == 0.25 and first["progress_text"] == "5/20 steps"
    assert first["eta"] == "50s" and first["attempt"] == "1/3" and first["depends_on"] == "1" and first["age"] == "10s"
    assert second["name"] == "generate" and second["progress"] == 1.0 and second["eta"] == "-"


def test_dag_dot_has_every_job_and_edge_and_escapes_labels():
    nodes = [{"id": 1, "name": 'say "hi"\\', "kind": "sleep", "status": "failed"},
             {"id": 2, "name": "b", "kind": "sleep", "status": "blocked"},
             {"id": 3, "name": None, "kind": "judge", "status": "running", "cancel_requested_at": T0}]
    dot = qv.dag_dot(nodes, [(1, 2), (2, 3), (7, 3)])
    assert dot.startswith("digraph jobs {") and dot.endswith("}")
    assert 'j1 [label="#1 say \\"hi\\"\\\\\\nfailed"' in dot
    assert f'fillcolor="{qv.STATUS_COLORS["blocked"]}"' in dot and "#3 judge\\ncancelling" in dot
    assert "j1 -> j2;" in dot and "j2 -> j3;" in dot and "j7" not in dot
    assert "failed red" in qv.legend() and "blocked orange" in qv.legend()


def test_log_tail_reads_the_last_lines(tmp_path):
    path = tmp_path / "stage.log"
    assert qv.log_tail(path) is None
    path.write_text("".join(f"line {i}\n" for i in range(1000)))
    assert qv.log_tail(path, lines=3) == "line 997\nline 998\nline 999"
    # Only the file's end is read; the line cut there is dropped.
    tail = qv.log_tail(path, lines=1000, max_bytes=40)
    assert tail.splitlines()[-1] == "line 999" and all(ln.startswith("line ") for ln in tail.splitlines())
    assert len(tail.splitlines()) < 10
    path.write_bytes(b"ok\n\xff\xfe bad bytes\n")
    assert qv.log_tail(path).splitlines()[0] == "ok"


def test_latest_mi_is_the_latest_model_scored_by_itself_beside_the_base():
    def row(label: str, scorer: str, iteration: int, job: int, mi: float) -> dict:
        return {"label": label, "scorer": scorer, "iteration": iteration, "job_id": job, "mi_lower_bound": mi,
                "mi_lower_bound_ci_low": mi - 0.05, "mi_lower_bound_ci_high": mi + 0.05}

    rows = [row("base", "base", 0, 1, 0.01), row("iteration-1", "iteration-1", 1, 5, 0.10),
            row("iteration-2", "base", 2, 9, 0.50),  # scored by the base model: not the model's own figure
            row("iteration-2", "iteration-2", 2, 9, 0.21)]
    latest, base = ov.latest_mi(rows)
    assert (latest["label"], latest["mi_lower_bound"], base["label"]) == ("iteration-2", 0.21, "base")
    assert ov.mi_text((latest, base)) == "iteration-2: 0.21 [0.16, 0.26] (base 0.01)"
    assert ov.mi_text(ov.latest_mi(rows[:1])) == "base: 0.01 [-0.04, 0.06]"  # only the base evaluated so far
    assert ov.latest_mi([]) is None and ov.mi_text(None) == "-"
    frame = ov.experiments_frame([{"id": 3, "name": "e", "counts": {"succeeded": 2}, "iterations": 2,
                                   "created_at": T0}], {}, now=T0, mi={3: (latest, base)})
    assert frame.loc[0, "held-out MI (nats)"] == "iteration-2: 0.21 [0.16, 0.26] (base 0.01)"


def test_job_times_and_what_the_buttons_can_do():
    ran = {"status": "succeeded", "started_at": T0, "finished_at": T0 + timedelta(seconds=75)}
    assert qv.job_times(ran, T0 + timedelta(hours=1)) == (T0, T0 + timedelta(seconds=75), 75.0)
    running = {"status": "running", "started_at": T0, "finished_at": None}
    assert qv.job_times(running, T0 + timedelta(seconds=30)) == (T0, None, 30.0)
    # re-queued after a failed attempt: that attempt's start no longer applies
    assert qv.job_times({"status": "queued", "started_at": T0, "finished_at": None}, T0) == (None, None, None)
    # cancelled before it ran: an end, no start, no duration
    assert qv.job_times({"status": "cancelled", "started_at": None, "finished_at": T0}, T0) == (None, T0, None)
    assert [s for s in ("queued", "running", "blocked", "succeeded", "failed", "cancelled") if qv.can_cancel(s)] == [
        "queued", "running", "blocked"]
    assert not qv.can_cancel("running", T0)  # cancellation already requested
    assert [s for s in ("queued", "running", "blocked", "succeeded", "failed", "cancelled") if qv.can_retry(s)] == [
        "blocked", "failed", "cancelled"]
    assert qv.job_label({"id": 3, "name": None, "kind": "train", "status": "running",
                         "cancel_requested_at": T0}) == "#3 train (cancelling)"
    df = qv.jobs_frame([{"id": 1, "kind": "sleep", "status": "succeeded", "started_at": T0,
                         "finished_at": T0 + timedelta(seconds=5), "depends_on": []}], now=T0)
    assert df.loc[0, "duration"] == "5s" and df.loc[0, "ended"] == pd.Timestamp("2026-01-01 12:00:05")
