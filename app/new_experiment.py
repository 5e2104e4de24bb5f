"""The New experiment page's logic (app/views/new_experiment.py): an experiment spec
dict <-> form widgets <-> YAML, checks the spec schema cannot make (a local model
directory exists, a data file has the query field: sami_core.data_files), and every
error as a (field path, reason) pair, the page showing each next to its field.

The spec dict is the single truth: a form widget writes its one value into it (only
when that value changed), the YAML view shows it with ``yaml.safe_dump`` (exactly a
file `sami submit` accepts), and YAML edited by hand replaces it. Keys the form does
not show (filters, generation, ...) travel untouched, so form -> YAML -> form keeps the
spec the same.
"""

from __future__ import annotations

import copy
import hashlib
import re
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sami_core import experiment_spec
from sami_core import spec as spec_mod
from sami_core.data_files import check_data_file
from sami_core.errors import SpecError

EXAMPLES_DIR = spec_mod.EXAMPLES_DIR
DEMO_YAML = EXAMPLES_DIR / "demo.yaml"
# What the page starts with: the embedded demo model on the shipped posts, on CPU.
INITIAL: dict[str, Any] = {"name": "experiment", "model": {"path": "demo"}, "data": {"source": "demo"},
                           "constitution": {"path": "demo:opus/0"}, "n_constitutions": 2, "iterations": 1,
                           "devices": {"generate": 0, "train": 0, "sample": 0, "judge": 0, "evaluate": 0}}


def _defaults() -> dict[str, Any]:
    d = experiment_spec.ExperimentSpec().model_dump(mode="json")
    d["judge"] = experiment_spec.ExperimentJudgeSpec().model_dump(mode="json")
    return d


DEFAULTS = _defaults()


def _literal_options(model: type, name: str) -> list[str]:
    """The values of a ``Literal`` field of a spec model (what the schema accepts now)."""
    ann = model.model_fields[name].annotation
    return [str(a) for a in typing.get_args(ann)] if typing.get_origin(ann) is typing.Literal else []


def _judge_llm_model() -> type:
    return experiment_spec.ExperimentJudgeSpec.model_fields["judge"].annotation


# ---- fields ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    path: str  # dotted spec path, also the widget key suffix
    label: str
    kind: str  # text | opt_text | area | int | opt_int | float | select | floats | names | bool
    options: tuple[str, ...] = ()
    help: str | None = None

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(self.path.split("."))

    @property
    def section(self) -> str:
        return self.keys[0]


def _f(path: str, label: str, kind: str, options: Sequence[str] = (), help: str | None = None) -> Field:
    return Field(path, label, kind, tuple(options), help)


