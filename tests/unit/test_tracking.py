"""Mirroring to experiment trackers (tracking/): the real MLflow (a local store under
tmp_path) and the real W&B client (offline mode, its run files read back), fed from real
rows in a real SQLite database; the worker's hook with a real sleep stage; spec checks."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from db import ingest, queue
from db.engine import open_database, transact
from db.experiments import create_experiment
from db.models import Job
from db.testing import new_database_url
from db.workspace import Workspace
from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from tracking import install_problem, mirror_job
from tracking.records import flatten

MATRIX = [[-0.5, -2.0], [-1.5, -0.25]]
SPEC = {"name": "e1", "n_constitutions": 2, "iterations": 1, "training": {"lr": 5e-7, "beta": 0.0},
        "model": {"path": "demo"}}


@pytest.fixture
def engine(tmp_path: Path):  # noqa: ANN201
    e = open_database(new_database_url("sqlite", tmp_path, migrated=True))
    yield e
    e.dispose()


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    w = Workspace(tmp_path / "ws")
    w.create()
    return w


def _succeeded(conn, job_id: int, outputs: dict | None = None) -> None:  # noqa: ANN001
    jobs = Job.__table__
    conn.execute(update(jobs).where(jobs.c.id == job_id).values(status="succeeded", attempts=1, outputs=outputs))


def experiment(engine, ws: Workspace, tracking: dict) -> dict[str, int]:  # noqa: ANN001
    """An experiment with one iteration whose jobs succeeded: train-1 (3 steps, a matrix per
    step, a final checkpoint), evaluate-base, evaluate-1 (held-out MI) and judge-1 (vs base)."""

    def write(conn) -> dict[str, int]:  # noqa: ANN001
        exp = create_experiment(conn, "e1", {**SPEC, "tracking": tracking})
        root = "runs/exp-000001-e1"
        ids = {key: queue.enqueue(conn, kind, {"baseline": {"name": "base"}} if kind == "judge" else {}, name=key,
                                  experiment_id=exp, iteration=it, run_dir=f"{root}/{key}")
               for key, kind, it in [("train-1", "train", 1), ("evaluate-base", "evaluate", 0),
                                     ("evaluate-1", "evaluate", 1), ("judge-1", "judge", 1)]}
        ingest.upsert_metrics(conn, ids["train-1"], [{"step": s, "loss": 1.0 / s, "kl": 0.1 * s, "lr": 5e-7,
                                                      "matrix": MATRIX} for s in (1, 2, 3)])
        ingest.upsert_checkpoints(conn, ids["train-1"], [{"step": 3, "path": f"{root}/train-1/checkpoints/step-3",
                                                          "final": True}], experiment_id=exp, iteration=1)
        for key, label, mi in [("evaluate-base", "base", 0.1), ("evaluate-1", "iteration-1", 0.3)]:
            figures = {f: mi for f in ingest.MI_FIELDS}
            ingest.upsert_mi_results(conn, ids[key], label, {label: {**figures, "n_queries": 8,
                                                                     "n_constitutions": 2}},
                                     experiment_id=exp, iteration=0 if key == "evaluate-base" else 1)
        for key, job_id in ids.items():
            _succeeded(conn, job_id, {"win_rate": 0.75, "ci_low": 0.5, "ci_high": 0.9, "wins": 3, "losses": 1,
                                      "ties": 0} if key == "judge-1" else {})
        return ids

    ids = transact(engine, write)
    for key in ids:
        (ws.home / "runs/exp-000001-e1" / key).mkdir(parents=True, exist_ok=True)
    return ids


# --- MLflow ---------------------------------------------------------------------------------


def test_mlflow_gets_params_metrics_artifacts_and_nested_runs_once(engine, ws, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # a local folder store: no migrations, fast
    store = tmp_path / "mlruns"
    ids = experiment(engine, ws, {"mlflow": {"tracking_uri": str(store), "experiment": "sami-test"}})
    for job_id in ids.values():
        assert mirror_job(engine, job_id, ws) == []
    assert mirror_job(engine, ids["train-1"], ws) == []  # again (a restarted worker): nothing logged twice

    state = json.loads((ws.home / "runs/exp-000001-e1/tracking.json").read_text())["mlflow"]
    client = MlflowClient(tracking_uri=str(store))
    parent = client.get_run(state["parent_run_id"])
    child = client.get_run(state["iteration_runs"]["1"])
    runs = client.search_runs([state["experiment_id"]])
    assert len(runs) == 2  # one run for the experiment, one for its iteration
    assert parent.data.params["training.lr"] == "5e-07" and parent.data.params["n_constitutions"] == "2"
    assert parent.data.tags["sami.experiment_id"] == "1"
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert parent.info.status == child.info.status == "FINISHED"
    loss = client.get_metric_history(child.info.run_id, "loss")
    assert [(m.step, m.value) for m in loss] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    assert [m.step for m in client.get_metric_history(child.info.run_id, "kl")] == [1, 2, 3]
    matrices = json.loads(Path(client.download_artifacts(child.info.run_id, "matrices/train-1.json",
                                                         str(tmp_path))).read_text())
    assert matrices["by_step"]["2"] == MATRIX
    assert child.data.tags["checkpoint.final"] == str(ws.home / "runs/exp-000001-e1/train-1/checkpoints/step-3")
    # Per iteration in the experiment's run: MI of the base model (step 0) and iteration 1, the win rate.
    mi = client.get_metric_history(parent.info.run_id, "mi/mi_lower_bound")
    assert sorted((m.step, m.value) for m in mi) == [(0, pytest.approx(0.1)), (1, pytest.approx(0.3))]
    wr = client.get_metric_history(parent.info.run_id, "win_rate_vs_base/win_rate")
    assert [(m.step, m.value) for m in wr] == [(1, 0.75)]
    assert child.data.metrics["win_rate_vs_base/win_rate"] == 0.75


# --- W&B (offline) ----------------------------------------------------------------------------


def wandb_records(wandb_dir: Path) -> list[tuple[str, Any]]:
    """Every record of every offline run under ``wandb_dir``, as (run dir name, protobuf Record).

    The .wandb file: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks,
    each a 7-byte header (CRC32, length, type: 1 full, 2 first, 3 middle, 4 last) and data."""
    from wandb.proto import wandb_internal_pb2 as pb

    out = []
    for f in sorted(wandb_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data = f.read_bytes()
        assert data[:4] == b":W&B"
        pos, block, buf = 7, 32768, b""
        while pos + 7 <= len(data):
            left = block - pos % block
            if left < 7:  # a block's tail too short for a chunk header is padding
                pos += left
                continue
            _crc, length, kind = struct.unpack("<IHB", data[pos: pos + 7])
            if length == 0 and kind == 0:
                pos += left
                continue
            buf += data[pos + 7: pos + 7 + length]
            pos += 7 + length
            if kind in (1, 4):
                rec = pb.Record()
                rec.ParseFromString(buf)
                out.append((f.parent.name, rec))
                buf = b""
    return out


def _items(items) -> dict[str, Any]:  # noqa: ANN001
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def test_wandb_offline_gets_a_run_per_iteration_grouped_by_experiment(engine, ws, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    ids = experiment(engine, ws, {"wandb": {"project": "sami-test", "mode": "offline"}})
    # The last job to finish brings along every succeeded job of the experiment not mirrored yet.
    assert mirror_job(engine, ids["judge-1"], ws) == []
    state = json.loads((ws.home / "runs/exp-000001-e1/tracking.json").read_text())["wandb"]
    assert sorted(state["mirrored"]) == sorted(f"{i}:1" for i in ids.values())
    n_dirs = len(list((tmp_path / "wb/wandb").glob("offline-run-*")))
    assert mirror_job(engine, ids["train-1"], ws) == []  # mirrored already: no new run
    assert len(list((tmp_path / "wb/wandb").glob("offline-run-*"))) == n_dirs

    records = wandb_records(tmp_path / "wb")
    runs = {r.run.run_id: r.run for _, r in records if r.WhichOneof("record_type") == "run"}
    by_type = {run.job_type: run for run in runs.values()}
    assert set(by_type) == {"iteration", "experiment"}
    assert {run.run_group for run in runs.values()} == {"e1 (#1)"}
    config = _items(by_type["iteration"].config.update)
    assert config["training"]["lr"] == 5e-7 and config["n_constitutions"] == 2
    dirs = {rid: {d for d, r in records if r.WhichOneof("record_type") == "run" and r.run.run_id == rid}
            for rid in runs}
    history = [(d, _items(r.history.item)) for d, r in records if r.WhichOneof("record_type") == "history"]
    train = [h for d, h in history if d in dirs[by_type["iteration"].run_id] and "train/loss" in h]
    assert [(h["train/step"], h["train/loss"]) for h in train] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]
    series = [h for d, h in history if d in dirs[by_type["experiment"].run_id]]
    assert [(h["iteration"], h["win_rate_vs_base/win_rate"]) for h in series if "win_rate_vs_base/win_rate" in h] \
        == [(1, 0.75)]
    assert sorted((h["iteration"], h["mi/mi_lower_bound"]) for h in series if "mi/mi_lower_bound" in h) \
        == [(0, 0.1), (1, 0.3)]
    files = [p for d in dirs[by_type["iteration"].run_id]
             for p in (tmp_path / "wb/wandb" / d / "files").rglob("train-1.json")]
    assert {p.parent.name for p in files} == {"matrices", "checkpoints"}
    matrices = json.loads(next(p for p in files if p.parent.name == "matrices").read_text())
    assert matrices["by_step"]["3"] == MATRIX


# --- the worker: a tracker that fails leaves the job succeeded, with a warning in its log -------


def test_worker_mirrors_a_job_and_a_failing_tracker_only_warns(engine, ws, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from workers.daemon import Worker, WorkerConfig

    with socket.socket() as s:  # a port nothing listens on: the MLflow server is "down"
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracking = {"mlflow": {"tracking_uri": f"http://127.0.0.1:{port}"},
                "wandb": {"project": "sami-test", "mode": "offline"}}

    def write(conn) -> int:  # noqa: ANN001
        exp = create_experiment(conn, "e1", {**SPEC, "tracking": tracking})
        return queue.enqueue(conn, "sleep", {"seconds": 0.2, "metrics": 3, "checkpoints": 1}, name="sleep-1",
                             experiment_id=exp, iteration=1, run_dir="runs/exp-000001-e1/sleep-1")

    job_id = transact(engine, write)
    worker = Worker(engine, ws, WorkerConfig(exit_when_idle=True, poll_interval=0.1, tick_interval=0.2,
                                             lease_seconds=10.0))
    assert worker.run() == 0
    job = transact(engine, lambda c: queue.get_job(c, job_id), write=False)
    assert job.status == "succeeded"
    log = (ws.home / "runs/exp-000001-e1/sleep-1/stage.log").read_text()
    assert "tracking: mlflow: job sleep-1 was not mirrored" in log
    assert "tracking: wandb" not in log
    history = [_items(r.history.item) for _, r in wandb_records(tmp_path / "wb")
               if r.WhichOneof("record_type") == "history"]
    assert [h["sleep/step"] for h in history if "sleep/loss" in h] == [0, 1, 2]
    state = json.loads((ws.home / "runs/exp-000001-e1/tracking.json").read_text())
    assert state["wandb"]["mirrored"] == [f"{job_id}:1"] and "mirrored" not in state["mlflow"]


# --- spec checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(("tracking", "field", "says"), [
    ({"neptune": {}}, "tracking", "unknown tracker 'neptune'; the trackers are mlflow, wandb"),
    ({"wandb": {"project": "p", "mode": "online2"}}, "tracking.wandb.mode", "'online', 'offline' or 'disabled'"),
    ({"wandb": {"mode": "offline"}}, "tracking.wandb.project", "required key is missing"),
    ({"wandb": {"project": "p", "api_key": "abc"}}, "tracking.wandb", "set $WANDB_API_KEY in the environment"),
    ({"mlflow": {"tracking_uri": "http://me:pw@host:5000"}}, "tracking.mlflow.tracking_uri",
     "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ({"mlflow": {"tracking_uri": "ftp://host/x"}}, "tracking.mlflow.tracking_uri", "unknown scheme 'ftp'"),
    ({"mlflow": {"experimnt": "x"}}, "tracking.mlflow.experimnt", "unknown key"),
])
def test_bad_tracking_sections_name_the_field(tracking: dict, field: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_experiment({**SPEC, "tracking": tracking})
    assert [(f, says in reason) for f, reason in err.value.errors] == [(field, True)]


def test_a_tracker_that_is_not_installed_is_named_with_its_pip_extra() -> None:
    problem = install_problem("mlflow", module="sami_no_such_tracker_module")
    assert "pip install 'sami-workbench[mlflow]'" in problem and "tracking.mlflow" in problem
    assert install_problem("wandb", module="sami_no_such_package.sub") is not None
    assert install_problem("mlflow") is None and install_problem("wandb") is None  # the dev extra has both


def test_submit_makes_a_local_mlflow_store_absolute(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    from services.experiments import prepare_data

    monkeypatch.chdir(tmp_path)
    prepared = prepare_data({**SPEC, "tracking": {"mlflow": {"tracking_uri": "sqlite:///ml/mlflow.db",
                                                             "artifact_location": "ml/artifacts"},
                                                  "wandb": {"project": "p", "mode": "disabled"}}})
    t = prepared.exp.tracking
    assert t.mlflow.tracking_uri == f"sqlite:///{tmp_path}/ml/mlflow.db"
    assert t.mlflow.artifact_location == str(tmp_path / "ml/artifacts")
    assert t.requested() == ["mlflow"]


def test_params_are_the_spec_flattened_and_cut() -> None:
    flat = flatten({"training": {"lr": 5e-7, "lora": None}, "sampling": {"temperatures": [0.0, 0.7]},
                    "constitution": {"principles": [{"principle": "x" * 1000}]}})
    assert flat["training.lr"] == "5e-07" and flat["training.lora"] == "None"
    assert flat["sampling.temperatures"] == "[0.0, 0.7]"
    assert len(flat["constitution.principles"]) == 500 and flat["constitution.principles"].endswith("…")
