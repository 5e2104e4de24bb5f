"""`sami worker --executor slurm` against a real one-node Slurm (tests/slurm_cluster.py):
munged, slurmctld and slurmd started for this module; skipped, with the reason, only when
Slurm or munge is not installed.

- A diagnostic sleep job and a short train job of the demo model (srun + torchrun, 2 gloo
  ranks) run as Slurm jobs: progress and metrics are relayed from the run directory, the
  outputs ingested, the Slurm job id recorded in the run directory.
- A worker stopped with SIGTERM leaves its Slurm job running and the job row running; a
  new worker of the same name adopts it (same attempt, its lease renewed). A requeue in
  Slurm (what preemption or a node failure does) runs the stage again, and the job
  succeeds without a new attempt in the queue. `sami cancel` ends in scancel.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest

from db import queue
from tests.integration.conftest import SLACK_S, Sami
from tests.slurm_cluster import SlurmCluster, unavailable_reason
from tests.training_data import make_training_data

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason()))]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> SlurmCluster:
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def sami_slurm(sami_sqlite: Sami, cluster: SlurmCluster) -> Sami:
    sami_sqlite.env["SLURM_CONF"] = cluster.env["SLURM_CONF"]
    return sami_sqlite


def slurm_state(cluster: SlurmCluster, slurm_id: str) -> str:
    out = cluster.run("scontrol", "show", "job", "-o", slurm_id)
    return re.search(r"JobState=(\S+)", out)[1]


def record(sami: Sami, job: int) -> dict | None:
    path = sami.run_dir(job) / "slurm_job.json"
    return json.loads(path.read_text()) if path.exists() else None


def test_a_sleep_job_and_a_train_job_run_as_slurm_jobs(sami_slurm: Sami, cluster: SlurmCluster, tmp_path: Path,
                                                       demo_model_dir: Path) -> None:
    sami = sami_slurm
    sleep = sami.enqueue(spec={"seconds": 1, "metrics": 3, "checkpoints": 1})
    data = make_training_data(tmp_path / "gen", n_queries=4)
    train = sami.enqueue("train", spec={
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "data": {"path": str(data)},
        "training": {"max_steps": 2, "save_every": 2, "grad_accum": 1, "queries_per_microbatch": 1}})
    sami.worker("--executor", "slurm", "--exit-when-idle", "--time", "10:00")
    assert sami.wait_workers(timeout=300) == [0]
    for job_id in (sleep, train):
        row = sami.job(job_id)
        assert (row.status, row.attempts) == ("succeeded", 1), (row.error, sami.worker_logs(), cluster.logs())
        slurm_id = record(sami, job_id)["slurm_job_id"]
        assert slurm_state(cluster, slurm_id) == "COMPLETED"
        assert f"=== slurm job {slurm_id} on {cluster.host}" in (sami.run_dir(job_id) / "stage.log").read_text()
    names = cluster.run("scontrol", "show", "job", "-o")
    assert f"JobName=sami-{sleep} " in names and f"JobName=sami-{train} " in names
    metrics = sami.tx(lambda c: queue.get_job(c, sleep))
    assert metrics.progress_done is not None
    ckpts = sami.tx(lambda c: c.exec_driver_sql(f"SELECT step FROM checkpoints WHERE job_id = {train}").all())
    assert [r.step for r in ckpts][-1] == 2
    assert sami.tx(lambda c: c.exec_driver_sql(f"SELECT count(*) FROM metrics WHERE job_id = {train}").scalar()) > 0


def test_restart_adopts_requeue_resumes_and_cancel_scancels(sami_slurm: Sami, cluster: SlurmCluster) -> None:
    sami = sami_slurm
    job = sami.enqueue(spec={"seconds": 6, "log_ticks": True})
    doomed = sami.enqueue(spec={"seconds": 600})
    first = sami.worker("--executor", "slurm", "--name", "slurm-w")
    rec = sami.wait_for("the Slurm job to start", lambda: (r := record(sami, job)) and
                        slurm_state(cluster, r["slurm_job_id"]) == "RUNNING" and r, timeout=60)
    slurm_id = rec["slurm_job_id"]

    # The worker stops; the Slurm job runs on and the job stays running in the queue.
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=SLACK_S) == 0
    assert slurm_state(cluster, slurm_id) == "RUNNING"
    old = sami.job(job)
    assert old.status == "running"

    # Preemption: Slurm requeues the job (and holds it 2 minutes: released at once here).
    cluster.run("scontrol", "requeue", slurm_id)
    # Released once its first run is cleaned up on the node, and in a later second than that
    # clean-up: slurmd revokes the job's credentials up to the second of the kill and refuses
    # ("already killed, do not launch batch job") a launch whose credential is not newer.
    sami.wait_for("the requeued job", lambda: slurm_state(cluster, slurm_id) == "PENDING"
                  and cluster.run("sinfo", "-h", "-o", "%t").strip() == "idle", timeout=30)
    time.sleep(2.0)
    cluster.run("scontrol", "update", f"JobId={slurm_id}", "StartTime=now")

    # A restarted worker of the same name adopts it: same attempt, same Slurm job.
    sami.worker("--executor", "slurm", "--name", "slurm-w")
    sami.wait_for("the job adopted", lambda: sami.job(job).worker_id not in (None, old.worker_id), timeout=SLACK_S)
    done = sami.wait_for("the job to succeed", lambda: (r := sami.job(job)).status != "running" and r, timeout=120)
    assert (done.status, done.attempts) == ("succeeded", 1), (done.error, sami.worker_logs(), cluster.logs())
    assert record(sami, job)["slurm_job_id"] == slurm_id
    executions = (sami.run_dir(job) / "executions.log").read_text().splitlines()
    assert len(executions) == 2  # the stage ran again after the requeue

    # Cancel: the worker scancels the Slurm job.
    doomed_id = sami.wait_for("the second job submitted", lambda: (r := record(sami, doomed)) and r["slurm_job_id"],
                              timeout=60)
    sami.wait_for("it to run", lambda: slurm_state(cluster, doomed_id) == "RUNNING", timeout=60)
    sami.cli("cancel", str(doomed))
    row = sami.wait_for("the job cancelled", lambda: (r := sami.job(doomed)).status == "cancelled" and r,
                        timeout=SLACK_S)
    assert f"scancel {doomed_id}" in row.error
    assert slurm_state(cluster, doomed_id) == "CANCELLED"


def test_a_killed_workers_slurm_job_is_watched_by_the_next_claimer(sami_slurm: Sami, cluster: SlurmCluster) -> None:
    """SIGKILL: no hand-over. The lease expires, the job is requeued (attempt counted), and
    the worker that claims it finds its Slurm job still running: it watches that one
    instead of submitting another, and the stage runs once."""
    sami = sami_slurm
    job = sami.enqueue(spec={"seconds": 8})
    first = sami.worker("--executor", "slurm")
    rec = sami.wait_for("the Slurm job to start", lambda: (r := record(sami, job)) and
                        slurm_state(cluster, r["slurm_job_id"]) == "RUNNING" and r, timeout=60)
    first.kill()
    first.wait()
    sami.worker("--executor", "slurm", "--exit-when-idle")
    assert sami.wait_workers(timeout=120)[1] == 0
    row = sami.job(job)
    assert (row.status, row.attempts) == ("succeeded", 2), (row.error, sami.worker_logs())
    assert record(sami, job) == {**rec, "attempt": 2, "submitted_at": record(sami, job)["submitted_at"]}
    assert len((sami.run_dir(job) / "executions.log").read_text().splitlines()) == 1
    assert f"watching its Slurm job {rec['slurm_job_id']} again" in sami.worker_logs()


def test_the_worker_refuses_slurm_options_without_the_slurm_executor(sami_slurm: Sami) -> None:
    r = sami_slurm.cli("worker", "--partition", "gpu", check=False)
    assert r.returncode == 2 and "--partition is a Slurm option: add --executor slurm" in r.stderr


def test_doctor_sees_the_slurm_controller(sami_slurm: Sami) -> None:
    r = sami_slurm.cli("doctor", "--executor", "slurm", timeout=300)
    assert "ok    slurm" in r.stdout and "UP" in r.stdout, r.stdout
