"""A stage's progress, metrics, outputs and log reach the database and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from sqlalchemy import select

from db.models import Checkpoint, Metric
from tests.integration.conftest import SLACK_S, Sami


def test_progress_metrics_checkpoints_and_logs(sami_sqlite: Sami) -> None:
    sami = sami_sqlite
    assert "workspace:" in sami.cli("init").stdout
    job = int(sami.cli("enqueue", "sleep", "--param", "seconds=2", "-p", "metrics=5", "-p", "checkpoints=2",
                       "--name", "demo/train").stdout)
    after = int(sami.cli("enqueue", "sleep", "--depends-on", str(job)).stdout)
    worker = sami.worker("--exit-when-idle")

    # Relayed while the stage runs, not only at the end.
    running = sami.wait_for("progress while running", lambda: (
        (j := sami.job(job)).status == "running" and (j.progress_done or 0) > 0 and j))
    assert running.progress_total == 20 and running.progress_unit == "ticks"
    sami.wait_for("metrics while running", lambda: sami.job(job).status == "running" and sami.tx(
        lambda c: c.execute(select(Metric.id)).first()))
    assert worker.wait(timeout=60) == 0

    j = sami.job(job)
    assert j.status == "succeeded" and sami.job(after).status == "succeeded"
    assert (j.progress_done, j.progress_total) == (20, 20)
    metrics = sami.tx(lambda c: c.execute(select(Metric.step, Metric.name, Metric.value)
                                          .where(Metric.name == "loss").order_by(Metric.step)).all())
    assert [(m.step, round(m.value, 3)) for m in metrics] == [(0, 1.0), (1, 0.5), (2, 0.333), (3, 0.25), (4, 0.2)]
    ckpts = sami.tx(lambda c: c.execute(select(Checkpoint.step, Checkpoint.path, Checkpoint.final)
                                        .order_by(Checkpoint.step)).all())
    run_dir = f"runs/job-{job:06d}-sleep"
    assert [tuple(c) for c in ckpts] == [(1, f"{run_dir}/checkpoints/step-000001", False),
                                         (2, f"{run_dir}/checkpoints/step-000002", True)]
    assert j.outputs["checkpoints"][1]["final"] is True
    assert json.loads((sami.run_dir(job) / "job_spec.json").read_text()) == {
        "seconds": 2.0, "metrics": 5, "checkpoints": 2, "exit_code": 0}

    listed = json.loads(sami.cli("jobs", "--json").stdout)
    assert [(x["id"], x["status"], x["depends_on"]) for x in listed] == [
        (after, "succeeded", [job]), (job, "succeeded", [])]
    table = sami.cli("jobs").stdout
    assert "demo/train" in table and "20/20 (100%)" in table
    log = sami.cli("logs", str(job), "--follow").stdout  # a finished job: prints and returns
    assert f"job {job} (sleep), attempt 1 of 3" in log and "workers.diag sleep" in log


def test_cli_refuses_bad_input(sami_sqlite: Sami) -> None:
    sami = sami_sqlite
    bad_kind = sami.cli("enqueue", "nap", check=False)
    assert bad_kind.returncode == 2 and "unknown job kind 'nap'" in bad_kind.stderr
    bad_param = sami.cli("enqueue", "sleep", "-p", "seconds=-1", check=False)
    assert bad_param.returncode == 2 and "seconds must be a finite number >= 0" in bad_param.stderr
    bad_dep = sami.cli("enqueue", "sleep", "--depends-on", "99", check=False)
    assert bad_dep.returncode == 2 and "unknown job(s): 99" in bad_dep.stderr
    assert sami.cli("retry", "99", check=False).returncode == 2
    job = int(sami.cli("enqueue", "sleep").stdout)
    assert "cancelled" in sami.cli("cancel", str(job)).stdout
    assert "already cancelled" in sami.cli("cancel", str(job)).stdout


def test_gpu_jobs_get_the_gpus_they_claimed(sami_sqlite: Sami) -> None:
    """Device gating and CUDA_VISIBLE_DEVICES, with a worker told it has GPUs 0 and 1
    (the `sleep` stage records what it was given; no GPU is needed for that)."""
    sami = sami_sqlite
    two = sami.enqueue(spec={"seconds": 0.1}, devices_required=2)
    one = sami.enqueue(spec={"seconds": 0.1}, devices_required=1)
    cpu = sami.enqueue(spec={"seconds": 0.1})
    three = sami.enqueue(spec={"seconds": 0.1}, devices_required=3)
    sami.worker("--exit-when-idle")  # CPU only: runs the CPU job, leaves the GPU jobs queued
    assert sami.wait_workers() == [0]
    assert [sami.job(j).status for j in (two, one, cpu)] == ["queued", "queued", "succeeded"]
    sami.worker("--exit-when-idle", "--devices", "0,1")  # after FAST_WORKER's --devices ""
    assert sami.wait_workers() == [0, 0]
    devices = {j: (sami.run_dir(j) / "executions.log").read_text().split()[-1] for j in (two, one, cpu)}
    assert devices == {two: "devices=0,1", one: "devices=0", cpu: "devices="}
    assert sami.job(three).status == "queued"  # no worker has 3 GPUs


def test_a_stage_that_exits_0_without_its_outputs_fails(sami_sqlite: Sami) -> None:
    """README: "A stage that exits 0 without writing outputs.json has failed." The `sleep`
    stage with `no_outputs` does its work, reports success in progress.json and exits 0,
    but writes no outputs.json: the job fails (not retried) and blocks its dependants;
    the same stage writing its outputs succeeds."""
    sami = sami_sqlite
    unfinished = int(sami.cli("enqueue", "sleep", "-p", "seconds=0.2", "-p", "no_outputs=true").stdout)
    dependant = int(sami.cli("enqueue", "sleep", "--depends-on", str(unfinished)).stdout)
    finished = int(sami.cli("enqueue", "sleep", "-p", "seconds=0.2").stdout)
    sami.worker("--exit-when-idle")
    assert sami.wait_workers() == [0], sami.worker_logs()

    run = sami.run_dir(unfinished)
    assert json.loads((run / "progress.json").read_text())["status"] == "succeeded"  # the stage's own word
    assert (run / "executions.log").read_text().count("\n") == 1 and not (run / "outputs.json").exists()
    j = sami.job(unfinished)
    assert (j.status, j.exit_code, j.attempts, j.outputs) == ("failed", 0, 1, None), j.error
    assert "stage exited 0 but wrote no outputs.json" in j.error
    assert sami.job(dependant).status == "blocked"
    ok = sami.job(finished)
    assert (ok.status, ok.outputs) == ("succeeded", {"ticks": 2})
    assert json.loads((sami.run_dir(finished) / "outputs.json").read_text()) == {"ticks": 2}


def test_logs_follow_prints_a_running_jobs_lines_as_they_come_and_ends_with_it(sami_sqlite: Sami) -> None:
    """README: `sami logs ID --follow` on a running job. The stage prints a line every
    0.1 s; lines written after `logs --follow` started reach its output before the job
    ends, the command ends on its own once the job has, and what it printed is the whole
    log (the worker's header included), each line once, in order."""
    sami = sami_sqlite
    seconds = 15  # long enough for the follower to start on a loaded machine and see lines arrive
    job = int(sami.cli("enqueue", "sleep", "-p", f"seconds={seconds}", "-p", "log_ticks=true").stdout)
    sami.worker("--exit-when-idle")
    log = sami.run_dir(job) / "stage.log"
    sami.wait_for("the job's first lines", lambda: sami.job(job).status == "running" and log.exists()
                  and "sleep: tick 1/" in log.read_text(), timeout=60)

    follower = subprocess.Popen([sys.executable, "-m", "cli", "logs", str(job), "--follow"], env=sami.env,
                                cwd=sami.home, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    received: list[tuple[float, str]] = []  # (wall-clock time, line)
    reader = threading.Thread(target=lambda: received.extend((time.time(), line) for line in follower.stdout))
    reader.start()
    try:
        # It ends by itself: the job's remaining ticks, then the follower's status check
        # (every second) and poll (0.25 s), with a wide margin.
        rc = follower.wait(timeout=seconds + 2 + SLACK_S)
        exited_at = time.time()
    finally:
        if follower.poll() is None:
            follower.kill()
        reader.join(timeout=10)
    assert rc == 0, follower.stderr.read()
    j = sami.job(job)
    assert j.status == "succeeded"
    assert "".join(line for _, line in received) == log.read_text()
    ticks = [int(line.split()[2].split("/")[0]) for _, line in received if line.startswith("sleep: tick ")]
    assert ticks == list(range(1, seconds * 10 + 1))
    # Streamed, not printed at the end: ticks kept arriving (over seconds, not in one read)
    # while the job was still running; and the follower stopped only once the job had.
    finished_at = j.finished_at.timestamp()
    early = [t for t, line in received if line.startswith("sleep: tick ") and t < finished_at]
    assert early and max(early) - min(early) >= 1.0, (finished_at, received[:2], received[-2:])
    assert exited_at >= finished_at
