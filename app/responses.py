"""What the Responses page (app/views/responses.py) shows, as functions without
Streamlit: source labels, the default pair of sources, response lengths, verdict
labels, a constitution as text."""

from __future__ import annotations

from collections.abc import Sequence

from sami_core.stats import count_tokens_approx, count_words

# The verdict filter: label -> stored verdict (db.reads.responses.VERDICTS), None = any.
VERDICT_FILTERS: dict[str, str | None] = {
    "any": None, "candidate won": "candidate", "baseline won": "baseline", "tie": "tie", "invalid": "invalid",
    "error": "error", "not judged": "none",
}
VERDICT_TEXT = {"candidate": "candidate won", "baseline": "baseline won", "tie": "tie",
                "invalid": "invalid (no choice named)", "error": "error (no answer)"}
PAGE_SIZES = (5, 10, 25, 50)

def source_label(src: dict) -> str:
    """``<label> (#id, kind, n responses)``."""
    return f"{src['label']} (#{src['id']}, {src['kind']}, {src.get('n_responses', 0)} responses)"


def default_pair(sources: Sequence[dict]) -> tuple[int | None, int | None]:
    """(left, right) source ids to start with: the newest checkpoint (else the newest
    source) against the first baseline (else the oldest other source)."""
    if not sources:
        return None, None
    checkpoints = [s for s in sources if s["kind"] == "checkpoint"]
    left = (checkpoints or list(sources))[-1]["id"]
    others = [s for s in sources if s["id"] != left]
    baselines = [s for s in others if s["kind"] == "baseline"]
    right = (baselines or others or list(sources))[0]["id"]
    return left, right


def lengths(text: str, n_tokens: int | None) -> str:
    """``<tokens> tokens · <words> words`` (tokens: the model's count, else approximate: ``~``)."""
    tokens = f"{n_tokens}" if n_tokens is not None else f"~{count_tokens_approx(text)}"
    return f"{tokens} tokens · {count_words(text)} words"


def principles_text(principles: Sequence[dict] | None) -> str:
    """A constitution's principles, numbered, one a line."""
    return "\n".join(f"{k}. {p.get('principle', '')}" for k, p in enumerate(principles or [], start=1))


def verdict_line(j: dict, left_id: int, names: tuple[str, str]) -> str:
    """One judgment of a pair, e.g. ``gpt-4o: candidate won (candidate = left: it-1; shown first)``."""
    left_is_candidate = j["candidate_id"] == left_id
    side, name = ("left", names[0]) if left_is_candidate else ("right", names[1])
    shown = "shown first" if j["candidate_position"] == "A" else "shown second"
    return (f"{j['judge_model']}: {VERDICT_TEXT.get(j['verdict'], j['verdict'])} "
            f"(candidate = {side}: {name}, {shown})")
