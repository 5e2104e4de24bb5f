"""Judge templates from files: a system message, a user template and the answer pattern.

A template file is YAML (or JSON) with three keys::

    system: You compare two summaries ...          # the system message ('' = none)
    user: |                                          # the user message
      POST: {query}
      PRINCIPLES: {constitution}
      SUMMARY A: {response_a}
      SUMMARY B: {response_b}
      ... end with "Final Response: A" or "B".
    answer_pattern: 'Final Response:\\s*([AB])\\b'  # a regex; its group names the choice

Placeholders (in either message): ``{query}``, ``{constitution}`` (the principles,
numbered, shuffled per pair as the built-in template does), ``{response_a}`` and
``{response_b}``; each must appear at least once, no other may; ``{{``/``}}`` are literal
braces. The answer pattern is searched with ``re.MULTILINE``; its last match in an answer
counts, and its first group (or the group named ``choice``) must read ``A`` or ``B``
(``tie``, ``neither``, ``equal``, ``both``: a tie); an answer without a match is
unparseable. Shipped templates (``sami_core/judge/templates/``) are named by their stem
(``paper``). Everything here is pure: no I/O except :func:`read_template`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from sami_core.prompts import format_fields

SHIPPED_DIR = Path(__file__).parent / "templates"
PLACEHOLDERS = ("query", "constitution", "response_a", "response_b")
KEYS = ("system", "user", "answer_pattern")
_TIE_WORDS = {"TIE", "NEITHER", "EQUAL", "EQUALLY", "BOTH"}


def shipped_templates() -> list[str]:
    """Names of the templates shipped with the project (``paper``, ...)."""
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))


def read_template(ref: str) -> dict:
    """A template file as ``{name, system, user, answer_pattern}`` (not yet checked: see
    :func:`check_template`). ``ref`` is a shipped name or a path. Raises ValueError with
    what to fix."""
    import yaml

    path = SHIPPED_DIR / f"{ref}.yaml" if ref in shipped_templates() else Path(ref).expanduser()
    if not path.is_file():
        raise ValueError(f"{ref!r} is neither a shipped template ({', '.join(shipped_templates())}) nor a file; "
                         "give a YAML file with keys system, user and answer_pattern")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: cannot be read as {'JSON' if path.suffix == '.json' else 'YAML'} ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be a mapping with keys system, user and answer_pattern")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {', '.join(map(str, unknown))}; a template has system, user and "
                         "answer_pattern")
    if not data.get("answer_pattern"):
        raise ValueError(f"{path}: no answer_pattern; add the regex that finds the verdict in an answer, e.g. "
                         "answer_pattern: 'Final Response:\\s*([AB])\\b'")
    if not data.get("user"):
        raise ValueError(f"{path}: no user template; add `user:` with {{query}}, {{constitution}}, {{response_a}} "
                         "and {response_b}")
    return {"name": path.stem if ref in shipped_templates() else str(path), "system": data.get("system") or "",
            "user": data["user"], "answer_pattern": data["answer_pattern"]}


def placeholders(text: str, where: str) -> list[str]:
    """The placeholder names in ``text``; ValueError for malformed braces or a format spec."""
    try:
        fields = format_fields(text)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    names = []
    for name, fmt, conv in fields:
        if fmt or conv:
            raise ValueError(f"{where}: placeholder {{{name}}}: conversions and format specs (! and :) are not "
                             "supported")
        names.append(name)
    return names


def compile_pattern(pattern: str) -> re.Pattern:
    """The answer pattern, compiled; ValueError unless it compiles and has a group."""
    try:
        rx = re.compile(pattern, re.MULTILINE)
    except re.error as err:
        raise ValueError(f"answer_pattern: not a regular expression ({err})") from None
    if rx.groups < 1:
        raise ValueError("answer_pattern: needs a group that captures the choice, e.g. 'Final Response:\\s*([AB])\\b'")
    return rx


def check_template(system: str, user: str, answer_pattern: str) -> None:
    """Refuse (ValueError naming the key) unknown placeholders, missing ones, and an answer
    pattern that does not compile or captures nothing."""
    seen: set[str] = set()
    for key, text in (("system", system), ("user", user)):
        for name in placeholders(text, key):
            if name not in PLACEHOLDERS:
                known = ", ".join("{%s}" % p for p in PLACEHOLDERS)
                raise ValueError(f"{key}: unknown placeholder {{{name}}}; use {known} (write {{{{ and }}}} for "
                                 "literal braces)")
            seen.add(name)
    missing = [p for p in PLACEHOLDERS if p not in seen]
    if missing:
        raise ValueError(f"user: the template never shows {', '.join('{%s}' % p for p in missing)}; the judge needs "
                         "the query, the principles and both responses")
    compile_pattern(answer_pattern)


def template_version(system: str, user: str, answer_pattern: str) -> str:
    """``file-<hash>``: part of every cache key, so a changed text is never served old answers."""
    h = hashlib.sha256("\x1f".join((system, user, answer_pattern)).encode()).hexdigest()[:16]
    return f"file-{h}"


def render(system: str, user: str, *, query: str, constitution: str, response_a: str,
           response_b: str) -> tuple[str, str]:
    """(system message, user message) with the placeholders filled in."""
    values = {"query": query, "constitution": constitution, "response_a": response_a, "response_b": response_b}
    return system.format(**values), user.format(**values)


def parse_choice(text: str, pattern: str | re.Pattern) -> tuple[str | None, str]:
    """(choice, rationale): "A", "B", "tie" or None (no match, or the group reads something
    else), and the text before the last match (a leading ``Comparison:`` dropped)."""
    rx = pattern if isinstance(pattern, re.Pattern) else compile_pattern(pattern)
    matches = list(rx.finditer(text or ""))
    if not matches:
        return None, (text or "").strip()
    m = matches[-1]
    word = (m.group("choice") if "choice" in rx.groupindex else m.group(1)) or ""
    word = word.strip(" *_\"'()[].").upper()
    choice = word if word in ("A", "B") else "tie" if word in _TIE_WORDS else None
    rationale = re.sub(r"^[\s*_]*comparison[\s*_]*:[\s*_]*", "", text[: m.start()].strip(), flags=re.IGNORECASE)
    return choice, rationale.strip(" *_\n")
