"""Response sources and the pairs a judge compares.

A source is a `sample` run directory, its ``responses.jsonl`` (one JSON object per line
with query_id, query, constitution, temperature, response, optionally n_tokens), or a
published response file of the paper (``sami_core.results``). Candidate and baseline are
joined on (query_id, temperature), or on query_id alone when a temperature is chosen for
a side; a pair needs the same constitution on both sides, and the judge is shown that
constitution: with a constitution set, the one the query drew (``constitution_name``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sami_core.contract import RESPONSES_FILE
from sami_core.errors import DataError


@dataclass(frozen=True)
class Response:
    query_id: str
    query: str
    constitution: str
    temperature: float | None
    response: str
    n_tokens: int | None = None
    constitution_name: str | None = None  # the constitution drawn from a set (sample stage)


@dataclass(frozen=True)
class ResponseSet:
    name: str
    path: str
    rows: tuple[Response, ...]


@dataclass(frozen=True)
class Pair:
    """Candidate vs baseline for one query under one constitution."""

    pair_id: str  # "<query_id>@<temperature>"
    query_id: str
    query: str
    constitution: str
    temperature: float | None
    candidate: str  # the candidate's response text
    baseline: str
    candidate_source: str
    baseline_source: str
    candidate_tokens: int | None = None
    baseline_tokens: int | None = None
    constitution_name: str | None = None  # the drawn constitution's name, when the sources record it


def _temp(v) -> float | None:
    return None if v is None else float(v)


def _read_jsonl(path: Path) -> list[Response]:
    rows = []
    need = ("query_id", "query", "constitution", "response")
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path}:{n}: not a JSON line") from None
        missing = [k for k in need if k not in rec]
        if missing:
            raise DataError(f"{path}:{n}: missing {', '.join(missing)} (expected the sample stage's responses.jsonl)")
        rows.append(Response(str(rec["query_id"]), str(rec["query"]), str(rec["constitution"]),
                             _temp(rec.get("temperature")), str(rec["response"]), rec.get("n_tokens"),
                             rec.get("constitution_name")))
    return rows


def load_responses(path: str | Path, name: str | None = None, temperature: float | None = None) -> ResponseSet:
    """Read a source; keep only rows at ``temperature`` when given."""
    p = Path(path)
    if p.is_dir():
        if not (p / RESPONSES_FILE).is_file():
            raise DataError(f"{p} has no responses.jsonl (is it a sample run directory?)")
        default_name, rows = p.name, _read_jsonl(p / RESPONSES_FILE)
    elif p.suffix == ".jsonl" and p.is_file():
        default_name = p.parent.name if p.name == RESPONSES_FILE else p.stem
        rows = _read_jsonl(p)
    elif p.suffix == ".json" and p.is_file():
        from sami_core.results import load_published

        res = load_published(p)
        default_name = res.source
        rows = [Response(r.query_id, r.question, r.constitution, res.temperature, r.response) for r in res.rows]
    else:
        raise DataError(f"response source {str(p)!r} does not exist or is not a run directory, .jsonl or .json file")
    if temperature is not None:
        temps = sorted({r.temperature for r in rows if r.temperature is not None})
        rows = [r for r in rows if r.temperature is not None and abs(r.temperature - temperature) < 1e-9]
        if not rows:
            raise DataError(f"{p}: no responses at temperature {temperature}; it has {temps}")
    if not rows:
        raise DataError(f"{p}: no responses")
    return ResponseSet(name or default_name, str(p), tuple(rows))


def make_pairs(candidate: ResponseSet, baseline: ResponseSet, *, join_on_temperature: bool = True) -> list[Pair]:
    """Pairs in the candidate's order. Join key: (query_id, temperature), or query_id alone.

    Raises DataError when no query matches, or when matched responses were made under
    different constitutions (a judge compares responses to the same instructions)."""

    def key(r: Response):
        return (r.query_id, r.temperature) if join_on_temperature else r.query_id

    base = {}
    for r in baseline.rows:
        if key(r) in base:
            raise DataError(f"baseline {baseline.name}: query {r.query_id} appears twice"
                            f"{'' if join_on_temperature else ' (choose baseline.temperature)'}")
        base[key(r)] = r
    pairs, mismatched, seen = [], [], set()
    for c in candidate.rows:
        k = key(c)
        if k in seen:
            raise DataError(f"candidate {candidate.name}: query {c.query_id} appears twice"
                            f"{'' if join_on_temperature else ' (choose candidate.temperature)'}")
        seen.add(k)
        b = base.get(k)
        if b is None:
            continue
        if c.constitution.strip() != b.constitution.strip():
            mismatched.append(c.query_id)
            continue
        temp = c.temperature if join_on_temperature else None
        pid = f"{c.query_id}@{temp}" if join_on_temperature else f"{c.query_id}@{c.temperature}/{b.temperature}"
        pairs.append(Pair(pid, c.query_id, c.query, c.constitution, c.temperature,
                          c.response, b.response, candidate.name, baseline.name, c.n_tokens, b.n_tokens,
                          c.constitution_name or b.constitution_name))
    if mismatched:
        raise DataError(
            f"{len(mismatched)} queries (e.g. {', '.join(mismatched[:3])}) have different constitutions in "
            f"{candidate.name} and {baseline.name}; judge sources sampled under the same constitution"
        )
    if not pairs:
        raise DataError(f"no query of {candidate.name} matches one of {baseline.name} "
                        f"(joined on query_id{' and temperature' if join_on_temperature else ''})")
    return pairs
