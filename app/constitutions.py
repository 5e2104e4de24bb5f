"""The Constitutions page's logic (app/views/constitutions.py): editor rows <->
principles, validation messages, import/export of constitution files, and the prompt
preview.

Validation reuses :meth:`sami_core.constitutions.Constitution.validate`: principles
without an antithesis are allowed (they are never flipped), but a constitution must
give at least :data:`MIN_VARIANTS` variants, the smallest N SAMI accepts, so at least
one principle needs an antithesis (k antitheses give 2**k variants).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami_core import constitutions as core
from sami_core.errors import ConstitutionError
from sami_core.prompts import PRESETS as PRESET_TABLE
from sami_core.prompts import TASKS, PromptTemplates, response_separator
from sami_core.spec import DATA_DIR, PromptSpec, check_prompt_task, shipped_constitutions

COLUMNS = ("principle", "antithesis")
NAME_MAX = 200  # constitutions.name is a String(200)
MIN_VARIANTS = 2  # SAMI contrasts at least two constitution variants per query
PREVIEW_MAX_N = 4  # the preview shows N prompts and N x N training sequences
SHIPPED_DIR = DATA_DIR / "constitutions"
POSTS = DATA_DIR / "posts.jsonl"


def _text(v: Any) -> str:
    """A cell as text: None/NaN (pandas' empty cells) -> ''."""
    if v is None or (isinstance(v, float) and v != v):
        return ""
    return str(v)


def clean_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, str | None]]:
    """Editor rows as principles: text stripped, an empty antithesis -> None, rows with
    neither a principle nor an antithesis dropped (the editor's blank new rows)."""
    out = []
    for r in rows:
        p, a = _text(r.get("principle")).strip(), _text(r.get("antithesis")).strip()
        if p or a:
            out.append({"principle": p, "antithesis": a or None})
    return out


def full_text(row: Mapping[str, Any], column: str) -> str:
    """A cell's whole text ('' for an empty one)."""
    return _text(row.get(column))


def row_stamp(row: Mapping[str, Any]) -> str:
    """A short fingerprint of a row's texts (widget keys that change when the row does)."""
    import hashlib

    return hashlib.sha256(json.dumps([full_text(row, c) for c in COLUMNS]).encode()).hexdigest()[:10]


def replace_row(rows: Sequence[Mapping[str, Any]], i: int, principle: str, antithesis: str) -> list[dict[str, Any]]:
    """The editor's rows with row ``i`` set to these texts (an empty antithesis -> None)."""
    out = [{c: r.get(c) for c in COLUMNS} for r in rows]
    out[i] = {"principle": principle, "antithesis": antithesis if antithesis.strip() else None}
    return out


