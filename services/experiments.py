"""Submitting an experiment (`sami submit`, the app's "Submit"): an experiment spec becomes
a constitution version, an experiments row and a DAG of stage jobs, all in one transaction.

The experiment is resolved once, before anything is written (:func:`prepare`):

1. the spec (a YAML or JSON file, or the app's form) is validated once
   (sami_core.experiment_spec.validate_experiment: ``field.path: reason`` pairs);
2. the constitution (a file, a shipped ``demo:...`` one, or inline principles) is read
   and checked for N variants, then put *inline* into the experiment, so that its jobs
   never read a file that may change after submission;
3. local paths that are relative to where `sami submit` runs (a ``data.path`` file,
   a ``model.path`` directory) are made absolute: stages run in the workspace;
4. a judge with ``provider: auto`` is resolved against this process's environment
   (sami_core.experiment_spec.resolve_auto_judge: an API judge when a key variable is set, else the
   local demo judge); the resolved spec records the provider and model chosen, never a
   key, and a note in the result's warnings says which judge and why;
5. the resolved experiment is expanded into its jobs (sami_core.pipeline.expand), which
   validates every stage spec; the plan is kept for a dry run.

Then, in one transaction (:func:`submit`): each job's device need is checked against
the registered workers (refused when no worker is big enough; only a warning when no
worker is registered yet, since workers may start later), the constitution is stored
as an immutable version (the same principles reuse a version), and the experiment row
and its jobs (dependencies, devices, attempts, run directories under
``runs/exp-<id>-<name>`` in the workspace, iteration and label) are inserted.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db.experiments import constitution_version, create_experiment, enqueue_plan, experiment_named, worker_capacity
from sami_core import constitutions
from sami_core.contract import EXPERIMENT_KINDS
from sami_core.data_paths import check_file_spec
from sami_core.errors import ConstitutionError, SpecError
from sami_core.pipeline import JobPlan, expand
from sami_core.experiment_spec import ExperimentSpec, resolve_experiment_judge, validate_experiment
from sami_core.spec import ConstitutionSpec, read_spec_file
from services.errors import ServiceError


class SubmitError(ServiceError):
    """The experiment cannot be submitted as it is; the message names the field, and
    ``errors`` holds (field path, reason) pairs as :class:`SpecError`'s does."""

    def __init__(self, message: str, errors: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.errors = errors or [("", message)]


@dataclass
class Prepared:
    """A validated experiment, its constitution resolved and inlined, ready to enqueue."""

    exp: ExperimentSpec
    source: str  # the spec file
    constitution_name: str
    principles: list[dict[str, str | None]]
    constitution_origin: str  # where the principles came from (a path, `demo:...`, inline)
    notes: list[str] = field(default_factory=list)  # what was decided for the submitter (the judge chosen)
    plans: list[JobPlan] = field(default_factory=list)  # the jobs, under a placeholder run root (exp-NEW)


@dataclass
class Submitted:
    experiment_id: int | None  # None for a dry run
    name: str
    runs_dir: str
    constitution: dict[str, Any]
    jobs: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"experiment_id": self.experiment_id, "name": self.name, "runs_dir": self.runs_dir,
                "constitution": self.constitution, "jobs": self.jobs, "warnings": self.warnings,
                "dry_run": self.dry_run}


def _field_error(source: str, path: str, reason: str) -> SpecError:
    return SpecError(errors=[(path, reason)], source=source)


def prepare(spec_path: str | Path, *, name: str | None = None) -> Prepared:
    """Read, validate and resolve an experiment spec file (raises SpecError)."""
    return prepare_data(read_spec_file(spec_path), source=str(spec_path), name=name)


