"""Submitting an experiment (`sami submit`, the app's "Submit"): an experiment spec becomes
a constitution version, an experiments row and a DAG of stage jobs, all in one transaction.

The experiment is resolved once, before anything is written (:func:`prepare`):

1. the spec (a YAML or JSON file, or the app's form) is validated once
   (sami_core.experiment_spec.validate_experiment: ``field.path: reason`` pairs);
2. the constitution (a file, a shipped ``demo:...`` one, or inline principles) is read
   and checked for N variants, then put *inline* into the experiment, so that its jobs
   never read a file that may change after submission; a set (``constitution.paths``: a
   list of them, or a folder) is read the same way, every member checked, and inlined as
   ``constitution.members`` (name and principles each, with the draw's ``seed``);
3. local paths that are relative to where `sami submit` runs (a ``data.path`` file,
   a ``model.path`` directory) are made absolute: stages run in the workspace; a local
   data file is checked for its fields, while a hub dataset (``source: hf``) is neither
   read nor downloaded (a note says so; a dry run works offline): the stages read it;
4. a judge with ``provider: auto`` is resolved against this process's environment
   (sami_core.experiment_spec.resolve_auto_judge: an API judge when a key variable is set, else the
   local demo judge); the resolved spec records the provider and model chosen, never a
   key, and a note in the result's warnings says which judge and why;
5. the resolved experiment is expanded into its jobs (sami_core.pipeline.expand), which
   validates every stage spec; the plan is kept for a dry run.

Then, in one transaction (:func:`submit`): each job's device need is checked against
the registered workers (refused when no worker is big enough; only a warning when no
worker is registered yet, since workers may start later), the constitution is stored
as an immutable version (the same principles reuse a version; a set: each member under
its own name, and every job linked to all of them in ``job_constitutions``, its
``constitution_id`` left null), and the experiment row
and its jobs (dependencies, devices, attempts, run directories under
``runs/exp-<id>-<name>`` in the workspace, iteration and label) are inserted.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db.experiments import (constitution_version, create_experiment, enqueue_plan, experiment_named,
                            link_constitution_set, worker_capacity)
from sami_core import constitutions
from sami_core.contract import EXPERIMENT_KINDS
from sami_core.data_paths import check_file_spec
from sami_core.data_files import FILE_TYPES, read_records
from sami_core.errors import ConstitutionError, DataError, SpecError
from sami_core.pipeline import JobPlan, expand
from sami_core.prompt_budget import budget_problem
from sami_core.experiment_spec import ExperimentSpec, TrackingSpec, resolve_experiment_judge, validate_experiment
from sami_core.spec import ConstitutionSpec, DataSpec, read_spec_file
from services.errors import ServiceError
from tracking import install_problem


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
    # A constitution set: {name, principles, origin} per member (principles above is then empty).
    members: list[dict[str, Any]] = field(default_factory=list)
    sweep_point: dict[str, Any] | None = None  # a sweep's point: its values {dotted path: value}


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

    # Every problem below is collected, so that one submit names all of them (each a
    # (field, reason) pair); a check that needs an earlier part (the prompt budget needs the
    # constitution and the model) runs only when that part is sound.
    errors: list[tuple[str, str]] = []
    c_spec = exp.constitution
    members: list[dict[str, Any]] = []
    principles: list[dict[str, str | None]] = []
    c_name, origin, inline = exp.name, "inline", None
    where = "constitution.paths" if c_spec.is_set else (
        "constitution.path" if c_spec.path is not None else "constitution.principles")
    if c_spec.is_set:
        try:
            c_name, origin, members, inline = _resolve_set(c_spec, exp.n_constitutions, source)
        except SpecError as err:
            errors += err.errors
    else:
        try:
            constitution = constitutions.from_spec(c_spec).validate(exp.n_constitutions)
        except (ConstitutionError, SpecError) as err:
            errors.append((where, str(err)))
        else:
            if c_spec.name:
                c_name = c_spec.name
            elif c_spec.path is not None:
                c_name = c_spec.path if c_spec.path.startswith("demo:") else (
                    constitution.name or Path(c_spec.path).stem)
            principles = [{"principle": p.principle, "antithesis": p.antithesis} for p in constitution.principles]
            origin = c_spec.path if c_spec.path is not None else "inline"
            if c_spec.path is not None and not c_spec.path.startswith("demo:"):
                origin = str(Path(c_spec.path).resolve())
            inline = {"name": c_name, "principles": principles}
    update: dict[str, Any] = {}
    if inline is not None:
        try:
            _check_principle_sizes(members or [{"principles": principles}], source, where)
        except SpecError as err:
            errors += err.errors
        update["constitution"] = ConstitutionSpec.model_validate(inline)
    if exp.data.source == "demo" and (bad := _window_problem(exp.data, _demo_rows(), "the demo set")):
        errors.append(bad)
    if exp.data.source == "file" and exp.data.path:
        if bad := _check_data_file(exp.data):
            errors.append(bad)
        else:
            update["data"] = exp.data.model_copy(update={"path": str(Path(exp.data.path).expanduser().resolve())})
    try:
        update["model"] = _absolute_model(exp.model, source, "model.path")
    except SpecError as err:
        errors += err.errors
    if not errors and (bad := _check_prompt_budget(exp, update["model"].path, members or [{"principles": principles}])):
        errors.append(bad)
    if exp.tracking is not None:
        try:
            update["tracking"] = _resolved_tracking(exp.tracking, source)
        except SpecError as err:
            errors += err.errors
    notes = [hub_data_note(exp.data)] if exp.data.source == "hf" else []
    if exp.judge is not None:
        exp, note = resolve_experiment_judge(exp, env)
        notes += [note] if note else []
        baselines = []
        for i, b in enumerate(exp.judge.baselines):
            try:
                baselines.append(b if isinstance(b, str) else b.model_copy(
                    update={"model": _absolute_model(b.model, source, f"judge.baselines.{i}.model")}))
            except SpecError as err:
                errors += err.errors
        update["judge"] = exp.judge.model_copy(update={"baselines": baselines})
        llm = exp.judge.judge
        if llm.provider in ("openai", "azure") and llm.api_key_env and not env.get(llm.api_key_env):
            notes.append(f"judge: ${llm.api_key_env} is not set here; the workers that run the judge jobs need it "
                         "in their environment")
    if errors:
        raise SpecError(errors=errors, source=source)
    # Every value in `update` is already validated (built by a spec model, or a path
    # string made absolute): the resolved experiment is not validated a second time.
    exp = exp.model_copy(update=update)
    plans = expand(exp, PREVIEW_ROOT_PREFIX + slug(exp.name))  # every stage spec validates (raises SpecError)
    return Prepared(exp, source, c_name, principles, origin, notes, plans, members)


def _check_prompt_budget(exp: Any, model_path: str, members: list[dict[str, Any]]) -> tuple[str, str] | None:
    """(field, reason) when, for a local model folder, a constitution variant's prompt
    leaves no room for a query within the stages' budget (see sami_core.prompt_budget)."""
    if model_path == "demo" or not Path(model_path).is_dir():
        return None  # a hub id (the stage reads its tokenizer) or the demo model (known to fit)
    texts: list[str] = []
    for m in members:
        c = constitutions.Constitution(tuple(constitutions.Principle(p["principle"], p.get("antithesis"))
                                             for p in m["principles"]))
        # every principle as written, then every one flipped: the variants' extremes
        texts += [v.text for v in c.sample_variants(min(exp.n_constitutions, 2), random.Random(0), shuffle=False)]
    new_tokens = max(exp.generation.max_new_tokens, exp.sampling.max_new_tokens,
                     exp.evaluation.max_new_tokens if exp.evaluation is not None else 0)
    return budget_problem(model_path, task=exp.task, prompt_format=exp.model.prompt_format, prompts=exp.prompts,
                          max_prompt_tokens=exp.max_prompt_tokens, max_new_tokens=new_tokens,
                          constitution_texts=dict.fromkeys(texts))


