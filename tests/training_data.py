"""Training data for the recipe's tests: a generate-stage-shaped ``data.jsonl`` built from
the shipped posts, so that no test has to run generation first."""

from __future__ import annotations

import json
from pathlib import Path

from sami_core.data import load_queries
from sami_core.prompts import build_prompt
from sami_core.spec import DataSpec


def make_training_data(path: Path, n_queries: int = 12, n: int = 2) -> Path:
    """A generate-stage-shaped data.jsonl from shipped posts (responses: post snippets)."""
    posts = load_queries(DataSpec())
    rows = []
    for k in range(n_queries):
        q = posts[k]
        cons = [f"1. Summaries should be {'brief' if i == 0 else 'long'} (variant {i})." for i in range(n)]
        rows.append({
            "query_id": q.id, "query": q.text[:300],
            "prompts": [build_prompt("summarization", c, q.text[:300]) for c in cons],
            "constitutions": cons, "flips": [[i > 0] for i in range(n)],
            "responses": [posts[50 + k * n + i].text[: 40 + 10 * i] for i in range(n)],
        })
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# Responses of the generated-data helper, in turn: kept ones end with ".", the others each fail one
# filter of GENERATED_FILTERS (or, the two identical, require_distinct).
GENERATED_FILTERS = {"min_chars": 3, "drop_substrings": ["[insert"], "ends_with": ["."], "require_distinct": True}


def generated_records(n_queries: int = 20, n: int = 2) -> list[dict]:
    """A generate stage's filtered.jsonl records (the stage's format: query_id, query,
    variant, constitution, constitution_name, prompt, response, n_tokens, eos, kept,
    dropped_by) for shipped posts; query k's responses are kept for k % 5 in (0, 1), else
    dropped by ends_with (k % 5 == 2), drop_substrings (3) or require_distinct (4), the
    reasons given by the stage's own sami_core.prompts.drop_reasons."""
    from types import SimpleNamespace

    from sami_core.prompts import drop_reasons

    posts = load_queries(DataSpec())
    filters = SimpleNamespace(**GENERATED_FILTERS)
    out = []
    for k in range(n_queries):
        q = posts[k]
        kind = k % 5
        responses = [f"Summary {k}.{i} of post {q.id}." for i in range(n)]
        if kind == 2:
            responses[-1] = responses[-1].rstrip(".") + " and then"  # no ending "."
        elif kind == 3:
            responses[0] = f"Summary {k} [insert summary]."
        elif kind == 4:
            responses = [f"The same summary {k}."] * n
        cons = [f"1. Summaries should be {'brief' if i == 0 else 'long'}." for i in range(n)]
        for i, (r, reason) in enumerate(zip(responses, drop_reasons(responses, filters))):
            out.append({"query_id": q.id, "query": q.text[:300], "variant": i, "constitution": cons[i],
                        "constitution_name": None, "prompt": build_prompt("summarization", cons[i], q.text[:300]),
                        "response": r, "n_tokens": len(r.split()), "eos": True, "kept": reason is None,
                        "dropped_by": reason})
    return out


def write_generated_run(run_dir: Path, n_queries: int = 20, n: int = 2) -> dict:
    """A generate run directory with filtered.jsonl (:func:`generated_records`); its outputs."""
    from sami_core.contract import FILTERED_FILE

    records = generated_records(n_queries, n)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / FILTERED_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    kept = len({r["query_id"] for r in records if r["kept"]})
    return {"data": "data.jsonl", "filtered": FILTERED_FILE, "n_queries": n_queries, "n_kept": kept,
            "n_dropped": n_queries - kept, "n_constitutions": n}