def prepare_data(data: Any, *, source: str = "<spec>", name: str | None = None,
                 env: Mapping[str, str] | None = None) -> Prepared:
    """Validate and resolve an experiment spec already parsed (a dict, e.g. from the
    app's form); ``source`` names it in error messages (raises SpecError). ``env`` (default:
    this process's environment) decides what a judge ``provider: auto`` becomes."""
    env = os.environ if env is None else env
    if name is not None and isinstance(data, dict):
        data = {**data, "name": name}
    exp = validate_experiment(data, source=source)

    c_spec = exp.constitution
    where = "constitution.path" if c_spec.path is not None else "constitution.principles"
    try:
        constitution = constitutions.from_spec(c_spec).validate(exp.n_constitutions)
    except (ConstitutionError, SpecError) as err:
        raise _field_error(source, where, str(err)) from None
    if c_spec.name:
        c_name = c_spec.name
    elif c_spec.path is not None:
        c_name = c_spec.path if c_spec.path.startswith("demo:") else (constitution.name or Path(c_spec.path).stem)
    else:
        c_name = exp.name
    principles = [{"principle": p.principle, "antithesis": p.antithesis} for p in constitution.principles]
    origin = c_spec.path if c_spec.path is not None else "inline"
    if c_spec.path is not None and not c_spec.path.startswith("demo:"):
        origin = str(Path(c_spec.path).resolve())

    update: dict[str, Any] = {"constitution": ConstitutionSpec.model_validate({"name": c_name, "principles": principles})}
    if exp.data.source == "file" and exp.data.path:
        p = Path(exp.data.path).expanduser()
        splits = [exp.data.split] + ([exp.data.eval_split] if exp.data.eval_split else [])
        for split in splits if "{split}" in exp.data.path else [None]:
            f = Path(str(p).replace("{split}", split)) if split else p
            if not f.is_file():
                which = f" (split {split!r})" if split else ""
                raise _field_error(source, "data.path", f"file {str(f) if split else exp.data.path!r}{which} "
                                   "does not exist")
        if bad := check_file_spec(exp.data, splits):  # a field, id field or placeholder the file lacks
            raise _field_error(source, *bad)
        update["data"] = exp.data.model_copy(update={"path": str(p.resolve())})
    update["model"] = _absolute_model(exp.model, source, "model.path")
    notes = []
    if exp.judge is not None:
        exp, note = resolve_experiment_judge(exp, env)
        notes += [note] if note else []
        baselines = [b if isinstance(b, str) else b.model_copy(
                         update={"model": _absolute_model(b.model, source, f"judge.baselines.{i}.model")})
                     for i, b in enumerate(exp.judge.baselines)]
        update["judge"] = exp.judge.model_copy(update={"baselines": baselines})
        llm = exp.judge.judge
        if llm.provider in ("openai", "azure") and llm.api_key_env and not env.get(llm.api_key_env):
            notes.append(f"judge: ${llm.api_key_env} is not set here; the workers that run the judge jobs need it "
                         "in their environment")
    # Every value in `update` is already validated (built by a spec model, or a path
    # string made absolute): the resolved experiment is not validated a second time.
    exp = exp.model_copy(update=update)
    plans = expand(exp, PREVIEW_ROOT_PREFIX + slug(exp.name))  # every stage spec validates (raises SpecError)
    return Prepared(exp, source, c_name, principles, origin, notes, plans)


# A model path written as a local one (not a hub id such as org/name).
_LOCAL_PREFIXES = ("/", "./", "../", "~")


def _absolute_model(model: Any, source: str, field: str) -> Any:
    """A model spec whose relative local directory (relative to where `sami submit` runs)
    is made absolute: stages run in the workspace. Hub ids and `demo` stay as they are;
    a path written as a local one (``/``, ``./``, ``../``, ``~``) must exist here (workers
    on other hosts see it at the same path on a shared filesystem)."""
    p = Path(model.path).expanduser()
    if model.path.startswith(_LOCAL_PREFIXES) and not p.is_dir():
        raise _field_error(source, field, f"local directory {model.path!r} does not exist on this machine "
                                          "(a Hugging Face id looks like org/name)")
    if model.path != "demo" and not p.is_absolute() and p.is_dir():
        return model.model_copy(update={"path": str(p.resolve())})
    return model


