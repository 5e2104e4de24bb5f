"""Token usage of judge jobs and what it costs (pure; no I/O).

Prices come from the judge's spec (:class:`sami_core.spec.LLMSpec`):
``price_prompt_per_mtok`` and ``price_completion_per_mtok``, in USD per million tokens.

    cost = prompt_tokens * price_prompt / 1e6 + completion_tokens * price_completion / 1e6
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def prices(llm: Any) -> tuple[float, float] | None:
    """(prompt, completion) USD per million tokens of a judge spec (an LLMSpec or its
    JSON form), or None when it gives none."""
    get = llm.get if isinstance(llm, Mapping) else (lambda k: getattr(llm, k, None))
    p, c = get("price_prompt_per_mtok"), get("price_completion_per_mtok")
    return None if p is None or c is None else (float(p), float(c))


def cost_usd(prompt_tokens: int | None, completion_tokens: int | None, llm: Any) -> float | None:
    """Estimated cost in USD; None without prices or without token counts."""
    pr = prices(llm) if llm is not None else None
    if pr is None or prompt_tokens is None or completion_tokens is None:
        return None
    return prompt_tokens * pr[0] / 1e6 + completion_tokens * pr[1] / 1e6


def format_usd(cost: float) -> str:
    return f"${cost:.4f}" if cost < 1 else f"${cost:,.2f}"


def usage_text(prompt_tokens: int | None, completion_tokens: int | None, cost: float | None = None) -> str:
    """``12,345 prompt + 678 completion tokens, estimated cost $0.0376`` (or ``no token
    usage reported``)."""
    if prompt_tokens is None or completion_tokens is None:
        return "no token usage reported"
    text = f"{prompt_tokens:,} prompt + {completion_tokens:,} completion tokens"
    return text + (f", estimated cost {format_usd(cost)}" if cost is not None else "")


def job_usage_text(outputs: Mapping[str, Any] | None, spec: Mapping[str, Any] | None) -> str | None:
    """A finished judge job's usage line from its outputs.json (and its spec's prices):
    what `sami jobs` and the Queue page show; None for jobs without token counts."""
    if not outputs or "prompt_tokens" not in outputs:
        return None
    cost = outputs.get("cost_usd")
    if cost is None:
        cost = cost_usd(outputs.get("prompt_tokens"), outputs.get("completion_tokens"), (spec or {}).get("judge"))
    return usage_text(outputs.get("prompt_tokens"), outputs.get("completion_tokens"), cost)