def _resolved_tracking(t: TrackingSpec, source: str) -> TrackingSpec:
    """The tracking section checked here: each tracker's client importable (else refused
    with the pip extra to install), a local MLflow store or artifact folder made absolute
    (relative to where `sami submit` runs: workers run elsewhere)."""
    for tracker in t.requested():
        if problem := install_problem(tracker):
            raise _field_error(source, f"tracking.{tracker}", problem)
    if t.mlflow is None:
        return t
    update = {}
    uri = t.mlflow.tracking_uri
    if uri is not None and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        update["tracking_uri"] = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).expanduser().resolve())
    elif uri is not None and "://" not in uri:
        update["tracking_uri"] = str(Path(uri).expanduser().resolve())
    loc = t.mlflow.artifact_location
    if loc is not None and "://" not in loc:
        update["artifact_location"] = str(Path(loc).expanduser().resolve())
    return t.model_copy(update={"mlflow": t.mlflow.model_copy(update=update)}) if update else t


MAX_PRINCIPLE_CHARS = 2000  # a principle is a sentence or two; its prompt must fit the model's context


def _check_data_file(data: DataSpec) -> tuple[str, str] | None:
    """(field, reason) when a local data file (each split's, for a ``{split}`` path) is
    missing, lacks a field the spec reads, or holds too few queries for ``eval_size``."""
    p = Path(data.path).expanduser()
    splits = [data.split] + ([data.eval_split] if data.eval_split else [])
    for split in splits if "{split}" in data.path else [None]:
        f = Path(str(p).replace("{split}", split)) if split else p
        if not f.is_file():
            which = f" (split {split!r})" if split else ""
            return "data.path", f"file {str(f) if split else data.path!r}{which} does not exist"
    return check_file_spec(data, splits) or _check_data_size(data, p)


