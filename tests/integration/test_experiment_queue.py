"""Experiments through the queue with real stages: `sami submit` + `sami worker` run the
demo experiment end to end (its held-out MI stored per evaluate job); a worker killed with SIGKILL mid-training loses nothing
(another worker resumes from the last checkpoint); cancelling a training job kills
torchrun and its ranks. Real processes, real torchrun (2 CPU ranks with gloo), SQLite."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from db.models import Checkpoint, Job, Judgment, Metric, MIResult, Response, ResponseSource
from sami_core.spec import EXAMPLES_DIR
from tests.integration.conftest import KILL_GRACE_S, SLACK_S, TICK_S, Sami
from tests.integration.test_train_torchrun import make_training_data
from sami_core.launch import is_alive, tree_pids

pytestmark = pytest.mark.integration

# Stages are heavier than `sleep`: a longer lease, so that two CPU-bound training
# ranks on a 2-core machine never starve the worker's heartbeats into a lost lease.
STAGE_WORKER = ["--lease-seconds", "30"]


def train_job(sami: Sami, demo_model_dir: Path, **training) -> int:
    """A train job on a small generated data set, enqueued (and validated) by the CLI."""
    data = make_training_data(sami.home / "gen-data")
    spec = {"model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 1e-3, "grad_accum": 2, "seed": 0, **training}}
    path = sami.home / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    return int(sami.cli("enqueue", "train", "--spec", str(path), "--max-attempts", "3").stdout)


def test_the_demo_experiment_runs_end_to_end(sami_sqlite: Sami, demo_model_dir: Path) -> None:
    sami = sami_sqlite
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        sami.env.pop(var, None)  # the demo's `provider: auto` judge: the local demo judge here
    assert "workspace:" in sami.cli("init").stdout
    out = sami.cli("submit", str(EXAMPLES_DIR / "demo.yaml"), "--json", timeout=120)
    exp_id = json.loads(out.stdout)["experiment_id"]
    sami.worker("--exit-when-idle", *STAGE_WORKER)
    assert sami.wait_workers(timeout=600) == [0], sami.worker_logs()

    check = sami.cli("jobs", "--experiment", "latest", "--check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {r.name: r for r in sami.tx(lambda c: c.execute(
        select(Job.__table__).where(Job.experiment_id == exp_id)).all())}
    assert {name: j.status for name, j in jobs.items()} == {
        "sample-base": "succeeded", "generate-1": "succeeded", "train-1": "succeeded", "sample-1": "succeeded",
        "judge-1": "succeeded", "evaluate-base": "succeeded", "evaluate-1": "succeeded"}
    assert jobs["generate-1"].outputs["n_kept"] + jobs["generate-1"].outputs["n_dropped"] == 24

    spec = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
    per_source = spec["sampling"]["limit"] * len(spec["sampling"]["temperatures"])
    sources = sami.tx(lambda c: c.execute(
        select(ResponseSource.label, ResponseSource.kind, ResponseSource.checkpoint_id, func.count(Response.id))
        .join(Response, Response.source_id == ResponseSource.id)
        .where(ResponseSource.experiment_id == exp_id)
        .group_by(ResponseSource.id).order_by(ResponseSource.id)).all())
    ckpts = sami.tx(lambda c: c.execute(
        select(Checkpoint.id, Checkpoint.step, Checkpoint.iteration, Checkpoint.final)
        .where(Checkpoint.experiment_id == exp_id).order_by(Checkpoint.step)).all())
    final = [c for c in ckpts if c.final]
    assert len(final) == 1 and final[0].step == jobs["train-1"].outputs["steps"]
    assert {c.iteration for c in ckpts} == {1}
    assert [tuple(s) for s in sources] == [("base", "baseline", None, per_source),
                                           ("iteration-1", "checkpoint", final[0].id, per_source)]
    steps = sami.tx(lambda c: c.execute(select(Metric.step).where(
        Metric.job_id == jobs["train-1"].id, Metric.name == "loss").order_by(Metric.step)).scalars().all())
    assert steps == list(range(1, final[0].step + 1))  # relayed: one loss per optimizer step

    # judge-1 (the local HF judge on the demo model): one judgment per pair, in the database,
    # and a win-rate row per sampling temperature for iteration-1 vs base.
    n_judged = sami.tx(lambda c: c.execute(select(func.count()).select_from(Judgment)
                                           .where(Judgment.job_id == jobs["judge-1"].id)).scalar_one())
    assert n_judged == jobs["judge-1"].outputs["n_judgments"] == per_source
    table = json.loads(sami.cli("winrates", "--experiment", str(exp_id), "--json").stdout)
    assert {(r["candidate"], r["baseline"], r["judge_model"]) for r in table} == {("iteration-1", "base", "demo")}
    assert sum(r["n"] + r["invalid"] + r["errors"] for r in table) == per_source
    assert {r["temperature"] for r in table} == set(spec["sampling"]["temperatures"])

    # evaluate-base and evaluate-1: held-out MI in the database, per scoring model (iteration 1's
    # responses are scored by the base model too), as the jobs' outputs say, and as `sami export mi`
    mi = sami.tx(lambda c: c.execute(select(MIResult.__table__).where(MIResult.experiment_id == exp_id)
                                     .order_by(MIResult.iteration, MIResult.scorer)).all())
    assert [(r.job_id, r.iteration, r.label, r.scorer) for r in mi] == [
        (jobs["evaluate-base"].id, 0, "base", "base"), (jobs["evaluate-1"].id, 1, "iteration-1", "base"),
        (jobs["evaluate-1"].id, 1, "iteration-1", "iteration-1")]
    for r in mi:
        figures = jobs["evaluate-1" if r.iteration else "evaluate-base"].outputs["by_model"][r.scorer]
        assert (r.n_queries, r.n_constitutions) == (spec["evaluation"]["limit"], 2)
        assert r.mi_lower_bound == pytest.approx(figures["mi_lower_bound"])
        assert r.mi_lower_bound_ci_low <= r.mi_lower_bound <= r.mi_lower_bound_ci_high
        assert 0 <= r.row_accuracy <= 1 and 0 <= r.col_accuracy <= 1
    mi_lines = (sami.run_dir(jobs["evaluate-1"].id) / "mi.jsonl").read_text().splitlines()
    assert len(mi_lines) == 2 * spec["evaluation"]["limit"]
    sami.cli("export", "mi", "--out", "mi.csv", "--experiment", str(exp_id))
    assert len((sami.home / "mi.csv").read_text().splitlines()) == 1 + 3


def test_a_worker_killed_mid_training_is_replaced_and_training_resumes(
    sami_sqlite: Sami, demo_model_dir: Path
) -> None:
    sami = sami_sqlite
    job = train_job(sami, demo_model_dir, max_steps=6, save_every=2)
    # The first worker's lease is what the replacement waits out after the SIGKILL: short,
    # but a few times the heartbeat interval's worst case while two ranks fill the cores.
    first = sami.worker("--lease-seconds", "10")
    state = sami.ws.resolve(sami.job(job).run_dir) / "state" / "step-000002" / "COMPLETE"
    sami.wait_for("the first resumable state", state.exists, timeout=180, interval=0.05)
    first.send_signal(signal.SIGKILL)  # no chance to hand the job back
    first.wait()
    assert sami.job(job).status == "running"  # until its lease expires

    sami.worker("--exit-when-idle", *STAGE_WORKER)
    assert sami.wait_workers(timeout=300)[1] == 0, sami.worker_logs()
    j = sami.job(job)
    assert (j.status, j.attempts, j.progress_done) == ("succeeded", 2, 6), j.error
    log = (sami.run_dir(job) / "stage.log").read_text()
    assert "attempt 2 of 3" in log and "resuming from step-00000" in log
    steps = sami.tx(lambda c: c.execute(select(Checkpoint.step).where(Checkpoint.job_id == job)
                                        .order_by(Checkpoint.step)).scalars().all())
    assert steps == [2, 4, 6]
    rows = sami.tx(lambda c: c.execute(select(Metric.step, func.count()).where(
        Metric.job_id == job, Metric.name == "loss").group_by(Metric.step).order_by(Metric.step)).all())
    assert [tuple(r) for r in rows] == [(s, 1) for s in range(1, 7)]  # one per step, none lost or doubled


def test_cancelling_a_training_job_kills_torchrun_and_its_ranks(sami_sqlite: Sami, demo_model_dir: Path) -> None:
    sami = sami_sqlite
    job = train_job(sami, demo_model_dir, max_steps=500, save_every=500)  # minutes of training
    worker = sami.worker(*STAGE_WORKER)
    sami.wait_for("training steps", lambda: (sami.job(job).progress_done or 0) >= 1, timeout=180)
    pid = sami.job(job).pid
    pids = tree_pids(pid)  # torchrun and its ranks (and whatever they started)
    assert len(pids) >= 3, pids

    # Seen at the worker's next heartbeat; torchrun and the ranks SIGTERMed, SIGKILLed after
    # the grace; plus slack for `sami cancel` starting while the ranks fill both cores.
    limit = TICK_S + KILL_GRACE_S + SLACK_S
    t0 = time.monotonic()
    out = sami.cli("cancel", str(job), "--wait", str(limit))
    sami.wait_for("every process of the job to be gone", lambda: not any(is_alive(p) for p in pids), timeout=limit)
    assert time.monotonic() - t0 < limit
    assert f"job {job}: cancelled" in out.stdout and sami.job(job).status == "cancelled"
    assert worker.poll() is None  # the worker carries on
