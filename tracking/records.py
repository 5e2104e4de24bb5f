"""What a succeeded job contributes to the trackers, read from the database: a
:class:`JobRecord`, the same for every tracker (tracking.backends writes it)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Row

from db.ingest import mi_rows
from db.models import Checkpoint, Experiment, Metric
from db.workspace import Workspace

MAX_PARAM_CHARS = 500  # a param is a setting; a longer value (inline principles) is cut, the spec stays in the DB
# held-out MI figures mirrored per iteration (of db.ingest.MI_FIELDS)
MI_FIGURES = ("mi_lower_bound", "mi_lower_bound_ci_low", "mi_lower_bound_ci_high", "row_accuracy", "col_accuracy",
              "loss")
JUDGE_FIGURES = ("win_rate", "ci_low", "ci_high", "lc_win_rate", "wins", "losses", "ties")


@dataclass
class JobRecord:
    """One succeeded job, as the trackers see it.

    ``iteration`` is None for jobs of the experiment as a whole (sample-base, evaluate-base,
    a model baseline): they go to the experiment's run. ``series`` are per-step metrics
    (key, step, value) of the job; ``figures`` are per-iteration numbers (key -> value),
    logged at step = iteration in the iteration's run and in the experiment's run (0 = the
    base model); ``artifacts`` are JSON files (name -> content); ``tags`` short strings."""

    experiment_id: int
    experiment_name: str
    job_id: int
    key: str  # the job's plan key, e.g. train-1
    kind: str
    iteration: int | None
    spec: dict  # the experiment's resolved spec, without its tracking section
    series: list[tuple[str, int, float]] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)
    artifacts: dict[str, Any] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        """Nothing to mirror (a sample job, say): no tracker run is opened for it."""
        return not (self.series or self.figures or self.artifacts or self.tags)

    @property
    def figure_step(self) -> int:
        return self.iteration or 0

    def params(self) -> dict[str, str]:
        """The spec flattened to dotted keys (``training.lr``), values as short strings."""
        return flatten(self.spec)


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """A nested spec as {dotted key: value text}; lists as JSON, values cut at MAX_PARAM_CHARS."""
    out: dict[str, str] = {}
    if isinstance(data, dict) and data:
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    text = json.dumps(data, ensure_ascii=False) if isinstance(data, (list, dict)) else str(data)
    if len(text) > MAX_PARAM_CHARS:
        text = text[: MAX_PARAM_CHARS - 1] + "…"
    return {prefix: text}


def experiment_tracking(conn: Connection, experiment_id: int) -> tuple[str, dict, dict] | None:
    """(name, spec without tracking, tracking section) of an experiment that mirrors to a
    tracker, else None."""
    row = conn.execute(select(Experiment.name, Experiment.spec).where(Experiment.id == experiment_id)).first()
    if row is None or not isinstance(row.spec, dict) or not row.spec.get("tracking"):
        return None
    spec = {k: v for k, v in row.spec.items() if k != "tracking"}
    return row.name, spec, row.spec["tracking"]


def job_record(conn: Connection, job: Row, name: str, spec: dict, workspace: Workspace) -> JobRecord:
    """The record of succeeded job ``job`` of experiment ``name`` (its resolved ``spec``)."""
    iteration = job.iteration if job.iteration else None
    key = job.name or f"job-{job.id}"
    rec = JobRecord(job.experiment_id, name, job.id, key, job.kind, iteration, spec)
    prefix = "" if job.kind == "train" else f"{job.kind}/"
    matrices: dict[int, Any] = {}
    m = Metric.__table__
    for r in conn.execute(select(m.c.name, m.c.step, m.c.value, m.c.value_json).where(m.c.job_id == job.id)
                          .order_by(m.c.step, m.c.name)):
        if r.value is not None:
            rec.series.append((prefix + r.name, int(r.step), float(r.value)))
        elif r.name == "matrix" and isinstance(r.value_json, list):
            matrices[int(r.step)] = r.value_json
    if matrices:  # L[i, j] = log pi(y_j | x, c_i), mean over the step's queries, as the stage logged it
        rec.artifacts[f"matrices/{key}.json"] = {"job": key, "name": "matrix", "by_step": matrices}
    c = Checkpoint.__table__
    ckpts = [{"step": r.step, "path": str(workspace.resolve(r.path)), "final": bool(r.final)}
             for r in conn.execute(select(c.c.step, c.c.path, c.c.final).where(c.c.job_id == job.id)
                                   .order_by(c.c.step))]
    if ckpts:
        rec.artifacts[f"checkpoints/{key}.json"] = ckpts
        final = [x for x in ckpts if x["final"]] or ckpts[-1:]
        rec.tags["checkpoint.final" if iteration is not None else f"checkpoint.{key}"] = final[0]["path"]
    outputs = job.outputs or {}
    if job.kind == "evaluate":
        for row in mi_rows(conn, experiment_id=job.experiment_id):
            if row["job_id"] != job.id:
                continue
            # Self-scored figures are the MI of the iteration's model; another scorer's get its name.
            head = "mi" if row["scorer"] == row["label"] else f"mi_scored_by_{row['scorer']}"
            rec.figures.update({f"{head}/{f}": float(row[f]) for f in MI_FIGURES})
    elif job.kind == "judge":
        baseline = str(((job.spec or {}).get("baseline") or {}).get("name") or "baseline").split("#")[0]
        rec.figures.update({f"win_rate_vs_{baseline}/{f}": float(outputs[f]) for f in JUDGE_FIGURES
                            if isinstance(outputs.get(f), (int, float)) and not isinstance(outputs.get(f), bool)})
    elif job.kind == "generate":
        rec.figures.update({f"generate/{f}": float(outputs[f]) for f in ("n_kept", "n_dropped")
                            if isinstance(outputs.get(f), int)})
    return rec