def _check_principle_sizes(members: list[dict[str, Any]], source: str, where: str) -> None:
    """Refuse a principle or antithesis longer than MAX_PRINCIPLE_CHARS (SpecError naming ``where``)."""
    for m in members:
        for i, p in enumerate(m["principles"]):
            for key in ("principle", "antithesis"):
                text = p.get(key) or ""
                if len(text) > MAX_PRINCIPLE_CHARS:
                    name = f" of {m['name']!r}" if m.get("name") else ""
                    raise _field_error(source, where, f"{key} {i + 1}{name} has {len(text):,} characters; at most "
                                                      f"{MAX_PRINCIPLE_CHARS:,} (a principle is a sentence or two)")


_COUNT_MAX_BYTES = 200 * 2**20  # larger local data files are not read at submit


def _check_data_size(data: Any, path: Path) -> tuple[str, str] | None:
    """(field, reason) when a local data file has no rows, or too few for ``eval_size`` to leave
    training queries (checked for one file without a separate eval split)."""
    if ("{split}" in data.path or path.suffix.lower().lstrip(".") not in FILE_TYPES or not path.is_file()
            or path.stat().st_size > _COUNT_MAX_BYTES):
        return None  # a Parquet file, or a big one: the stage reads it
    try:
        n_rows = len(read_records(path.name, path.read_bytes()))
    except DataError as err:
        return "data.path", str(err) or f"{path.name}: cannot be read"
    return _window_problem(data, n_rows, path.name)


def _window_problem(data: Any, n_rows: int, what: str) -> tuple[str, str] | None:
    """(field, reason) when ``n_rows`` rows leave no query after ``start``, or none to train
    on once ``eval_size`` are held out (without a separate eval split)."""
    window = max(0, n_rows - data.start)
    if data.max_queries is not None:
        window = min(window, data.max_queries)
    if window == 0:
        return "data.start", f"{what} has {n_rows} rows, none left after start={data.start}"
    if data.eval_split is None and data.eval_size >= window:
        return "data.eval_size", (f"{data.eval_size} held out but {what} gives at most {window} queries, "
                                  f"so none are left to train on; lower data.eval_size to at most {window - 1}")
    return None