def slug(name: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s[:40].rstrip("-") or "experiment"


# Run directories shown before the experiment has an id (a dry run, the app's preview).
PREVIEW_ROOT_PREFIX = "runs/exp-NEW-"


def runs_root(experiment_id: int, name: str) -> str:
    """An experiment's run directories, relative to the workspace."""
    return f"runs/exp-{experiment_id:06d}-{slug(name)}"


def check_devices(plans: list[JobPlan], capacity: list[tuple[int, list[str] | None]]) -> list[str]:
    """Refuse (SubmitError naming ``devices.<kind>``) a job that needs more GPUs than any
    registered worker that runs its kind has; return warnings for what cannot be checked."""
    needs = {k: max(p.devices for p in plans if p.kind == k) for k in EXPERIMENT_KINDS
             if any(p.kind == k for p in plans)}  # only the kinds this experiment runs
    gpu_needs = {k: n for k, n in needs.items() if n > 0}
    if not capacity:
        what = ", ".join(f"{k} {n}" for k, n in gpu_needs.items())
        return ["no worker is registered yet, so device needs are not checked"
                + (f" (GPUs per job: {what})" if what else "")
                + "; the jobs wait for a worker (`sami worker`) that can run them"]
    warnings = []
    for kind, need in needs.items():
        eligible = [n for n, kinds in capacity if kinds is None or kind in kinds]
        if not eligible:
            warnings.append(f"devices.{kind}: no registered worker runs {kind} jobs (see `sami workers`)")
            continue
        largest = max(eligible)
        if need > largest:
            restricted = len(eligible) < len(capacity)
            reason = (f"{need} GPU{'s' if need != 1 else ''} needed but the largest registered worker"
                      f"{f' that runs {kind} jobs' if restricted else ''} has {largest}; lower devices.{kind} "
                      "or start a worker with more GPUs (`sami worker --devices ...`)")
            raise SubmitError(f"devices.{kind}: {reason}", errors=[(f"devices.{kind}", reason)])
    return warnings


def _job_rows(plans: list[JobPlan], ids: dict[str, int] | None) -> list[dict[str, Any]]:
    return [{"id": None if ids is None else ids[p.key], "key": p.key, "kind": p.kind, "depends_on": p.depends_on,
             "devices": p.devices, "iteration": p.iteration, "label": p.label, "run_dir": p.run_dir}
            for p in plans]


def dry_run(conn: Connection, prepared: Prepared) -> Submitted:
    """What :func:`submit` would enqueue (nothing is written)."""
    exp, plans = prepared.exp, prepared.plans
    warnings = prepared.notes + check_devices(plans, worker_capacity(conn))
    return Submitted(None, exp.name, str(Path(plans[0].run_dir).parent),
                     {"name": prepared.constitution_name, "origin": prepared.constitution_origin},
                     _job_rows(plans, None), warnings, dry_run=True)


def already_submitted(conn: Connection, prepared: Prepared) -> int | None:
    """The id of an experiment with the prepared one's name, if the workspace has one
    (`sami submit --if-absent`, which `make run` uses to submit the demo once)."""
    return experiment_named(conn, prepared.exp.name)


def submit(conn: Connection, prepared: Prepared) -> Submitted:
    """Enqueue a prepared experiment (the caller's transaction makes it all or nothing)."""
    exp = prepared.exp
    warnings = prepared.notes + check_devices(prepared.plans, worker_capacity(conn))
    c_id, c_version, created = constitution_version(
        conn, prepared.constitution_name, prepared.principles, description=f"from {prepared.constitution_origin}")
    anti_id = c_id
    if any(p.antithesis for p in prepared.plans):  # responses sampled under the antithesis: a version of their own
        anti_id, _, _ = constitution_version(
            conn, f"{prepared.constitution_name} (antithesis)"[:200],
            [{"principle": p["antithesis"], "antithesis": p["principle"]} if p["antithesis"] else p
             for p in prepared.principles],
            description=f"the antithesis of {prepared.constitution_name} v{c_version}")
    judge_notes = [n for n in prepared.notes if n.startswith("judge: provider auto")]
    exp_id = create_experiment(conn, exp.name, exp.model_dump(mode="json"),
                               description="; ".join([f"submitted from {prepared.source}"] + judge_notes))
    root = runs_root(exp_id, exp.name)
    plans = expand(exp, root)  # the same jobs as prepared.plans, under the experiment's own run root
    ids = enqueue_plan(conn, [
        {"key": p.key, "kind": p.kind, "spec": p.spec, "depends_on": p.depends_on, "name": p.key,
         "experiment_id": exp_id, "constitution_id": anti_id if p.antithesis else c_id, "devices_required": p.devices,
         "max_attempts": exp.max_attempts, "run_dir": p.run_dir, "iteration": p.iteration, "label": p.label}
        for p in plans
    ])
    constitution = {"id": c_id, "name": prepared.constitution_name, "version": c_version, "created": created,
                    "origin": prepared.constitution_origin}
    return Submitted(exp_id, exp.name, root, constitution, _job_rows(plans, ids), warnings)
