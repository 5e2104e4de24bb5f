"""Rule judges: deterministic, offline verdicts on one named property of the responses.

A rule judge reads only the two responses (not the query, not the constitution) and
decides by a rule anyone can check by hand, so it is honest about what it judges: the
win rate it gives measures that property, nothing more. It loads no model and sends no
request. Its answer is written in the paper's format (``Comparison: ...`` then
``Final Response: A`` / ``B`` / ``Tie``), so the judge stage parses, caches, stores and
ingests it like any other judge's.

Rules (``judge: {provider: rule, model: NAME}``):

- ``concision``: the embedded demo's judge (the demo constitution's first principle asks
  for brief summaries). An empty response loses to a non-empty one; otherwise the one
  with fewer filler phrases (:data:`FILLER_PHRASES`) wins; with as many, the one with
  fewer words wins; with as many words too, a tie. It says nothing about whether a
  summary is faithful, fluent or helpful.

Bump :data:`RULES_VERSION` whenever a rule changes: it is part of the cache key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

RULES_VERSION = "rules-v1"

# Filler phrases: words that add length and no content (the demo model writes these
# under the concision principle's antithesis).
FILLER_PHRASES = ("basically", "really", "actually", "literally", "you know", "i mean", "kind of", "sort of",
                  "in a way", "to be honest", "more or less", "like,")
_FILLER = re.compile(r"(?<![\w'])(?:" + "|".join(re.escape(p) for p in FILLER_PHRASES) + r")(?![\w'])", re.IGNORECASE)


@dataclass(frozen=True)
class Concision:
    """What the concision rule counts in one response."""

    words: int
    fillers: list[str]

    @classmethod
    def of(cls, text: str) -> "Concision":
        text = text or ""
        return cls(len(text.split()), [m.group(0).lower() for m in _FILLER.finditer(text)])

    def describe(self) -> str:
        if self.words == 0:
            return "empty"
        n = len(self.fillers)
        filler = "no filler" if n == 0 else f"{n} filler phrase{'s' if n != 1 else ''}"
        return f"{self.words} word{'s' if self.words != 1 else ''}, {filler}"

    def cost(self) -> tuple[int, int, int]:
        """Lower is more concise: (empty, filler phrases, words)."""
        return (int(self.words == 0), len(self.fillers), self.words)


def judge_concision(response_a: str, response_b: str) -> str:
    """The concision rule's answer for responses shown as A and B (see the module doc)."""
    a, b = Concision.of(response_a), Concision.of(response_b)
    ca, cb = a.cost(), b.cost()
    if ca == cb:
        choice, why = "Tie", "equally concise"
    else:
        first = "A" if ca < cb else "B"
        deciding = ("one is empty" if ca[0] != cb[0] else "fewer filler phrases" if ca[1] != cb[1]
                    else "fewer words")
        choice, why = first, f"{first} is more concise ({deciding})"
    return f"Comparison: A: {a.describe()}; B: {b.describe()}; {why}.\nFinal Response: {choice}"


RULES = {"concision": judge_concision}


def rule_names() -> tuple[str, ...]:
    return tuple(RULES)


class RuleJudge:
    """A :class:`sami_core.judge.client.ChatClient`-like judge that applies a rule to the
    two responses shown (``judge_shown``); the runner calls it instead of ``complete``."""

    def __init__(self, spec: Any):
        if spec.model not in RULES:
            raise ValueError(f"judge.model: no rule named {spec.model!r}; the rule judge knows: "
                             f"{', '.join(RULES)}")
        self.model = spec.model
        self.provider_id = f"rule:{RULES_VERSION}"
        self.sent = 0  # judgments made (no request is sent)
        self._rule = RULES[spec.model]

    def judge_shown(self, response_a: str, response_b: str) -> str:
        self.sent += 1
        return self._rule(response_a, response_b)

    async def complete(self, prompt: str) -> str:
        raise TypeError("a rule judge reads the two responses, not a prompt: call judge_shown(response_a, response_b)")

    async def aclose(self) -> None:
        return None
