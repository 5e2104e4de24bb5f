"""What a succeeded stage leaves in its run directory, stored by the worker's output
handlers (workers.relay): checkpoints, response sources and responses, on a real
database (SQLite and PostgreSQL). Re-ingesting never duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from db import ingest, queue
from db.experiments import constitution_version, create_experiment
from db.engine import transact
from db.models import Checkpoint, Response, ResponseSource
from db.workspace import Workspace
from workers import relay


def claimed(engine, kind: str, spec: dict, **kw):  # noqa: ANN001, ANN201
    """Enqueue a job and claim it: the row a worker hands to the output handlers."""
    def run(c):  # noqa: ANN001, ANN202
        worker = queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None)
        queue.enqueue(c, kind, spec, **kw)
        return queue.claim(c, worker, devices=0, lease_seconds=30, kinds=[kind])
    return transact(engine, run)


def write_train_run(run_dir: Path) -> dict:
    for step in (2, 4):
        (run_dir / "checkpoints" / f"step-{step:06d}").mkdir(parents=True)
    (run_dir / "checkpoints" / "final").symlink_to("step-000004", target_is_directory=True)
    return {"checkpoints": [{"step": 2, "path": str(run_dir / "checkpoints/step-000002"), "final": False},
                            {"step": 4, "path": str(run_dir / "checkpoints/step-000004"), "final": True}],
            "final_checkpoint": str(run_dir / "checkpoints/step-000004"), "steps": 4}


def write_sample_run(run_dir: Path, model: str, temperatures=(0.0, 1.0), n_queries: int = 3) -> dict:  # noqa: ANN001
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"key": [f"q{q}", t], "query_id": f"q{q}", "query": f"post {q}", "temperature": t,
              "constitution": "1. Be brief.", "prompt": "...", "response": f"summary {q} at {t}",
              "raw": "...", "n_tokens": 3 + q, "model": model}
             for t in temperatures for q in range(n_queries)]
    (run_dir / "responses.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return {"responses": "responses.jsonl", "n": len(lines), "model": model, "temperatures": list(temperatures)}


def test_sample_of_a_checkpoint_and_of_the_base_model(engine, tmp_path: Path) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    root = "runs/exp-000001-demo"
    exp_id, c_id = transact(engine, lambda c: (
        create_experiment(c, "demo", {}),
        constitution_version(c, "c", [{"principle": "Be brief.", "antithesis": "Ramble."}])[0]))

    train = claimed(engine, "train", {}, experiment_id=exp_id, iteration=1, label="iteration-1",
                    run_dir=f"{root}/train-1")
    train_dir = ws.resolve(train.run_dir)
    outputs = write_train_run(train_dir)
    transact(engine, lambda c: relay.ingest_outputs(c, train, outputs, train_dir, ws))
    ckpts = transact(engine, lambda c: c.execute(select(
        Checkpoint.step, Checkpoint.path, Checkpoint.iteration, Checkpoint.experiment_id, Checkpoint.final)
        .order_by(Checkpoint.step)).all())
    assert [tuple(r) for r in ckpts] == [
        (2, f"{root}/train-1/checkpoints/step-000002", 1, exp_id, False),
        (4, f"{root}/train-1/checkpoints/step-000004", 1, exp_id, True)]

    # sample-1 samples train-1's `checkpoints/final` (relative to the workspace, as submitted).
    model = f"{root}/train-1/checkpoints/final"
    sample = claimed(engine, "sample", {"model": {"path": model}}, experiment_id=exp_id, constitution_id=c_id,
                     iteration=1, label="iteration-1", run_dir=f"{root}/sample-1")
    sample_dir = ws.resolve(sample.run_dir)
    outputs = write_sample_run(sample_dir, model)
    for _ in range(2):  # a second ingestion updates in place
        transact(engine, lambda c: relay.ingest_outputs(c, sample, outputs, sample_dir, ws))
    base = claimed(engine, "sample", {"model": {"path": "demo"}}, experiment_id=exp_id, constitution_id=c_id,
                   iteration=0, label="base", run_dir=f"{root}/sample-base")
    base_dir = ws.resolve(base.run_dir)
    base_outputs = write_sample_run(base_dir, "/somewhere/demo-model-v1", temperatures=(0.0,))
    transact(engine, lambda c: relay.ingest_outputs(c, base, base_outputs, base_dir, ws))

    sources = transact(engine, lambda c: c.execute(select(
        ResponseSource.job_id, ResponseSource.kind, ResponseSource.label, ResponseSource.checkpoint_id,
        ResponseSource.model, ResponseSource.experiment_id, ResponseSource.temperatures)
        .order_by(ResponseSource.id)).all())
    final_id = transact(engine, lambda c: c.execute(select(Checkpoint.id).where(Checkpoint.step == 4)).scalar_one())
    assert [tuple(s) for s in sources] == [
        (sample.id, "checkpoint", "iteration-1", final_id, f"{root}/train-1/checkpoints/step-000004", exp_id,
         [0.0, 1.0]),
        (base.id, "baseline", "base", None, "demo", exp_id, [0.0]),
    ]
    rows = transact(engine, lambda c: c.execute(select(
        ResponseSource.label, Response.query_id, Response.query, Response.temperature, Response.text,
        Response.n_tokens, Response.constitution_id).join(ResponseSource, Response.source_id == ResponseSource.id)
        .order_by(Response.id)).all())
    assert len(rows) == 3 * 2 + 3  # queries x temperatures per source, nothing duplicated
    assert tuple(rows[0]) == ("iteration-1", "q0", "post 0", 0.0, "summary 0 at 0.0", 3, c_id)
    assert {r.constitution_id for r in rows} == {c_id}


def test_bad_sample_outputs_are_refused(engine, tmp_path: Path) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    job = claimed(engine, "sample", {}, run_dir="runs/s")
    run_dir = ws.resolve(job.run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "responses.jsonl").write_text('{"query_id": "q0", "temperature": 0.0}\n')
    with pytest.raises(relay.OutputsError, match="line 1: missing response"):
        transact(engine, lambda c: relay.ingest_outputs(c, job, {"responses": "responses.jsonl"}, run_dir, ws))
    with pytest.raises(relay.OutputsError, match="must name the responses file"):
        transact(engine, lambda c: relay.ingest_outputs(c, job, {"n": 1}, run_dir, ws))


def test_generate_counts_are_checked(engine, tmp_path: Path) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    job = claimed(engine, "generate", {})
    transact(engine, lambda c: relay.ingest_outputs(c, job, {"n_kept": 3, "n_dropped": 1}, tmp_path, ws))
    with pytest.raises(relay.OutputsError, match="n_kept"):
        transact(engine, lambda c: relay.ingest_outputs(c, job, {"n_dropped": 1}, tmp_path, ws))


def test_a_model_baseline_is_a_baseline_source_and_names_its_win_rates(engine, tmp_path: Path) -> None:  # noqa: ANN001
    """sample-instruct (an experiment's model baseline: a hub id, or a local directory that
    is no checkpoint of the experiment) -> a `baseline` source labelled `instruct` with its
    model; judge-1-vs-instruct's judgments then find it by that label."""
    from services import exports, judging, results

    ws = Workspace(tmp_path / "ws")
    root = "runs/exp-000001-demo"
    exp_id, c_id = transact(engine, lambda c: (
        create_experiment(c, "demo", {}),
        constitution_version(c, "c", [{"principle": "Be brief.", "antithesis": "Ramble."}])[0]))
    local_model = tmp_path / "models" / "my-instruct"
    local_model.mkdir(parents=True)
    jobs = {}
    for label, model in (("instruct", "mistralai/Mistral-7B-Instruct-v0.2"), ("local", str(local_model)),
                         ("iteration-1", "demo")):
        job = claimed(engine, "sample", {"model": {"path": model}}, experiment_id=exp_id, constitution_id=c_id,
                      iteration=1 if label == "iteration-1" else 0, label=label, run_dir=f"{root}/sample-{label}")
        run_dir = ws.resolve(job.run_dir)
        outputs = write_sample_run(run_dir, "/hf-cache/resolved/snapshot", temperatures=(0.0,))
        transact(engine, lambda c, job=job, outputs=outputs, run_dir=run_dir: relay.ingest_outputs(
            c, job, outputs, run_dir, ws))
        jobs[label] = job
    sources = transact(engine, lambda c: c.execute(select(
        ResponseSource.job_id, ResponseSource.kind, ResponseSource.label, ResponseSource.checkpoint_id,
        ResponseSource.model, ResponseSource.experiment_id).order_by(ResponseSource.id)).all())
    assert [tuple(s) for s in sources[:2]] == [
        (jobs["instruct"].id, "baseline", "instruct", None, "mistralai/Mistral-7B-Instruct-v0.2", exp_id),
        (jobs["local"].id, "baseline", "local", None, str(local_model), exp_id)]

    spec = {"candidate": {"path": f"{root}/sample-iteration-1", "name": "iteration-1", "temperature": None},
            "baseline": {"path": f"{root}/sample-instruct", "name": "instruct", "temperature": None}}
    judge = claimed(engine, "judge", spec, experiment_id=exp_id, iteration=1, label="iteration-1 vs instruct",
                    run_dir=f"{root}/judge-1-vs-instruct")
    judge_dir = ws.resolve(judge.run_dir)
    judge_dir.mkdir(parents=True)
    verdicts = ["win", "win", "loss"]
    (judge_dir / "judgments.jsonl").write_text("".join(json.dumps({
        "pair_id": f"q{q}@0.0", "query_id": f"q{q}", "temperature": 0.0, "order": "candidate_first",
        "judge_model": "demo", "verdict": v, "rationale": "r", "raw": "Final Response: A", "cache_key": f"k{q}"})
        + "\n" for q, v in enumerate(verdicts)))
    transact(engine, lambda c: relay.ingest_outputs(c, judge, {"n_judgments": 3}, judge_dir, ws))
    from db import ingest

    (row,) = exports.winrates(transact(engine, lambda c: ingest.judgment_rows(c, experiment_id=exp_id)))
    assert (row["candidate"], row["baseline"], row["n"], row["wins"], row["losses"]) == (
        "iteration-1", "instruct", 3, 2, 1)


