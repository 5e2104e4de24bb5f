"""Fault tests of `sami worker` processes on a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

from sqlalchemy import func, select, text

from db import queue
from db.models import Job, Metric
from tests.integration.conftest import KILL_GRACE_S, LEASE_S, SLACK_S, TICK_S, Sami
from workers.diag import count_executions
from sami_core.launch import is_alive


# A live worker's claim or heartbeat may retry for up to its database deadline (30 s,
# workers.daemon) while 8 workers contend for the database on 2 cores: a lease shorter
# than that can expire under a live worker and run its job again (at-least-once, by
# design). Exactly-once is what is tested here, so the lease outlasts that deadline.
CONTENDED_LEASE_S = 2 * 30


def test_300_jobs_on_8_workers_each_run_exactly_once(sami: Sami) -> None:
    workers = [sami.worker("--lease-seconds", str(CONTENDED_LEASE_S)) for _ in range(8)]
    # All eight polling before the first job exists, so that they do contend.
    sami.wait_for("8 registered workers", lambda: sami.tx(
        lambda c: c.execute(select(func.count()).select_from(queue.workers)).scalar_one()) == 8, timeout=60)
    # Mostly `sleep 0` (run inside the worker), some real child processes.
    items = [{"kind": "sleep", "spec": {"seconds": 0.05 if i % 30 == 0 else 0}} for i in range(300)]
    ids = sami.tx(lambda c: queue.enqueue_many(c, items))
    sami.wait_for("300 jobs done", lambda: sami.tx(lambda c: queue.status_counts(c)).get("succeeded") == 300,
                  timeout=120, interval=0.25)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    assert sami.wait_workers(timeout=SLACK_S) == [0] * 8, sami.worker_logs()

    rows = sami.tx(lambda c: c.execute(select(Job.id, Job.status, Job.attempts, Job.worker_id, Job.run_dir)).all())
    assert {r.status for r in rows} == {"succeeded"}
    assert {r.attempts for r in rows} == {1}
    runs = count_executions(sami.ws.runs_dir, {r.id: sami.ws.resolve(r.run_dir) for r in rows})
    assert sorted(runs) == sorted(ids)
    assert set(runs.values()) == {1}, {j: n for j, n in runs.items() if n != 1}
    assert len({r.worker_id for r in rows}) >= 4  # the work was shared


def test_cancel_kills_the_whole_process_tree_at_the_next_heartbeat(sami: Sami) -> None:
    # The stage ignores SIGTERM and its grandchild left the process group: only a
    # tree-wide SIGKILL (found by session and job marker) stops them. It would run for
    # 10 minutes: far beyond the limit below, which a cancel that never lands fails.
    job = sami.enqueue(spec={"seconds": 600, "grandchild": True, "ignore_sigterm": True})
    dependant = sami.enqueue(depends_on=[job])
    worker = sami.worker()
    pids = sami.wait_for("the stage and its grandchild", lambda: len(sami.pids(job)) == 2 and sami.pids(job))
    sami.wait_for("the job to run", lambda: sami.job(job).pid is not None)
    assert all(is_alive(p) for p in pids)

    # The worker sees the cancel at its next heartbeat, SIGTERMs the tree, SIGKILLs it
    # after the grace; plus slack for `sami cancel` starting up on a loaded machine.
    limit = TICK_S + KILL_GRACE_S + SLACK_S
    t0 = time.monotonic()
    out = sami.cli("cancel", str(job), "--wait", str(limit))
    sami.wait_for("every process of the job to be gone", lambda: not any(is_alive(p) for p in pids), timeout=limit)
    assert time.monotonic() - t0 < limit
    assert f"job {job}: cancelled" in out.stdout
    assert sami.job(job).status == "cancelled"
    assert sami.job(dependant).status == "blocked"
    assert "process tree killed" in (sami.run_dir(job) / "stage.log").read_text()
    assert worker.poll() is None  # the worker carries on


def test_failed_stage_blocks_dependants_and_retry_requeues(sami: Sami) -> None:
    failing = sami.enqueue(spec={"seconds": 0.1, "exit_code": 3, "fail_attempts": 1})
    dependant = sami.enqueue(spec={"seconds": 0}, depends_on=[failing])
    other = sami.enqueue(spec={"seconds": 0.1})
    flaky = sami.enqueue(spec={"seconds": 0.1, "exit_code": 75, "fail_attempts": 1})  # 75 = transient
    sami.worker("--exit-when-idle")
    assert sami.wait_workers() == [0]

    failed = sami.job(failing)
    assert (failed.status, failed.exit_code, failed.attempts) == ("failed", 3, 1)
    assert "exit code 3" in failed.error
    assert "sleep: working line 2" in failed.error  # the log's last lines
    assert "sleep: failing on purpose with exit code 3" in failed.error
    assert sami.job(dependant).status == "blocked"
    assert sami.job(other).status == "succeeded"
    assert (sami.job(flaky).status, sami.job(flaky).attempts) == ("succeeded", 2)  # retried by itself
    assert "transient, retried after 1 s" in sami.worker_logs()  # after its backoff

    out = sami.cli("retry", str(failing))
    assert f"unblocked {dependant}" in out.stdout
    assert (sami.job(failing).status, sami.job(dependant).status) == ("queued", "queued")
    sami.worker("--exit-when-idle")  # the stage "resumes" on its run dir and succeeds
    assert sami.wait_workers() == [0, 0]
    assert (sami.job(failing).status, sami.job(dependant).status) == ("succeeded", "succeeded")
    assert sami.job(failing).error is None


def test_expired_lease_requeues_the_job_to_another_worker(sami: Sami) -> None:
    job = sami.enqueue(spec={"seconds": 3, "grandchild": True})
    first = sami.worker()
    first_pids = sami.wait_for("the first attempt's processes", lambda: len(sami.pids(job)) == 2 and sami.pids(job))
    first.send_signal(signal.SIGKILL)  # no chance to hand the job back
    first.wait()
    sami.worker("--exit-when-idle")
    # The lease runs out, the new worker's sweep (every LEASE_S / 2) requeues the job, it claims it.
    sami.wait_for("a second attempt", lambda: sami.job(job).attempts == 2, timeout=LEASE_S * 1.5 + SLACK_S)
    # The new attempt killed what was left of the first one (its grandchild, on this host).
    sami.wait_for("the first attempt's processes to be gone", lambda: not any(is_alive(p) for p in first_pids),
                  timeout=KILL_GRACE_S + SLACK_S)
    assert sami.wait_workers(timeout=60)[1] == 0
    j = sami.job(job)
    assert (j.status, j.attempts, j.error) == ("succeeded", 2, None)
    assert count_executions(sami.ws.runs_dir, {job: sami.run_dir(job)}) == {job: 2}  # at least once


def test_sigterm_hands_the_running_job_back(sami: Sami) -> None:
    job = sami.enqueue(spec={"seconds": 30, "grandchild": True})
    worker = sami.worker()
    pids = sami.wait_for("the job's processes", lambda: len(sami.pids(job)) == 2 and sami.pids(job))
    sami.wait_for("the job to run", lambda: sami.job(job).pid is not None)
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=KILL_GRACE_S + SLACK_S) == 0
    j = sami.job(job)
    # Handed back: queued again, and the interrupted attempt is not counted.
    assert (j.status, j.attempts, j.worker_id) == ("queued", 0, None)
    assert not any(is_alive(p) for p in pids)
    statuses = sami.tx(lambda c: c.execute(select(queue.workers.c.status)).scalars().all())
    assert statuses == ["stopped"]


def test_a_locked_database_is_waited_out(sami: Sami, backend: str) -> None:
    """Another connection holds the write lock for seconds, twice: while the worker
    runs a job (heartbeats, metrics) and while it tries to claim. It retries and carries on."""
    env = {"SAMI_SQLITE_BUSY_TIMEOUT_MS": "100"}  # SQLite: fail fast, so the worker's own retries run
    worker = sami.worker(env=env)
    job = sami.enqueue(spec={"seconds": 2.5, "metrics": 8})
    sami.wait_for("the job to run", lambda: sami.job(job).status == "running")

    def hold_lock(seconds: float) -> None:
        if backend == "sqlite":
            con = sqlite3.connect(sami.home / "sami.db", isolation_level=None)
            con.execute("BEGIN IMMEDIATE")
            time.sleep(seconds)
            con.execute("COMMIT")
            con.close()
        else:
            with sami.engine.begin() as conn:
                conn.execute(text("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE"))
                time.sleep(seconds)

    hold_lock(3.0)
    sami.wait_for("the job to succeed", lambda: sami.job(job).status == "succeeded", timeout=30)
    locker = threading.Thread(target=hold_lock, args=(2.0,))
    locker.start()
    time.sleep(0.3)
    second = sami.enqueue(spec={"seconds": 0})  # waits for the lock, like the worker's claims
    locker.join()
    sami.wait_for("the second job to succeed", lambda: sami.job(second).status == "succeeded", timeout=30)
    assert worker.poll() is None, sami.worker_logs()
    n_metrics = sami.tx(lambda c: c.execute(select(func.count()).select_from(Metric)).scalar_one())
    assert n_metrics == 16  # 8 records x (loss, matrix): none lost while the database was locked
    if backend == "sqlite":
        assert "database busy" in sami.worker_logs()  # it did meet the lock, and retried
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=KILL_GRACE_S + SLACK_S) == 0
    assert os.path.exists(sami.run_dir(job) / "stage.log")


def test_a_train_job_that_refuses_its_input_under_torchrun_is_bad_input(sami_sqlite: Sami, tmp_path: Path,
                                                                          demo_model_dir: Path) -> None:
    """torchrun reports any failed rank as exit code 1; the ranks record their own code
    (2: bad input) in RUN_DIR/exit_status.json and the worker reports that."""
    sami = sami_sqlite
    empty = tmp_path / "gen"
    empty.mkdir()
    (empty / "data.jsonl").write_text("\n")  # a generate run that produced no queries
    job = sami.enqueue("train", spec={"model": {"path": str(demo_model_dir)}, "data": {"path": str(empty)},
                                      "training": {"max_steps": 1}})
    sami.worker("--exit-when-idle")
    assert sami.wait_workers(timeout=300) == [0]
    failed = sami.job(job)
    assert (failed.status, failed.exit_code, failed.attempts) == ("failed", 2, 1), failed.error
    assert "bad input, not retried" in failed.error
    assert "has no training queries" in failed.error
    assert json.loads((sami.run_dir(job) / "exit_status.json").read_text())["code"] == 2


def test_poisoned_metrics_lines_are_skipped_and_the_job_ends_by_its_stage(sami: Sami) -> None:
    """Everything a stage writes is untrusted: a step past any integer column, bytes that
    are not UTF-8 and a line longer than a poll's read each get skipped with a warning;
    the lease and the watch go on (no second attempt) and later records still arrive."""
    job = sami.enqueue(spec={"seconds": 6, "metrics": 3})
    worker = sami.worker("--exit-when-idle")

    def stored_steps() -> list[int]:
        return sami.tx(lambda c: c.execute(select(Metric.step).where(Metric.job_id == job, Metric.name == "loss")
                                           .order_by(Metric.step)).scalars().all())

    sami.wait_for("the stage's own metrics", lambda: stored_steps() == [0, 1, 2], timeout=SLACK_S)
    with open(sami.run_dir(job) / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 100000000000000000000000000000, "loss": 1.0}\n')
        f.write(b'{"step": 5, "loss": 1e999, "big": ' + b"9" * 400 + b"}\n")
        f.write(b"\xff\xfe not text\n")
        f.write(b'{"step": 6, "pad": "' + b"x" * (5 << 20) + b'"}\n')
        f.write(b'{"step": 7, "loss": 0.125}\n')
    sami.wait_for("the record after the bad ones", lambda: stored_steps()[-1:] == [7], timeout=SLACK_S)
    assert worker.wait(timeout=60) == 0
    j = sami.job(job)
    assert (j.status, j.attempts, j.error) == ("succeeded", 1, None), sami.worker_logs()
    assert stored_steps() == [0, 1, 2, 5, 7]  # step 5's loss is kept as text ("inf")
    logs = sami.worker_logs()
    assert "out of range" in logs and "skipping a metrics line of" in logs


def test_run_directories_outside_the_workspace_are_refused(sami: Sami) -> None:
    outside = sami.home.parent / f"{sami.home.name}-outside"
    for run_dir in ("../" + outside.name, str(outside), "runs/../../" + outside.name):
        r = sami.cli("enqueue", "sleep", "--run-dir", run_dir, check=False)
        assert r.returncode == 2 and "outside the workspace" in r.stderr and "Traceback" not in r.stderr, r.stderr
    (sami.home / "a-file").write_text("x")
    r = sami.cli("enqueue", "sleep", "--run-dir", "a-file", check=False)
    assert r.returncode == 2 and "is a file, not a directory" in r.stderr, r.stderr
    ok = sami.cli("enqueue", "sleep", "-p", "seconds=0.2", "--run-dir", str(sami.home / "runs" / "mine"))
    assert sami.job(int(ok.stdout)).run_dir == "runs/mine"  # stored relative to the workspace
    # A row written past the service layer (another tool, an old version): the worker refuses it.
    crafted = sami.enqueue(spec={"seconds": 0.2}, run_dir="../" + outside.name)
    sami.worker("--exit-when-idle")
    assert sami.wait_workers() == [0]
    j = sami.job(crafted)
    assert j.status == "failed" and "outside the workspace" in j.error and j.attempts == 1
    assert not outside.exists()
    assert sami.job(int(ok.stdout)).status == "succeeded"


def test_a_worker_runs_no_remote_model_code_unless_its_operator_allows_it(sami: Sami) -> None:
    spec = {"model": {"path": "demo"}, "score_models": [{"model": "some/hub-model", "trust_remote_code": True}]}
    refused = sami.enqueue("evaluate", spec=spec)
    sami.worker("--exit-when-idle")
    assert sami.wait_workers() == [0]
    j = sami.job(refused)
    assert j.status == "failed" and j.attempts == 1  # bad input: not retried
    assert j.error.startswith("score_models.0.trust_remote_code: ") and "--allow-remote-code" in j.error
    assert not (sami.run_dir(refused) / "job_spec.json").exists()  # nothing was started
