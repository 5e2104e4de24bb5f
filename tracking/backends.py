"""Writing a :class:`~tracking.records.JobRecord` to each tracker. The client library is
imported inside the function that needs it, only when a spec asks for that tracker.

Each writer gets the tracker's spec section, its part of ``tracking.json`` (``state``:
the run ids created so far, which it fills in) and ``save``, to call as soon as a run id is
new, so that a crash after a run was created never creates it twice.

- MLflow: experiment ``tracking.mlflow.experiment``; one parent run per SAMI experiment
  (params: the flattened spec; tag ``sami.experiment_id``); one run per iteration nested
  under it (tag ``mlflow.parentRunId``); per-step metrics with their step; per-iteration
  figures (held-out MI, win rates) at step = iteration in both; JSON artifacts.
- W&B: runs grouped by the experiment (``group``): one ``job_type=iteration`` run per
  iteration and one ``job_type=experiment`` run holding the figures per iteration
  (step metric ``iteration``); per-step metrics on a step metric of their own
  (``train/step``); config = the spec; artifacts are JSON files in the run's files.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tracking.records import JobRecord

# MLflow's HTTP client retries 7 times with a doubling backoff by default (minutes on an
# unreachable server); a worker waits at most about a minute per job before it warns and
# goes on. A value set in the environment wins.
MLFLOW_HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                        "MLFLOW_HTTP_REQUEST_TIMEOUT": "15"}
WANDB_INIT_TIMEOUT_S = 60.0


@contextmanager
def _env_defaults(defaults: Mapping[str, str]) -> Iterator[None]:
    """Set the variables of ``defaults`` that the environment does not set, for the block."""
    added = [k for k in defaults if k not in os.environ]
    os.environ.update({k: defaults[k] for k in added})
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i: i + n]


def write_mlflow(section: Mapping[str, Any], state: dict, save: Callable[[], None], rec: JobRecord) -> None:
    with _env_defaults(MLFLOW_HTTP_DEFAULTS):
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=section.get("tracking_uri"))
        name = section.get("experiment") or "sami"
        if state.get("experiment_id") is None or state.get("experiment") != name:
            found = client.get_experiment_by_name(name)
            if found is None:
                try:
                    state["experiment_id"] = client.create_experiment(
                        name, artifact_location=section.get("artifact_location"))
                except Exception:  # noqa: BLE001 - another experiment's worker created it just now
                    found = client.get_experiment_by_name(name)
                    if found is None:
                        raise
            if found is not None:
                state["experiment_id"] = found.experiment_id
            state["experiment"] = name
            save()
        exp_id = state["experiment_id"]
        if state.get("parent_run_id") is None:
            run = client.create_run(exp_id, run_name=rec.experiment_name, tags={
                "sami.experiment_id": str(rec.experiment_id), "sami.experiment": rec.experiment_name})
            state["parent_run_id"] = run.info.run_id
            save()
            params = [Param(k[:250], v) for k, v in rec.params().items()]
            for batch in _chunks(params, 100):
                client.log_batch(run.info.run_id, params=batch)
        parent = state["parent_run_id"]
        target = parent
        if rec.iteration is not None:
            children = state.setdefault("iteration_runs", {})
            if str(rec.iteration) not in children:
                run = client.create_run(exp_id, run_name=f"iteration-{rec.iteration}", tags={
                    "mlflow.parentRunId": parent, "sami.experiment_id": str(rec.experiment_id),
                    "sami.iteration": str(rec.iteration)})
                children[str(rec.iteration)] = run.info.run_id
                save()
                client.log_batch(run.info.run_id, params=[Param("iteration", str(rec.iteration))])
            target = children[str(rec.iteration)]
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, step, v in rec.series]
        figures = [Metric(k, v, now, rec.figure_step) for k, v in rec.figures.items()]
        for batch in _chunks(metrics + figures, 1000):
            client.log_batch(target, metrics=batch)
        if target != parent and figures:  # the experiment's run: one point per iteration
            client.log_batch(parent, metrics=figures)
        if rec.tags:
            client.log_batch(target, tags=[RunTag(k, v) for k, v in rec.tags.items()])
        for name, content in rec.artifacts.items():
            client.log_text(target, json.dumps(content, indent=1), name)
        # Shown as finished between jobs (MLflow takes later logging on a finished run).
        for run_id in dict.fromkeys([target, parent]):
            client.set_terminated(run_id, "FINISHED")


def write_wandb(section: Mapping[str, Any], state: dict, save: Callable[[], None], rec: JobRecord,
                default_dir: Path) -> None:
    import wandb

    def open_run(slot: str, name: str, job_type: str):  # noqa: ANN202 - a wandb Run
        ids = state.setdefault("run_ids", {})
        if slot not in ids:  # the id first, so a crash mid-init reopens the same run
            ids[slot] = secrets.token_hex(6)
            save()
        folder = Path(os.environ.get("WANDB_DIR") or default_dir)
        folder.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=section["project"], entity=section.get("entity"), mode=section.get("mode", "online"),
            group=f"{rec.experiment_name} (#{rec.experiment_id})", job_type=job_type, name=name, id=ids[slot],
            resume="allow", reinit="create_new", dir=str(folder), config=rec.spec, allow_val_change=True,
            settings=wandb.Settings(console="off", silent=True, disable_git=True, save_code=False,
                                    x_disable_stats=True, init_timeout=WANDB_INIT_TIMEOUT_S))

    experiment_name = f"{rec.experiment_name} (#{rec.experiment_id})"
    in_iteration = rec.iteration is not None
    run = open_run(f"iteration-{rec.iteration}" if in_iteration else "experiment",
                   f"{experiment_name} iteration-{rec.iteration}" if in_iteration else experiment_name,
                   "iteration" if in_iteration else "experiment")
    try:
        by_step: dict[tuple[str, int], dict[str, float]] = {}
        for key, step, value in rec.series:
            group = key.split("/", 1)[0] if "/" in key else rec.kind
            name = key if "/" in key else f"{rec.kind}/{key}"
            by_step.setdefault((group, step), {})[name] = value
        for group in {g for g, _ in by_step}:
            run.define_metric(f"{group}/step")
            run.define_metric(f"{group}/*", step_metric=f"{group}/step")
        for (group, step), values in sorted(by_step.items(), key=lambda kv: kv[0][1]):
            run.log({f"{group}/step": step, **values})
        run.summary.update({**rec.figures, **rec.tags, **({"iteration": rec.iteration} if in_iteration else {})})
        for name, content in rec.artifacts.items():
            path = Path(run.dir) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=1))
            run.save(str(path), base_path=run.dir, policy="now")
        if not in_iteration:
            _log_figures(run, rec)
    finally:
        run.finish()
    if in_iteration and rec.figures:
        run = open_run("experiment", experiment_name, "experiment")
        try:
            _log_figures(run, rec)
        finally:
            run.finish()


def _log_figures(run: Any, rec: JobRecord) -> None:
    """The experiment's series in its W&B run: one point per iteration (0 = the base model)."""
    if not rec.figures:
        return
    run.define_metric("iteration")
    for key in rec.figures:
        run.define_metric(key, step_metric="iteration")
    run.log({"iteration": rec.figure_step, **rec.figures})
