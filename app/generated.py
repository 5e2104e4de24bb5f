"""What the Generated data page (app/views/generated.py) shows, as functions without
Streamlit: generate jobs' labels and the default one, the filters' names in words, the
counts per filter as a table, and the status choices."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from db.reads.generated import ALL, DROPPED, KEPT

# Why a response's query was dropped, by the name generated_responses.dropped_by stores
# (sami_core.prompts.drop_reasons; the response filters are the generate spec's `filters`).
REASON_TEXT = {
    None: "kept",
    "min_chars": "too short (min_chars)",
    "drop_substrings": "contains a dropped substring (drop_substrings)",
    "ends_with": "does not end as required (ends_with)",
    "require_distinct": "identical to another response of its query (require_distinct)",
    "other_response": "another response of its query failed a filter",
}
PAGE_SIZES = (5, 10, 25, 50)


def reason_text(reason: str | None) -> str:
    return REASON_TEXT.get(reason, str(reason))


def job_label(job: dict) -> str:
    """``<experiment>: generate-1 (job #5, succeeded, 128 responses)``."""
    name = job.get("name") or job.get("label") or "generate"
    where = f"{job['experiment']}: " if job.get("experiment") else ""
    return f"{where}{name} (job #{job['id']}, {job['status']}, {job.get('n_rows', 0)} responses)"


def default_job(jobs: Sequence[dict], experiment_id: int | None = None) -> int | None:
    """The job to show first (``jobs`` newest first): the experiment's latest generate job
    with stored responses, else its latest; without an experiment, the latest with stored
    responses, else the latest."""
    pool = [j for j in jobs if experiment_id is None or j["experiment_id"] == experiment_id] or list(jobs)
    with_rows = [j for j in pool if j.get("n_rows")]
    return (with_rows or pool)[0]["id"] if pool else None


def counts_frame(counts: Sequence[dict]) -> pd.DataFrame:
    """db.reads.generated.filter_counts rows -> columns outcome (in words), filter, queries, responses."""
    return pd.DataFrame([{"outcome": reason_text(c["dropped_by"]), "filter": c["dropped_by"] or "-",
                          "queries": c["queries"], "responses": c["responses"]} for c in counts],
                        columns=["outcome", "filter", "queries", "responses"])


def status_choices(counts: Sequence[dict]) -> list[str]:
    """The status filter's choices: all, kept, dropped, then each filter that dropped a response."""
    return [ALL, KEPT, DROPPED, *[c["dropped_by"] for c in counts if c["dropped_by"]]]


def status_label(choice: str) -> str:
    return {ALL: "all queries", KEPT: "kept queries", DROPPED: "dropped queries"}.get(
        choice, f"dropped by {choice}")


def kept_summary(counts: Sequence[dict], n_queries: int) -> str:
    """``kept 8 of 20 queries (16 of 40 responses)``."""
    kept = next((c for c in counts if c["dropped_by"] is None), {"queries": 0, "responses": 0})
    responses = sum(c["responses"] for c in counts)
    return (f"kept {kept['queries']} of {n_queries} queries ({kept['responses']} of {responses} responses) "
            "for training")