def _demo_rows() -> int:
    """The shipped posts (data.source: demo)."""
    from sami_core.spec import DATA_DIR

    with (DATA_DIR / "posts.jsonl").open(encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def _resolve_set(c_spec: ConstitutionSpec, n: int, source: str) -> tuple[str, str, list[dict[str, Any]], dict]:
    """A constitution set read and checked: (its name, where it came from, its members as
    {name, principles, origin}, the inline ``constitution`` value the jobs get)."""
    try:
        cset = constitutions.set_from_spec(c_spec).validate(n)
    except SpecError as err:
        raise SpecError(errors=err.errors, source=source) from None
    except ConstitutionError as err:
        raise _field_error(source, "constitution.paths" if c_spec.paths is not None else "constitution.members",
                           str(err)) from None
    members = []
    for c in cset.members:
        ref = c.meta.get("origin", "inline")
        origin = ref if ref.startswith("demo:") or ref == "inline" else str(Path(ref).expanduser().resolve())
        members.append({"name": c.name[:200], "origin": origin,
                        "principles": [{"principle": p.principle, "antithesis": p.antithesis} for p in c.principles]})
    if isinstance(c_spec.paths, str):
        folder = c_spec.paths if c_spec.paths.startswith("demo:") else str(Path(c_spec.paths).expanduser().resolve())
        c_name, origin = c_spec.name or folder, folder
    else:
        c_name = c_spec.name or f"set of {len(members)}"
        origin = "inline" if c_spec.members is not None else ", ".join(m["origin"] for m in members)
    inline = {"name": c_name, "seed": c_spec.seed,
              "members": [{"name": m["name"], "principles": m["principles"]} for m in members]}
    return c_name, origin, members, inline


def _antithesis_principles(principles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The antithesis constitution's principles: each principle and its antithesis swapped."""
    return [{"principle": p["antithesis"], "antithesis": p["principle"]} if p["antithesis"] else p
            for p in principles]


def hub_data_note(data: DataSpec) -> str:
    """What submitting does with a hub dataset: nothing. It is neither read nor downloaded
    here (a dry run works offline); its fields are checked when a stage opens it."""
    which = data.dataset + (f" (config {data.config})" if data.config else "")
    return (f"data: hub dataset {which} is not read at submit (nothing is downloaded); the stages that "
            "need it (generate, sample, evaluate) read it on the node that runs them, from its Hugging Face "
            "cache (downloaded there on first use unless HF_HUB_OFFLINE=1), and check data.field there")


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
    if model.path != "demo" and p.is_dir() and not (p / "config.json").is_file():
        raise _field_error(source, field, f"{model.path!r} is a folder but not a model (no config.json in it); "
                                          "name a Hugging Face model folder or hub id")
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
    constitution = {"name": prepared.constitution_name, "origin": prepared.constitution_origin}
    if prepared.members:
        constitution["members"] = [{"name": m["name"], "origin": m["origin"]} for m in prepared.members]
    return Submitted(None, exp.name, str(Path(plans[0].run_dir).parent), constitution,
                     _job_rows(plans, None), warnings, dry_run=True)


def already_submitted(conn: Connection, prepared: Prepared) -> int | None:
    """The id of an experiment with the prepared one's name, if the workspace has one
    (`sami submit --if-absent`, which `make run` uses to submit the demo once)."""
    return experiment_named(conn, prepared.exp.name)


def submit(conn: Connection, prepared: Prepared, *, sweep_id: int | None = None) -> Submitted:
    """Enqueue a prepared experiment (the caller's transaction makes it all or nothing);
    ``sweep_id``: the sweep it is a point of (services.sweeps)."""
    exp = prepared.exp
    warnings = prepared.notes + check_devices(prepared.plans, worker_capacity(conn))
    if prepared.members:
        return _submit_set(conn, prepared, warnings, sweep_id)
    c_id, c_version, created = constitution_version(
        conn, prepared.constitution_name, prepared.principles, description=f"from {prepared.constitution_origin}")
    anti_id = c_id
    if any(p.antithesis for p in prepared.plans):  # responses sampled under the antithesis: a version of their own
        anti_id, _, _ = constitution_version(
            conn, f"{prepared.constitution_name} (antithesis)"[:200], _antithesis_principles(prepared.principles),
            description=f"the antithesis of {prepared.constitution_name} v{c_version}")
    exp_id, root, plans, ids = _enqueue(conn, prepared, lambda p: anti_id if p.antithesis else c_id, sweep_id)
    constitution = {"id": c_id, "name": prepared.constitution_name, "version": c_version, "created": created,
                    "origin": prepared.constitution_origin}
    return Submitted(exp_id, exp.name, root, constitution, _job_rows(plans, ids), warnings)


def _enqueue(conn: Connection, prepared: Prepared, constitution_id,
             sweep_id: int | None = None) -> tuple[int, str, list[JobPlan], dict[str, int]]:
    """The experiment row and its jobs (``constitution_id(plan)``: the version a job points at)."""
    exp = prepared.exp
    judge_notes = [n for n in prepared.notes if n.startswith("judge: provider auto")]
    exp_id = create_experiment(conn, exp.name, exp.model_dump(mode="json"),
                               description="; ".join([f"submitted from {prepared.source}"] + judge_notes),
                               sweep_id=sweep_id, sweep_point=prepared.sweep_point if sweep_id else None)
    root = runs_root(exp_id, exp.name)
    plans = expand(exp, root)  # the same jobs as prepared.plans, under the experiment's own run root
    ids = enqueue_plan(conn, [
        {"key": p.key, "kind": p.kind, "spec": p.spec, "depends_on": p.depends_on, "name": p.key,
         "experiment_id": exp_id, "constitution_id": constitution_id(p), "devices_required": p.devices,
         "max_attempts": exp.max_attempts, "run_dir": p.run_dir, "iteration": p.iteration, "label": p.label}
        for p in plans
    ])
    return exp_id, root, plans, ids


def _submit_set(conn: Connection, prepared: Prepared, warnings: list[str], sweep_id: int | None) -> Submitted:
    """A constitution set: each member stored as a version under its own name (its antithesis
    too when the experiment samples under it), and every job linked to the versions it draws
    from; the jobs' own constitution_id stays null."""
    anti = any(p.antithesis for p in prepared.plans)
    stored, ids, anti_ids = [], [], []
    for m in prepared.members:
        cid, version, created = constitution_version(
            conn, m["name"], m["principles"],
            description=f"from {m['origin']} (in the set {prepared.constitution_name})")
        ids.append(cid)
        stored.append({"id": cid, "name": m["name"], "version": version, "created": created, "origin": m["origin"]})
        if anti:
            aid, _, _ = constitution_version(conn, f"{m['name']} (antithesis)"[:200],
                                             _antithesis_principles(m["principles"]),
                                             description=f"the antithesis of {m['name']} v{version}")
            anti_ids.append(aid)
    exp_id, root, plans, job_ids = _enqueue(conn, prepared, lambda p: None, sweep_id)
    for p in plans:
        link_constitution_set(conn, job_ids[p.key], anti_ids if p.antithesis else ids)
    constitution = {"id": None, "name": prepared.constitution_name, "version": None,
                    "created": any(m["created"] for m in stored), "origin": prepared.constitution_origin,
                    "members": stored}
    return Submitted(exp_id, prepared.exp.name, root, constitution, _job_rows(plans, job_ids),
                     warnings)