FIELDS: tuple[Field, ...] = (
    _f("name", "Experiment name", "text"),
    _f("model.path", "Model (Hugging Face id or local directory)", "text",
       help="A hub id such as mistralai/Mistral-7B-v0.1, a local directory, or `demo` (the embedded demo model)."),
    _f("model.prompt_format", "Prompt format", "select", _literal_options(spec_mod.ModelSpec, "prompt_format")),
    _f("model.dtype", "Weights dtype", "select", _literal_options(spec_mod.ModelSpec, "dtype")),
    _f("data.source", "Queries", "select", _literal_options(spec_mod.DataSpec, "source")),
    _f("data.dataset", "Hub dataset", "opt_text"),
    _f("data.config", "Dataset config", "opt_text"),
    _f("data.split", "Split", "text"),
    _f("data.path", "Data file", "opt_text", help="Filled in by an upload; or a JSON/JSONL/CSV file on this machine."),
    _f("data.field", "Query field", "text", help="The column holding the query text."),
    _f("data.eval_size", "Held-out eval queries", "int"),
    _f("data.train_size", "Training queries (empty = all the rest)", "opt_int"),
    _f("task", "Task", "select", _literal_options(experiment_spec.ExperimentSpec, "task")),
    _f("n_constitutions", "N (constitution variants per query)", "int"),
    _f("iterations", "Iterations", "int"),
    _f("train_from", "Each iteration trains from", "select", _literal_options(experiment_spec.ExperimentSpec, "train_from")),
    _f("max_prompt_tokens", "Prompt budget in tokens (empty = the model's length)", "opt_int",
       help="Longer queries are cut to fit (never the constitution or the response); the demo model needs 200."),
    _f("prompts.preset", "Prompts", "select", _literal_options(spec_mod.PromptSpec, "preset"),
       help="builtin: this project's prompt per task, the same to generate and to train; paper-tldr: the SAMI "
            "paper's TL;DR scaffold to generate (the response continues a forced 'The post') and its short "
            "prompt to train."),
    _f("prompts.generation", "Generation template (empty = the preset's)", "area",
       help="What the policy samples from; {constitution} and {query} are filled in ({{ and }} for braces)."),
    _f("prompts.training", "Training template (empty = the preset's, or the generation template)", "area",
       help="What train and evaluate score each response under; {constitution} and {query}."),
    _f("prompts.response_prefix", "Forced response start (empty = the preset's)", "opt_text",
       help="Appended to the generation prompt for the model to continue, e.g. 'The post'."),
    _f("prompts.keep_prefix", "Keep the forced start in the stored response", "bool",
       help="Kept: it is part of the response that is trained on and judged; else stripped."),
    _f("filters.drop_substrings", "Drop responses containing (comma separated)", "names",
       help="The paper's: [insert, [], ], Response"),
    _f("filters.ends_with", "Responses must end with (comma separated; empty = any)", "names",
       help="The paper's: ."),
    _f("filters.require_distinct", "Drop a query unless its N responses are distinct", "bool"),
    _f("training.lr", "Learning rate", "float"),
    _f("training.optimizer", "Optimizer", "select", _literal_options(spec_mod.TrainingSpec, "optimizer")),
    _f("training.grad_accum", "Gradient accumulation", "int"),
    _f("training.beta", "KL weight beta", "float"),
    _f("training.save_every", "Save a checkpoint every (steps)", "int"),
    _f("devices.generate", "GPUs per generate job", "int"),
    _f("devices.train", "GPUs per train job", "int"),
    _f("devices.sample", "GPUs per sample job", "int"),
    _f("devices.judge", "GPUs per judge job", "int"),
    _f("devices.evaluate", "GPUs per evaluate job", "int"),
    _f("sampling.temperatures", "Sampling temperatures (comma separated)", "floats"),
    _f("sampling.limit", "Eval queries to sample (empty = all held out)", "opt_int"),
    _f("sampling.antithesis", "Also sample under the antithesis", "bool",
       help="each model is also sampled with every principle flipped: sources `iteration-t (antithesis)`"),
    _f("judge.judge.provider", "Judge provider", "select", _literal_options(_judge_llm_model(), "provider")),
    _f("judge.judge.model", "Judge model", "text"),
    _f("judge.judge.base_url", "Judge base URL (OpenAI-compatible; empty = OpenAI's)", "opt_text"),
    _f("judge.judge.concurrency", "Judge concurrency", "int"),
    _f("judge.baselines", "Baselines (comma separated: base, iteration-K)", "names"),
)
BY_PATH = {f.path: f for f in FIELDS}


_MISSING = object()


def _walk(d: Any, keys: Sequence[str]) -> Any:
    for k in keys:
        if not isinstance(d, Mapping) or k not in d:
            return _MISSING
        d = d[k]
    return d


def get(spec: Mapping[str, Any], field: Field) -> Any:
    """The field's value in ``spec``, or the schema's default when the spec leaves it out."""
    v = _walk(spec, field.keys)
    if v is _MISSING or (v is None and field.keys[0] == "judge" and spec.get("judge") is None):
        v = _walk(DEFAULTS, field.keys)
    return None if v is _MISSING else v


def put(spec: Mapping[str, Any], field: Field, value: Any) -> dict[str, Any]:
    """A copy of ``spec`` with the field set to ``value``; the same content when the value
    is what the spec already says (so untouched fields never appear in the YAML)."""
    out = copy.deepcopy(dict(spec))
    if get(spec, field) == value:
        return out
    d = out
    for k in field.keys[:-1]:
        if not isinstance(d.get(k), dict):
            d[k] = {}
        d = d[k]
    d[field.keys[-1]] = value
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def to_widget(field: Field, value: Any) -> Any:
    """A spec value as the field's widget value; ValueError when the widget cannot show it
    (e.g. YAML typed by hand with a string where a number goes: the YAML keeps it)."""
    k = field.kind
    if k == "text" and isinstance(value, str):
        return value
    if k in ("opt_text", "area") and (value is None or isinstance(value, str)):
        return value or ""
    if k in ("int", "opt_int") and (value is None and k == "opt_int"):
        return None
    if k in ("int", "opt_int") and _num(value) and float(value).is_integer():
        return int(value)
    if k == "float" and _num(value):
        return float(value)
    if k == "select" and isinstance(value, str):
        return value
    if k == "bool" and isinstance(value, bool):
        return value
    if k == "floats" and isinstance(value, list) and all(_num(x) for x in value):
        return ", ".join(str(float(x)) for x in value)
    if k == "names" and isinstance(value, list) and all(isinstance(x, str) for x in value):
        return ", ".join(value)
    if k == "names" and isinstance(value, list):
        raise ValueError(f"{field.path}: has model baselines ({{model: ..., label: ...}}); edit the list in the YAML")
    raise ValueError(f"{field.path}: the form cannot show {value!r}; edit it in the YAML")


