"""Sweeps and clones: several experiments from one spec, or a stored experiment again.

* A spec's ``sweep`` section is a grid over spec fields named by dotted path::

      sweep:
        training.lr: [1.0e-7, 5.0e-7, 1.0e-6]
        training.beta: [0, 0.1]

  gives 6 points (every combination, the first path varying slowest). Each point is the
  spec without ``sweep``, its values set, and is resolved as a full spec
  (services.experiments.prepare_data) *before anything is written*: a bad path or a bad
  value is refused naming the point and the field. :func:`submit_sweep` then writes a
  ``sweeps`` row and one experiment per point (named ``<name> lr=1e-07 beta=0``, its
  ``sweep_point`` the values) in the caller's one transaction: all points or none.
  At most :data:`MAX_SWEEP_POINTS` points.
* Overrides (``sami submit --set training.lr=1e-6``, ``--from EXPERIMENT_ID``): a dotted
  path and a YAML value, checked against the spec's schema the same way.

Numbers written as ``1e-6`` are YAML strings (YAML 1.1 wants ``1.0e-6``); as sweep or
override values they are read as the numbers they look like.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel
from sqlalchemy.engine import Connection

from db.experiments import create_sweep, stored_spec, sweep_named
from sami_core.errors import SpecError
from sami_core.experiment_spec import ExperimentSpec
from sami_core.spec import yaml_load

if TYPE_CHECKING:  # services.experiments is imported where a sweep is prepared or submitted: the app's
    # Experiments page imports this module for its labels only, and starts faster without it
    from services.experiments import Prepared, Submitted

MAX_SWEEP_POINTS = 100  # each point is a whole experiment (a DAG of jobs): more is a typo, or a job for a scheduler
SWEEP = "sweep"
# Fields a sweep or override cannot set: each point is named by the sweep.
_NOT_SWEPT = {"name"}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


# ---- paths and values -----------------------------------------------------------------------------
def _section(annotation: Any) -> type[BaseModel] | None:
    """The spec model a field holds (``X | None`` -> X), or None for a value."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        models = [a for a in typing.get_args(annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        return models[0] if len(models) == 1 else None
    return None


def path_problem(path: str) -> str | None:
    """Why ``path`` names no field of an experiment spec (None when it does): an unknown
    key (with the nearest name), or a key below a value. A path into a list (an index)
    is checked no further: validation of the whole spec judges it."""
    keys = path.split(".")
    if not path or any(not k for k in keys):
        return "not a dotted field path such as training.lr"
    if keys[0] in _NOT_SWEPT or keys[0] == SWEEP:
        return f"{keys[0]!r} cannot be set this way (each point is named after the sweep and its values)"
    model: type[BaseModel] | None = ExperimentSpec
    for i, key in enumerate(keys):
        where = ".".join(keys[:i]) or "the spec"
        if model is None:
            return f"{where} is a value, not a section with fields"
        if key not in model.model_fields:
            near = difflib.get_close_matches(key, list(model.model_fields), n=1)
            hint = f"; did you mean {'.'.join(keys[:i] + near)}?" if near else (
                f"; {where} has: {', '.join(model.model_fields)}")
            return f"{where} has no field {key!r}{hint}"
        annotation = model.model_fields[key].annotation
        if typing.get_origin(annotation) is list or any(typing.get_origin(a) is list
                                                         for a in typing.get_args(annotation)):
            return None  # a list (e.g. judge.baselines.0.model): the spec's own validation decides
        model = _section(annotation)
    return None


def plain_value(value: Any) -> Any:
    """A sweep or override value as the spec takes it: a string that reads as a number
    (``1e-6``, which YAML 1.1 keeps as text) becomes that number."""
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        number = float(value)
        return int(number) if number.is_integer() and re.fullmatch(r"[+-]?\d+", value.strip()) else number
    return value


