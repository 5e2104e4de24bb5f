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