def from_widget(field: Field, w: Any) -> Any:
    """A widget value as the spec value (ValueError with a message for the user)."""
    k = field.kind
    if k == "text":
        return (w or "").strip()
    if k == "opt_text":
        return (w or "").strip() or None
    if k == "area":  # a template: kept as typed (its whitespace is part of the prompt)
        return w if (w or "").strip() else None
    if k == "int":
        if w is None:
            raise ValueError("give a whole number")
        return int(w)
    if k == "opt_int":
        return None if w is None else int(w)
    if k == "float":
        if w is None:
            raise ValueError("give a number")
        return float(w)
    if k == "floats":
        out = []
        for part in re.split(r"[,\s]+", (w or "").strip()):
            if part:
                try:
                    out.append(float(part))
                except ValueError:
                    raise ValueError(f"{part!r} is not a number (write e.g. 0.0, 1.0)") from None
        return out
    if k == "names":
        return [s.strip() for s in (w or "").split(",") if s.strip()]
    return w


def widget_values(spec: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every field's widget value for ``spec`` (path -> value), and the fields the form
    cannot show (path -> why)."""
    values, problems = {}, {}
    for f in FIELDS:
        try:
            values[f.path] = to_widget(f, get(spec, f))
        except ValueError as err:
            problems[f.path] = str(err)
    return values, problems


def apply_values(spec: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``spec`` with these widget values written in (judge fields only when it judges)."""
    out = copy.deepcopy(dict(spec))
    for path, w in values.items():
        f = BY_PATH[path]
        if f.section == "judge" and not out.get("judge"):
            continue
        out = put(out, f, from_widget(f, w))
    return out


def set_judging(spec: Mapping[str, Any], on: bool) -> dict[str, Any]:
    """Turn the judge section on (the schema's defaults; provider auto when the schema has
    it: an API judge when a key is set at submit, else the local demo judge) or off."""
    out = copy.deepcopy(dict(spec))
    if on and not out.get("judge"):
        providers = BY_PATH["judge.judge.provider"].options
        out["judge"] = {"judge": {"provider": "auto"}, "baselines": ["base"]} if "auto" in providers else {
            "baselines": ["base"]}
    elif not on:
        out.pop("judge", None)
    return out


# ---- YAML ------------------------------------------------------------------------------------
def to_yaml(spec: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(spec), sort_keys=False, allow_unicode=True, width=100)


def from_yaml(text: str) -> dict[str, Any]:
    """YAML text -> spec dict; SpecError naming the line for invalid YAML or a non-mapping."""
    try:
        data = spec_mod.yaml_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise SpecError(f"invalid YAML{where}: {problem}", source="yaml") from None
    if not isinstance(data, dict):
        raise SpecError("an experiment spec is a mapping of keys to values, got "
                        f"{'nothing' if data is None else type(data).__name__}", source="yaml")
    return data


def demo_spec() -> dict[str, Any]:
    return spec_mod.read_spec_file(DEMO_YAML)


# ---- constitution choices ----------------------------------------------------------------------
def version_label(v: Mapping[str, Any]) -> str:
    return f"{v['name']} v{v['version']}"


def shipped_label(path: str) -> str:
    return f"{path} (shipped)"


def shipped_set_label(folder: str) -> str:
    return f"{folder} (shipped set: one drawn per query)"


def _norm(principles: Any) -> list[tuple[str, str | None]] | None:
    if not isinstance(principles, list):
        return None
    try:
        return [(str(p["principle"]), p.get("antithesis") or None) for p in principles]
    except (TypeError, KeyError, AttributeError):
        return None


def is_shipped_copy(v: Mapping[str, Any], shipped: Sequence[str]) -> bool:
    """Whether a saved version is a shipped constitution as shipped: submitting
    ``path: demo:opus/0`` stores it as version ``demo:opus/0 v1``, which the choices list
    once, as the shipped one (its version is reused when it is submitted again)."""
    if v["name"] not in shipped:
        return False
    from app.constitutions import load_shipped

    return _norm(v["principles"]) == _norm(load_shipped(v["name"]))


def constitution_choices(versions: Sequence[Mapping[str, Any]], shipped: Sequence[str],
                         shipped_sets: Sequence[str] = ()) -> dict[str, dict]:
    """Selectbox label -> the spec's ``constitution`` value: saved versions ("<name> v<k>",
    inline: their principles, under their name, so `sami submit` reuses that version),
    then the shipped constitutions (by path), then the shipped folders as sets (``paths``)."""
    out = {version_label(v): {"name": v["name"], "principles": [
        {"principle": p["principle"], "antithesis": p.get("antithesis")} for p in v["principles"]]}
        for v in versions if not is_shipped_copy(v, shipped)}
    out.update({shipped_label(s): {"path": s} for s in shipped})
    out.update({shipped_set_label(s): {"paths": s} for s in shipped_sets})
    return out


def constitution_label(c: Any, versions: Sequence[Mapping[str, Any]]) -> str:
    """The label of a spec's constitution among the choices, or a label of its own."""
    if isinstance(c, Mapping):
        if isinstance(c.get("path"), str) and c["path"].startswith("demo:"):
            return shipped_label(c["path"])
        if c.get("path"):
            return f"file: {c['path']}"
        if isinstance(c.get("paths"), str):
            return shipped_set_label(c["paths"]) if c["paths"].startswith("demo:") else f"folder: {c['paths']}"
        if isinstance(c.get("paths"), list):
            return f"set of {len(c['paths'])}: {', '.join(map(str, c['paths']))}"
        mine = _norm(c.get("principles"))
        if mine is not None:
            for v in versions:  # newest first within a name, as constitution_version matches
                if v["name"] == c.get("name") and _norm(v["principles"]) == mine:
                    shipped = spec_mod.shipped_constitutions()
                    return shipped_label(v["name"]) if is_shipped_copy(v, shipped) else version_label(v)
            return f"inline: {c.get('name') or 'unnamed'} ({len(mine)} principles, from the YAML)"
    return "(set in the YAML)"


# ---- checks the schema cannot make ---------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def check_model_path(path: Any) -> str | None:
    """None when ``path`` is `demo`, an existing local directory or looks like a hub id;
    else why not. Paths that look local (/, ./, ../, ~) must exist on this machine."""
    if not isinstance(path, str) or not path.strip():
        return "give a Hugging Face id (org/name), a local directory or `demo`"
    if path == "demo":
        return None
    p = Path(path).expanduser()
    looks_local = path.startswith(("/", "./", "../", "~", ".\\")) or "\\" in path
    if p.is_dir():
        return None
    if p.exists():
        return f"{path!r} is a file; give the model's directory (with config.json) or a hub id"
    if looks_local:
        return f"local directory {path!r} does not exist on this machine"
    if not _HUB_ID.match(path):
        return f"{path!r} is neither a Hugging Face id (org/name) nor an existing local directory"
    return None


def save_upload(home: Path, filename: str, content: bytes) -> Path:
    """Store an upload under ``<workspace>/uploads/`` (named by its content hash, so the
    same file is stored once and a later upload never changes what a job reads)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", Path(filename).name).strip("-.") or "data"
    dest = Path(home) / "uploads" / f"{hashlib.sha256(content).hexdigest()[:12]}-{stem}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.is_file():
        tmp = dest.with_suffix(dest.suffix + ".part")
        tmp.write_bytes(content)
        tmp.replace(dest)
    return dest


# ---- errors ----------------------------------------------------------------------------------
def is_under(path: str, *prefixes: str) -> bool:
    """Whether ``path`` is one of ``prefixes`` or lies under one (``data.path`` under ``data``)."""
    return any(path == x or path.startswith(x + ".") for x in prefixes)


def merge_errors(first: Sequence[tuple[str, str]], more: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """``first``, then the errors of ``more`` about fields ``first`` does not already
    refuse (the same field, one above it or one under it: ``data`` after ``data.path``)."""
    refused = [p for p, _ in first if p]
    return list(first) + [(p, r) for p, r in more
                          if not p or not any(is_under(p, x) or is_under(x, p) for x in refused)]


def check_spec(spec: Mapping[str, Any], max_mb: float) -> list[tuple[str, str]]:
    """What the app checks before `prepare_data`: model directories exist, a data file
    has the query field."""
    errors = []
    model = spec.get("model") if isinstance(spec.get("model"), Mapping) else {}
    if isinstance(model.get("path", "demo"), str) and (why := check_model_path(model.get("path", "demo"))):
        errors.append(("model.path", why))
    judge = spec.get("judge") if isinstance(spec.get("judge"), Mapping) else {}
    for i, b in enumerate(judge.get("baselines") or []):
        if isinstance(b, Mapping):
            m = b.get("model")
            path = m.get("path") if isinstance(m, Mapping) else m
            if isinstance(path, str) and (why := check_model_path(path)):
                errors.append((f"judge.baselines.{i}.model", why))
    data = spec.get("data") if isinstance(spec.get("data"), Mapping) else {}
    if data.get("source") == "file" and isinstance(data.get("path"), str) and data["path"]:
        field = data.get("field") if isinstance(data.get("field"), str) else "post"
        if why := check_data_file(data["path"], field, max_mb):
            errors.append(("data.path", why))
    return errors


def prepare(spec: Mapping[str, Any], max_mb: float):
    """Everything checked before anything is written: the app's checks and
    services.experiments.prepare_data (what `sami submit` does; a spec with a ``sweep``
    section: services.sweeps.prepare_sweep, every point). Returns (prepared or None,
    [(path, reason)]): every error found, the app's first; a field the app's checks
    already refused is not reported twice (:func:`merge_errors`)."""
    from services.experiments import prepare_data
    from services.sweeps import is_sweep, prepare_sweep

    errors = check_spec(spec, max_mb)
    try:
        if is_sweep(spec):  # one experiment per point (services.sweeps.PreparedSweep)
            prepared = prepare_sweep(copy.deepcopy(dict(spec)), source="form")
        else:
            prepared = prepare_data(copy.deepcopy(dict(spec)), source="form")
    except SpecError as err:
        return None, merge_errors(errors, err.errors)
    return (None, errors) if errors else (prepared, [])


# ---- prompt preview ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptPreview:
    generation: str  # the generation prompt of the positive variant (with any forced start)
    training: str  # the training sequence: training prompt, the response (a placeholder), EOS mark
    forced: str  # the forced start of the response ('' = none)
    chat: bool  # shown as chat messages (prompt_format chat)


def prompt_preview(spec: Mapping[str, Any]) -> tuple[PromptPreview | None, str | None]:
    """The spec's generation prompt and training sequence for its constitution (as written)
    on the first shipped post, or why there is none (a message for the user)."""
    from pydantic import ValidationError

    from app.constitutions import preview, sample_posts
    from sami_core import constitutions as core
    from sami_core.errors import ConstitutionError
    from sami_core.prompts import PromptTemplates

    task = spec.get("task", "summarization")
    parts = (("prompts", spec_mod.PromptSpec, spec.get("prompts") or {}),
             ("constitution", spec_mod.ConstitutionSpec, spec.get("constitution") or {"path": "demo:opus/0"}))
    try:
        prompts, constitution = (model.model_validate(value) for _, model, value in parts)
    except ValidationError as err:
        where = next(name for name, model, value in parts if not _valid(model, value))
        return None, "; ".join(f"{where}.{p}: {r}" if p else f"{where}: {r}" for p, r in spec_mod._field_errors(err))
    try:
        spec_mod.check_prompt_task(prompts, task if isinstance(task, str) else "")
        constitution = core.from_spec(constitution)
    except (ValueError, ConstitutionError, SpecError, OSError) as err:
        return None, str(err)
    templates = PromptTemplates.from_spec(task, prompts)
    model = spec.get("model") if isinstance(spec.get("model"), Mapping) else {}
    chat = model.get("prompt_format") == "chat"
    training = spec.get("training") if isinstance(spec.get("training"), Mapping) else {}
    append_eos = training.get("append_eos", "auto")
    if append_eos not in (True, False, "auto"):
        append_eos = "auto"
    pv = preview(constitution, sample_posts(1)[0]["post"], task=task, n=1, shuffle=False, chat=chat,
                 templates=templates, append_eos=append_eos)
    return PromptPreview(pv.generation[0], pv.training[0][0], templates.response_prefix, chat), None


def _valid(model: type, value: Any) -> bool:
    try:
        model.model_validate(value)
    except Exception:  # noqa: BLE001 - only which part is invalid matters here
        return False
    return True