def set_path(data: Mapping[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy of ``data`` with ``value`` at ``path`` (sections made as needed; a null
    section such as ``evaluation: null`` becomes one holding just this field)."""
    out = copy.deepcopy(dict(data))
    node: Any = out
    keys = path.split(".")
    for key in keys[:-1]:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    if isinstance(node, list) and keys[-1].isdigit() and int(keys[-1]) < len(node):
        node[int(keys[-1])] = value
    else:
        node[keys[-1]] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """``training.lr=1e-6`` -> ("training.lr", 1e-06): a dotted path and a YAML value
    (SpecError naming ``--set`` and the path otherwise)."""
    path, sep, raw = text.partition("=")
    path = path.strip()
    if not sep or not path:
        raise SpecError(f"--set {text!r}: write PATH=VALUE, e.g. training.lr=1e-6", source="--set")
    if problem := path_problem(path):
        raise SpecError(f"{path}: {problem}", source="--set", path=path)
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise SpecError(f"{path}: {raw!r} is not a YAML value ({getattr(err, 'problem', err)})", source="--set",
                        path=path) from None
    return path, plain_value(value)


def apply_overrides(data: Mapping[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``PATH=VALUE`` of ``overrides`` set (in order; SpecError on a bad one)."""
    out = dict(data)
    for text in overrides:
        path, value = parse_override(text)
        out = set_path(out, path, value)
    return out


# ---- the grid --------------------------------------------------------------------------------------
def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def point_label(values: Mapping[str, Any]) -> str:
    """``lr=1e-07 beta=0``: each swept field by its last name (the whole path when two share it)."""
    last = [p.rsplit(".", 1)[-1] for p in values]
    return " ".join(f"{short if last.count(short) == 1 else path}={format_value(v)}"
                    for (path, v), short in zip(values.items(), last, strict=True))


def expand_grid(grid: Any, *, source: str = "<spec>", cap: int = MAX_SWEEP_POINTS) -> list[dict[str, Any]]:
    """A ``sweep`` section -> its points ({path: value} each; every combination, the first
    path varying slowest). SpecError naming ``sweep.<path>`` for a bad path or list, and
    ``sweep`` for an empty grid or more than ``cap`` points."""
    if not isinstance(grid, Mapping) or not grid:
        raise SpecError(errors=[(SWEEP, "give a mapping of dotted field paths to lists of values, e.g. "
                                        "{training.lr: [1.0e-7, 5.0e-7]}")], source=source)
    errors: list[tuple[str, str]] = []
    axes: list[list[Any]] = []
    for path, values in grid.items():
        where = f"{SWEEP}.{path}"
        if not isinstance(path, str) or (problem := path_problem(path)):
            errors.append((where, problem if isinstance(path, str) else "a field path is text, e.g. training.lr"))
            continue
        if not isinstance(values, list) or not values:
            errors.append((where, f"give a non-empty list of values, e.g. [{format_value(values)}], not "
                                  f"{type(values).__name__ if values != [] else 'an empty list'}"))
            continue
        values = [plain_value(v) for v in values]
        dupes = [v for i, v in enumerate(values) if v in values[:i]]
        if dupes:
            errors.append((where, f"{format_value(dupes[0])} is listed twice"))
            continue
        axes.append(values)
    if errors:
        raise SpecError(errors=errors, source=source)
    n = math.prod(len(a) for a in axes)
    if n > cap:
        sizes = " x ".join(str(len(a)) for a in axes)
        raise SpecError(errors=[(SWEEP, f"{n} points ({sizes}); a sweep has at most {cap}: drop values, or split "
                                        "it into several sweeps")], source=source)
    paths = list(grid)
    return [dict(zip(paths, combo, strict=True)) for combo in itertools.product(*axes)]


@dataclass
class PreparedSweep:
    """Every point of a sweep, each resolved as a full experiment (nothing written yet)."""

    name: str
    grid: dict[str, list[Any]]
    points: list[Prepared]  # each with its sweep_point (values) set
    notes: list[str] = field(default_factory=list)


@dataclass
class SubmittedSweep:
    sweep_id: int | None  # None for a dry run
    name: str
    points: list[Submitted]
    values: list[dict[str, Any]]  # each point's swept values, in the points' order
    warnings: list[str] = field(default_factory=list)
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "name": self.name, "dry_run": self.dry_run, "warnings": self.warnings,
                "points": [{"experiment_id": s.experiment_id, "name": s.name, "values": p,
                            "runs_dir": s.runs_dir, "jobs": len(s.jobs)}
                           for s, p in zip(self.points, self.values, strict=True)]}


def is_sweep(data: Any) -> bool:
    return isinstance(data, Mapping) and SWEEP in data


def prepare_sweep(data: Mapping[str, Any], *, source: str = "<spec>", name: str | None = None,
                  env: Mapping[str, str] | None = None, cap: int = MAX_SWEEP_POINTS) -> PreparedSweep:
    """Expand a spec's ``sweep`` and resolve every point (SpecError naming the point and
    the field at the first point that fails; nothing is written)."""
    from services import experiments

    env = os.environ if env is None else env
    base = {k: v for k, v in data.items() if k != SWEEP}
    if name is not None:
        base["name"] = name
    sweep_name = str(base.get("name") or ExperimentSpec.model_fields["name"].default)
    points = expand_grid(data[SWEEP], source=source, cap=cap)
    prepared: list[Prepared] = []
    for k, values in enumerate(points, 1):
        point = base
        for path, value in values.items():
            point = set_path(point, path, value)
        label = point_label(values)
        point["name"] = f"{sweep_name} {label}"[:200]
        try:
            p = experiments.prepare_data(point, source=source, env=env)
        except SpecError as err:
            where = f"sweep point {k} of {len(points)} ({label})"
            raise SpecError(errors=[(path, f"{where}: {reason}") for path, reason in err.errors],
                            source=source) from None
        p.sweep_point = values
        prepared.append(p)
    notes = list(dict.fromkeys(n for p in prepared for n in p.notes))
    return PreparedSweep(sweep_name, {k: [plain_value(v) for v in vs] for k, vs in data[SWEEP].items()},
                         prepared, notes)


def submit_sweep(conn: Connection, sweep: PreparedSweep) -> SubmittedSweep:
    """The sweep's row and one experiment per point (the caller's transaction: all or none)."""
    from services import experiments

    sweep_id = create_sweep(conn, sweep.name, sweep.grid)
    done = [experiments.submit(conn, p, sweep_id=sweep_id) for p in sweep.points]
    warnings = list(dict.fromkeys(w for s in done for w in s.warnings))
    return SubmittedSweep(sweep_id, sweep.name, done, [p.sweep_point or {} for p in sweep.points], warnings)


def dry_run_sweep(conn: Connection, sweep: PreparedSweep) -> SubmittedSweep:
    """What :func:`submit_sweep` would enqueue (nothing is written)."""
    from services import experiments

    done = [experiments.dry_run(conn, p) for p in sweep.points]
    warnings = list(dict.fromkeys(w for s in done for w in s.warnings))
    return SubmittedSweep(None, sweep.name, done, [p.sweep_point or {} for p in sweep.points], warnings,
                          dry_run=True)


def already_submitted(conn: Connection, sweep: PreparedSweep) -> int | None:
    """The id of a sweep with this one's name, if the workspace has one (``--if-absent``)."""
    return sweep_named(conn, sweep.name)


# ---- clone -----------------------------------------------------------------------------------------
def clone_spec(conn: Connection, experiment_id: int, overrides: list[str] = ()) -> dict[str, Any]:
    """The spec experiment ``experiment_id`` was submitted with (resolved: its constitution
    inline, paths absolute), with ``overrides`` (``PATH=VALUE``) applied; SpecError naming
    ``--from`` when there is no such experiment."""
    spec = stored_spec(conn, experiment_id)
    if spec is None:
        raise SpecError(f"experiment {experiment_id} does not exist (see `sami summary` or the Overview page)",
                        source="--from")
    return apply_overrides(spec, list(overrides))