def apply_editor_state(rows: Sequence[Mapping[str, Any]], state: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``st.data_editor``'s edit state (edited_rows, added_rows, deleted_rows) applied to
    the rows it was given: what the editor shows."""
    out = [dict(r) for r in rows]
    state = state or {}
    for idx, changes in (state.get("edited_rows") or {}).items():
        i = int(idx)
        if 0 <= i < len(out):
            out[i].update(changes)
    deleted = {int(i) for i in state.get("deleted_rows") or ()}
    out = [r for i, r in enumerate(out) if i not in deleted]
    out += [{c: r.get(c) for c in COLUMNS} for r in state.get("added_rows") or ()]
    return out


@dataclass
class Check:
    """What validation found: ``errors`` block saving; ``warnings`` do not."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    constitution: core.Constitution | None = None

    @property
    def ok(self) -> bool:
        return not self.errors


def check(name: str, rows: Iterable[Mapping[str, Any]], n_variants: int = MIN_VARIANTS) -> Check:
    """Validate a draft (name + editor rows) the way a SAMI run will."""
    out = Check()
    name = (name or "").strip()
    if not name:
        out.errors.append("Constitution name: give the constitution a name")
    elif len(name) > NAME_MAX:
        out.errors.append(f"Constitution name: at most {NAME_MAX} characters (this one has {len(name)})")
    principles = clean_rows(rows)
    try:
        c = core.from_native(principles, name=name).validate(n_variants)
    except ConstitutionError as err:
        out.errors.append(f"Principles: {err}")
        return out
    out.constitution = c
    lone = [i for i, p in enumerate(principles, 1) if p["antithesis"] is None]
    if lone:
        which = ", ".join(map(str, lone))
        out.warnings.append(f"Principle{'s' if len(lone) > 1 else ''} {which} ha{'ve' if len(lone) > 1 else 's'} "
                            f"no antithesis: never flipped, so variants differ only in the others "
                            f"(this constitution allows N <= {c.max_variants})")
    return out


# ---- files ---------------------------------------------------------------------------------
def parse_upload(filename: str, content: bytes, max_mb: float) -> tuple[str, list[dict[str, str | None]]]:
    """An uploaded constitution file (reference or native JSON) -> (name, principles).
    Raises ConstitutionError with a message for the user."""
    if not filename.lower().endswith(".json"):
        raise ConstitutionError(f"{filename}: not a .json file (the reference format is JSON)")
    if len(content) > max_mb * 1024 * 1024:
        raise ConstitutionError(f"{filename}: {len(content) / 2**20:.1f} MB is over the {max_mb} MB limit")
    try:
        data = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConstitutionError(f"{filename}: not valid JSON ({err})") from None
    c = core.parse(data, name=Path(filename).stem)
    return c.name, [{"principle": p.principle, "antithesis": p.antithesis} for p in c.principles]


def export_json(principles: Sequence[Mapping[str, Any]], fmt: str = "reference") -> str:
    """A version's principles in the reference format (the SAMI paper's files) or the
    native one (a list of {principle, antithesis})."""
    c = core.from_native([dict(p) for p in principles])
    data = c.to_reference() if fmt == "reference" else c.to_native()
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


# The shipped constitutions as ``demo:<writer>/<k>`` names.
shipped = shipped_constitutions


def load_shipped(name: str) -> list[dict[str, str | None]]:
    c = core.load(SHIPPED_DIR / f"{name.removeprefix('demo:')}.json")
    return [{"principle": p.principle, "antithesis": p.antithesis} for p in c.principles]


# ---- prompt preview --------------------------------------------------------------------------
def sample_posts(limit: int = 20) -> list[dict[str, Any]]:
    """The first shipped TL;DR posts (id, post), read directly (no `datasets`)."""
    out = []
    with POSTS.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
                if len(out) >= limit:
                    break
    return out


@dataclass(frozen=True)
class Preview:
    variants: list[core.Variant]
    generation: list[str]  # prompt i: what the policy sees to sample y_i (with any forced prefix)
    training: list[list[str]]  # [i][j]: training prompt_i followed by y_j, scored as log pi(y_j | x, c_i)


PRESETS = tuple(PRESET_TABLE)
EOS_MARKS = {True: "<eos>", False: "", "auto": "<eos?>"}  # how a training sequence ends, by append_eos


def preset_note(name: str) -> str:
    return PRESET_TABLE[name].description


def templates_for(task: str, preset: str, keep_prefix: bool = True) -> PromptTemplates:
    """The prompts of ``preset`` for ``task``; ValueError (a message for the user) when the
    preset is written for other tasks."""
    prompts = PromptSpec(preset=preset, keep_prefix=keep_prefix)
    check_prompt_task(prompts, task)
    return PromptTemplates.from_spec(task, prompts)


def response_placeholder(j: int, templates: PromptTemplates | None = None) -> str:
    """Response j as the preview shows it; a kept forced prefix is part of it."""
    if templates is not None and templates.response_prefix and templates.keep_prefix:
        return f"{templates.response_prefix} <rest of response {j + 1}, sampled under variant {j + 1}>"
    return f"<response {j + 1}, sampled under variant {j + 1}>"


def preview(constitution: core.Constitution, query: str, *, task: str = "summarization", n: int = 2,
            seed: int = 0, shuffle: bool = True, chat: bool = False, templates: PromptTemplates | None = None,
            append_eos: bool | str = "auto") -> Preview:
    """The exact generation prompts of one query's N variants and the N x N training
    sequences (training prompt_i, the separator, y_j and its EOS as ``append_eos`` says:
    ``<eos?>`` = only where the model ended the response; the response is a placeholder).

    ``templates`` (default: the built-in prompts of ``task``) are a spec's prompts
    (sami_core.prompts.PromptTemplates). ``chat`` shows the chat messages as JSON: the
    final text depends on the model's chat template, which the app does not load."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}")
    t = templates or PromptTemplates(task)
    variants = constitution.sample_variants(n, random.Random(seed), shuffle=shuffle)
    if chat:
        def show(which: str, v: core.Variant) -> str:
            return json.dumps(t.chat_preview(which, v.text, query), indent=2, ensure_ascii=False)

        prompts = [show("generation", v) for v in variants]
        training = [[f"{show('training', v)}\n+ assistant: {response_placeholder(j, t)}" for j in range(n)]
                    for v in variants]
    else:
        prompts = [t.generation_prompt(v.text, query) for v in variants]
        eos = EOS_MARKS[append_eos]
        training = []
        for v in variants:
            tp = t.training_prompt(v.text, query)  # sami_core.train.tokenize_rows: separator, response, EOS
            training.append([f"{tp}{response_separator(tp)}{response_placeholder(j, t)}{eos}" for j in range(n)])
    return Preview(variants, prompts, training)
