"""Experiments through the queue with real stages: `sami submit` + `sami worker` run the
demo experiment end to end (its held-out MI stored per evaluate job); a worker killed with SIGKILL mid-training loses nothing
(another worker resumes from the last checkpoint); cancelling a training job kills
torchrun and its ranks. Real processes, real torchrun (2 CPU ranks with gloo), SQLite."""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from db.models import Checkpoint, GeneratedResponse, Job, Judgment, Metric, MIResult, Response, ResponseSource
from sami_core.spec import EXAMPLES_DIR
from tests.integration.conftest import KILL_GRACE_S, SLACK_S, TICK_S, Sami
from tests.integration.test_train_torchrun import make_training_data
from sami_core.launch import is_alive, tree_pids

pytestmark = pytest.mark.integration

# Stages are heavier than `sleep`: a longer lease, so that two CPU-bound training
# ranks on a 2-core machine never starve the worker's heartbeats into a lost lease.
STAGE_WORKER = ["--lease-seconds", "30"]
# The rise the shortened demo must show (see the test's docstring for what is seen).
MI_RISE = 0.05
WIN_RATE_LAST = 0.6


def train_job(sami: Sami, demo_model_dir: Path, **training) -> int:
    """A train job on a small generated data set, enqueued (and validated) by the CLI."""
    data = make_training_data(sami.home / "gen-data")
    spec = {"model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 1e-3, "grad_accum": 2, "seed": 0, **training}}
    path = sami.home / "train.yaml"
    path.write_text(yaml.safe_dump(spec))
    return int(sami.cli("enqueue", "train", "--spec", str(path), "--max-attempts", "3").stdout)


# The demo experiment, shortened for the test: 2 iterations, 16 held-out posts to evaluate
# and 32 to sample and judge (the shipped demo.yaml: 3 iterations on 64). Seeded like the demo.
SHORT_DEMO = {"iterations": 2, "evaluation": {"limit": 16}, "sampling": {"limit": 32}}


def short_demo_spec() -> dict:
    spec = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
    for section, value in SHORT_DEMO.items():
        spec[section] = {**spec[section], **value} if isinstance(value, dict) else value
    return spec


@pytest.mark.timeout(1500)  # 12 jobs, two of them training: minutes on a shared 2-core runner
def test_the_demo_experiment_runs_end_to_end_and_sami_raises_mi_and_concision(
    sami_sqlite: Sami, demo_model_dir: Path
) -> None:
    """The demo experiment (shortened to two iterations) through `sami submit` + `sami
    worker`: every job succeeds, outputs land in the database, and SAMI works: the held-out
    MI rises from the base model to iteration 1 and again to iteration 2, and the concision
    rule prefers each iteration's summaries (sampled at temperature 1) to the base model's.
    Margins are wide: seen (seed 0, this recipe, demo model v3, 64 posts) MI 0.02 -> 0.38
    -> 0.58 nats and concision win rates 0.84 [0.74, 0.91] and 0.88 [0.77, 0.94] (asserted:
    rises of 0.05 nats, and win rates of at least 0.6 on 32 posts)."""
    sami = sami_sqlite
    assert "workspace:" in sami.cli("init").stdout
    spec = short_demo_spec()
    path = sami.home / "demo-short.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = sami.cli("submit", str(path), "--json", timeout=120)
    exp_id = json.loads(out.stdout)["experiment_id"]
    sami.worker("--exit-when-idle", *STAGE_WORKER)
    assert sami.wait_workers(timeout=1100) == [0], sami.worker_logs()

    check = sami.cli("jobs", "--experiment", "latest", "--check", check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {r.name: r for r in sami.tx(lambda c: c.execute(
        select(Job.__table__).where(Job.experiment_id == exp_id)).all())}
    assert set(jobs) == {"sample-base", "evaluate-base", *(f"{k}-{t}" for t in (1, 2) for k in (
        "generate", "train", "sample", "evaluate", "judge"))}
    assert {j.status for j in jobs.values()} == {"succeeded"}
    assert jobs["generate-1"].outputs["n_kept"] + jobs["generate-1"].outputs["n_dropped"] == spec["data"]["train_size"]
    # every generated response is stored, kept or dropped; the kept queries are the outputs' n_kept
    generated = sami.tx(lambda c: c.execute(
        select(GeneratedResponse.kept, func.count(), func.count(GeneratedResponse.query_id.distinct()))
        .where(GeneratedResponse.job_id == jobs["generate-1"].id).group_by(GeneratedResponse.kept)).all())
    assert sum(r[1] for r in generated) == spec["data"]["train_size"] * spec["n_constitutions"]
    assert {bool(r[0]): r[2] for r in generated}.get(True, 0) == jobs["generate-1"].outputs["n_kept"]

    per_source = spec["sampling"]["limit"] * len(spec["sampling"]["temperatures"])
    sources = sami.tx(lambda c: c.execute(
        select(ResponseSource.label, ResponseSource.kind, ResponseSource.checkpoint_id, func.count(Response.id))
        .join(Response, Response.source_id == ResponseSource.id)
        .where(ResponseSource.experiment_id == exp_id)
        .group_by(ResponseSource.id).order_by(ResponseSource.id)).all())
    ckpts = sami.tx(lambda c: c.execute(
        select(Checkpoint.id, Checkpoint.step, Checkpoint.iteration, Checkpoint.final)
        .where(Checkpoint.experiment_id == exp_id).order_by(Checkpoint.iteration, Checkpoint.step)).all())
    final = {c.iteration: c for c in ckpts if c.final}
    assert set(final) == {1, 2} and final[1].step == jobs["train-1"].outputs["steps"]
    assert [tuple(s) for s in sources] == [("base", "baseline", None, per_source),
                                           ("iteration-1", "checkpoint", final[1].id, per_source),
                                           ("iteration-2", "checkpoint", final[2].id, per_source)]
    steps = sami.tx(lambda c: c.execute(select(Metric.step).where(
        Metric.job_id == jobs["train-1"].id, Metric.name == "loss").order_by(Metric.step)).scalars().all())
    assert steps == list(range(1, final[1].step + 1))  # relayed: one loss per optimizer step

    # judge-t (the concision rule): one judgment per pair, in the database, with the rule's rationale
    n_judged = sami.tx(lambda c: c.execute(select(func.count()).select_from(Judgment)
                                           .where(Judgment.job_id == jobs["judge-1"].id)).scalar_one())
    assert n_judged == jobs["judge-1"].outputs["n_judgments"] == per_source
    rationale = sami.tx(lambda c: c.execute(select(Judgment.rationale).where(
        Judgment.job_id == jobs["judge-1"].id).limit(1)).scalar_one())
    assert re.match(r"A: (empty|\d+ words?, (no filler|\d+ filler phrases?)); B: ", rationale), rationale
    table = json.loads(sami.cli("winrates", "--experiment", str(exp_id), "--json").stdout)
    assert {(r["candidate"], r["baseline"], r["judge_model"]) for r in table} == {
        ("iteration-1", "base", "concision"), ("iteration-2", "base", "concision")}

    # evaluate-base and evaluate-t: held-out MI in the database, as the jobs' outputs say
    mi = sami.tx(lambda c: c.execute(select(MIResult.__table__).where(MIResult.experiment_id == exp_id)
                                     .order_by(MIResult.iteration, MIResult.scorer)).all())
    assert [(r.job_id, r.iteration, r.label, r.scorer) for r in mi] == [
        (jobs["evaluate-base"].id, 0, "base", "base"), (jobs["evaluate-1"].id, 1, "iteration-1", "iteration-1"),
        (jobs["evaluate-2"].id, 2, "iteration-2", "iteration-2")]
    for r in mi:
        figures = jobs[f"evaluate-{r.iteration or 'base'}"].outputs["by_model"][r.scorer]
        assert (r.n_queries, r.n_constitutions) == (spec["evaluation"]["limit"], 2)
        assert r.mi_lower_bound == pytest.approx(figures["mi_lower_bound"])
        assert r.mi_lower_bound_ci_low <= r.mi_lower_bound <= r.mi_lower_bound_ci_high
    sami.cli("export", "mi", "--out", "mi.csv", "--experiment", str(exp_id))
    assert len((sami.home / "mi.csv").read_text().splitlines()) == 1 + 3

    # `sami summary`: per iteration the MI and the win rate; SAMI raised both
    rows = json.loads(sami.cli("summary", "--experiment", str(exp_id), "--json").stdout)
    assert [(r["iteration"], r["label"], r["baseline"]) for r in rows] == [
        (0, "base", None), (1, "iteration-1", "base"), (2, "iteration-2", "base")]
    for before, after in zip(rows, rows[1:]):  # the MI rises every iteration
        assert after["mi"] >= before["mi"] + MI_RISE, rows
    assert all(r["win_rate"] >= WIN_RATE_LAST for r in rows[1:]), rows
    last = rows[-1]
    text = sami.cli("summary", "--experiment", "latest").stdout
    assert f"{last['mi']:.3f} [" in text and f"{last['win_rate']:.3f} [" in text


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
