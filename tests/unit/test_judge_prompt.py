"""The judge prompt, the A/B order and the answer parser."""

from __future__ import annotations

import pytest

from sami_core.judge.prompt import (
    TEMPLATE_VERSION, build_prompt, candidate_first, parse_answer, shuffled_principles, split_principles,
)

CONST = "1. Summaries should be concise.\n2. Summaries should be accurate.\n3. Summaries should be neutral."


@pytest.mark.parametrize("text, choice", [
    ("Comparison: A is shorter and accurate.\nFinal Response: A", "A"),
    ("Final Response: B", "B"),
    ("Final response: (A)", "A"),
    ("**Final Response:** B", "B"),
    ("**Final Response**: \"B\"", "B"),
    ("Final Answer: A", "A"),
    ("final answer - b", "B"),
    ("Final Response: Summary B", "B"),
    ("Final Response: A.", "A"),
    ("The final answer is B", "B"),
    ("Final Response:\nA", "A"),
    ("Final Response: Tie", "tie"),
    ("Final Verdict: Neither", "tie"),
    ("Final Response: Both are equal", "tie"),
    ("Final Response: A\n...\nFinal Response: B", "B"),  # the last label counts
    ("B", "B"),
    ("(A)", "A"),
    ("Final Response: A or B", None),  # the template echoed
    ('Final Response: <"A" or "B">', None),
    ("Both summaries have merits.", None),
    ("I prefer A", None),  # no label, not a bare letter
    ("", None),
])
def test_parse_answer_variants(text, choice):
    assert parse_answer(text).choice == choice


def test_parse_answer_keeps_the_rationale():
    p = parse_answer("Comparison: Summary A covers the key point in fewer words.\nFinal Response: A")
    assert p.rationale == "Summary A covers the key point in fewer words."
    assert parse_answer("**Comparison:** B is vaguer.\n**Final Response:** A").rationale == "B is vaguer."


def test_prompt_shows_everything_once_with_shuffled_principles():
    p = build_prompt("POST: my cat ran away", CONST, "resp one", "resp two", seed=1)
    assert "my cat ran away" in p and "POST: POST" not in p
    assert p.index("resp one") < p.index("resp two")
    assert "Summary A:" in p and "Summary B:" in p and "Final Response:" in p
    for line in split_principles(CONST):
        assert p.count(line) == 1
    assert '"Tie"' not in p and '"Tie"' in build_prompt("q", CONST, "a", "b", allow_tie=True)
    assert "Response A:" in build_prompt("q", CONST, "a", "b", task="dialogue")
    assert isinstance(TEMPLATE_VERSION, str) and TEMPLATE_VERSION


def test_principle_shuffle_is_seeded_and_varies():
    orders = {shuffled_principles(CONST, seed=0, query=f"q{i}") for i in range(30)}
    assert len(orders) > 1  # the order depends on the pair
    assert shuffled_principles(CONST, 0, "q1") == shuffled_principles(CONST, 0, "q1")
    assert shuffled_principles(CONST, 0, "q1", shuffle=False) == CONST
    assert split_principles("Be kind.") == ["Be kind."]


def test_candidate_first_is_a_seeded_balanced_coin():
    flips = [candidate_first(0, str(i), f"q{i}", "c", "b") for i in range(400)]
    assert 150 < sum(flips) < 250
    assert flips == [candidate_first(0, str(i), f"q{i}", "c", "b") for i in range(400)]
    assert flips != [candidate_first(1, str(i), f"q{i}", "c", "b") for i in range(400)]