def mi_figures(bound: float, model: str) -> dict:
    out = {"model": model, "n_queries": 16, "n_constitutions": 2, "chance_accuracy": 0.5, "loss": 0.69 - bound}
    for name, v in (("mi_lower_bound", bound), ("row_accuracy", 0.75), ("col_accuracy", 0.5)):
        out.update({name: v, f"{name}_ci_low": v - 0.1, f"{name}_ci_high": v + 0.1})
    return out


def test_evaluate_stores_one_mi_row_per_scoring_model(engine, tmp_path: Path) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    exp_id = transact(engine, lambda c: create_experiment(c, "demo", {}))
    job = claimed(engine, "evaluate", {}, experiment_id=exp_id, iteration=2, label="iteration-2",
                  run_dir="runs/e/evaluate-2")
    run_dir = ws.resolve(job.run_dir)
    outputs = {"label": "iteration-2", "temperature": 0.0, "mi": "mi.jsonl", **mi_figures(0.2, "ckpt"),
               "by_model": {"iteration-2": mi_figures(0.2, "ckpt"), "base": mi_figures(-0.01, "demo")}}
    for _ in range(2):  # re-ingesting overwrites
        transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, run_dir, ws))
    other = transact(engine, lambda c: create_experiment(c, "other", {}))
    rows = transact(engine, lambda c: ingest.mi_rows(c, experiment_id=exp_id), write=False)
    assert transact(engine, lambda c: ingest.mi_rows(c, experiment_id=other), write=False) == []
    assert [(r["label"], r["scorer"], r["model"], r["iteration"], r["job_id"]) for r in rows] == [
        ("iteration-2", "base", "demo", 2, job.id), ("iteration-2", "iteration-2", "ckpt", 2, job.id)]
    by = {r["scorer"]: r for r in rows}
    assert by["iteration-2"]["mi_lower_bound"] == pytest.approx(0.2)
    assert (by["base"]["mi_lower_bound_ci_low"], by["base"]["mi_lower_bound_ci_high"]) == pytest.approx((-0.11, 0.09))
    assert (by["base"]["n_queries"], by["base"]["n_constitutions"], by["base"]["temperature"]) == (16, 2, 0.0)
    assert by["base"]["row_accuracy_ci_high"] == pytest.approx(0.85) and by["base"]["loss"] == pytest.approx(0.70)

    outputs["by_model"]["base"] = mi_figures(0.05, "demo")
    transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, run_dir, ws))
    rows = transact(engine, lambda c: ingest.mi_rows(c), write=False)
    assert len(rows) == 2 and {r["scorer"]: r["mi_lower_bound"] for r in rows}["base"] == pytest.approx(0.05)


@pytest.mark.parametrize("outputs, match", [
    ({"label": "x"}, '"by_model"'),
    ({"label": "x", "by_model": {}}, '"by_model"'),
    ({"label": "x", "by_model": {"x": {"n_queries": 3}}}, "by_model.x.n_constitutions: expected a finite number"),
    ({"label": "x", "by_model": {"x": {**mi_figures(0.1, "m"), "mi_lower_bound": float("nan")}}},
     "by_model.x.mi_lower_bound"),
])
def test_bad_evaluate_outputs_are_refused(engine, tmp_path: Path, outputs: dict, match: str) -> None:  # noqa: ANN001
    ws = Workspace(tmp_path / "ws")
    job = claimed(engine, "evaluate", {}, run_dir="runs/e/evaluate-1")
    with pytest.raises(relay.OutputsError, match=match):
        transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, ws.resolve(job.run_dir), ws))
