"""What the Responses page (app/views/responses.py) shows, as functions without
Streamlit: source labels and their short aliases, the default pair of sources, response
lengths, verdict labels, a constitution as text, search matches highlighted as escaped
HTML, and the judge form's choices."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence

from sami_core.stats import count_tokens_approx, count_words

# The verdict filter: label -> stored verdict (db.reads.responses.VERDICTS), None = any.
VERDICT_FILTERS: dict[str, str | None] = {
    "any": None, "candidate won": "candidate", "baseline won": "baseline", "tie": "tie", "invalid": "invalid",
    "error": "error", "not judged": "none",
}
VERDICT_TEXT = {"candidate": "candidate won", "baseline": "baseline won", "tie": "tie",
                "invalid": "invalid (no choice named)", "error": "error (no answer)"}
PAGE_SIZES = (5, 10, 25, 50)
# A post longer than this (characters) is folded into an expander, so that both responses
# stay in view; shorter ones are shown whole.
POST_FOLD_CHARS = 600
# The judge form's providers (as `sami judge --provider`; auto: OpenAI when its key is set,
# Azure OpenAI when its variables are, else the local hf judge on the demo model).
JUDGE_PROVIDERS = ("auto", "openai", "azure", "hf", "rule")
JUDGE_TEMPLATES = {"built-in": None, "paper": "paper"}


def short_labels(labels: Sequence[str]) -> dict[str, str]:
    """Each label without the ``-``-separated words that begin or end every label (the
    shipped files all end ``-constitution-temperature-0.0``), marked ``…`` where cut, so
    that the words where labels differ come first and survive a narrow select box. A
    label keeps at least one word; a single label keeps its name."""
    words = [str(x).split("-") for x in labels]
    if len(set(labels)) < 2:
        return {str(x): str(x) for x in labels}
    shortest = min(len(w) for w in words)
    pre = 0
    while pre < shortest - 1 and len({tuple(w[:pre + 1]) for w in words}) == 1:
        pre += 1
    suf = 0
    while suf < shortest - pre - 1 and len({tuple(w[len(w) - suf - 1:]) for w in words}) == 1:
        suf += 1
    out = {}
    for label, w in zip(labels, words):
        middle = "-".join(w[pre:len(w) - suf])
        out[str(label)] = ("…" if pre else "") + middle + ("…" if suf else "")
    return out


def source_label(src: dict, alias: str | None = None) -> str:
    """``#id <alias or label>``: what a select box shows (the id first: it survives any cut)."""
    return f"#{src['id']} {alias or src['label']}"


def source_details(src: dict) -> str:
    """``<full label> · kind · n responses``: the caption under a select box (it wraps)."""
    return f"{src['label']} · {src['kind']} · {src.get('n_responses', 0)} responses"


def highlight_html(text: str, needle: str | None) -> str:
    """``text`` as HTML for st.html: every character escaped (model text is untrusted),
    line breaks kept, each case-insensitive occurrence of ``needle`` in ``<mark>``."""
    needle = (needle or "").strip()
    parts = re.split(f"({re.escape(needle)})", text, flags=re.IGNORECASE) if needle else [text]
    body = "".join(f"<mark>{html.escape(p)}</mark>" if k % 2 else html.escape(p) for k, p in enumerate(parts))
    return f'<div style="white-space: pre-wrap; font-family: monospace; font-size: 0.9rem">{body}</div>'


def is_long_post(text: str | None) -> bool:
    return text is not None and len(text) > POST_FOLD_CHARS


def post_title(text: str) -> str:
    """The folded post's expander title (plain text: escape it for markdown)."""
    first = " ".join(text.split())[:80]
    return f"Post ({count_words(text)} words): {first}…"


def plan_text(estimate: object) -> str:
    """What queueing a judge job would do, from a sami_core RequestEstimate."""
    e = estimate
    return (f"{e.judgments} judgments of {e.pairs} pairs: {e.cached} already cached (answered without a request), "
            f"{e.to_send} requests to send")


def judge_sides(sources: Mapping[int, dict], candidate: int, baseline: int) -> str:
    """``candidate <label> against baseline <label>``."""
    return f"candidate {sources[candidate]['label']} against baseline {sources[baseline]['label']}"


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
