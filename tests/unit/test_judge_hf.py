"""The local Hugging Face judge on the demo model (mechanics only: its texts mean nothing).

The judge's choice is checked against log-probabilities computed here, independently of
`HFJudge`: the documented scoring text (the judge prompt as a user turn of the chat
template, then ``Final Response:``) in one forward pass of the model loaded with the
Auto classes, the letters read at its last position. The two computations differ in
shape (the judge runs context + letter), so their values agree to a tolerance, not bit
for bit; a choice is checked wherever the two letters are further apart than that.
The demo model prefers "A" after any prompt (by about 0.5 nats), so a copy of it whose
output rows for " A" and " B" are swapped (input embeddings untouched: the same
contexts, the letters' probabilities exchanged) is the clear case for "B".
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sami_core.judge.cache import JudgmentCache
from sami_core.judge.client import HFJudge
from sami_core.judge.pairs import Pair
from sami_core.judge.runner import JudgeSettings, judge_pairs, plan_tasks, verdict_of
from sami_core.spec import LLMSpec

ATOL = 2e-3  # nats: the judge prints 4 decimals; float32 differences between the two computations are ~1e-5
CLEAR = 10 * ATOL  # a margin beyond doubt: the choice must follow it

PAIRS = [Pair(f"{i}@0.0", str(i), f"POST: my day number {i}", "1. Be concise.\n2. Be kind.", 0.0,
              f"A short day {i}.", f"A much longer account of day {i} and more.", "ckpt", "base")
         for i in range(3)]


class LetterScorer:
    """log p(" A") and log p(" B") after the judge's scoring context, computed here."""

    def __init__(self, model_dir: Path) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.lm = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        self.letter_ids = {}
        for letter in ("A", "B"):
            ids = self.tok(" " + letter, add_special_tokens=False)["input_ids"]
            assert len(ids) == 1, f"' {letter}' is {len(ids)} tokens in the demo vocabulary"
            self.letter_ids[letter] = ids[0]

    def __call__(self, prompt: str) -> dict[str, float]:
        import torch

        text = self.tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                            add_generation_prompt=True) + "Final Response:"
        ids = self.tok(text, add_special_tokens=True, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            lp = torch.log_softmax(self.lm(input_ids=ids).logits[0, -1].double(), dim=-1)
        return {k: float(lp[i]) for k, i in self.letter_ids.items()}


def judged_logprobs(raw: str) -> dict[str, float]:
    m = re.search(r"log p\(A\) = (-?\d+\.\d+), log p\(B\) = (-?\d+\.\d+)", raw)
    assert m, raw
    return {"A": float(m.group(1)), "B": float(m.group(2))}


def check_choices(model_dir: Path, tmp_path: Path) -> list[str]:
    """Judge PAIRS in both orders with HFJudge on `model_dir`; every choice is the likelier
    letter as computed by LetterScorer. Returns the choices."""
    # float32 wherever it runs (on CUDA "auto" would be bfloat16, far coarser than ATOL)
    spec = LLMSpec(provider="hf", model=str(model_dir), api_key_env=None, dtype="float32")
    judge = HFJudge(spec)
    settings = JudgeSettings("hf", spec.model, order="both")
    report = judge_pairs(pairs=PAIRS, client_factory=lambda: judge,
                         cache=JudgmentCache([], write_to=tmp_path / "c.jsonl"), settings=settings, concurrency=4)
    assert len(report.judgments) == 6 and report.sent == 6
    prompts = {t.key: t.prompt for t in plan_tasks(PAIRS, settings)}
    score = LetterScorer(model_dir)
    clear = 0
    for j in report.judgments:
        assert j["status"] == "ok", j
        mine = score(prompts[tuple(j["key"])])
        theirs = judged_logprobs(j["raw"])
        assert theirs == pytest.approx(mine, abs=ATOL), (j["key"], theirs, mine)
        likelier = "A" if mine["A"] > mine["B"] else "B"
        if abs(mine["A"] - mine["B"]) > ATOL:  # within ATOL the two computations may rank them either way
            assert j["choice"] == likelier, (j["key"], mine, j["raw"])
            assert j["verdict"] == verdict_of(likelier, j["order"])
            clear += abs(mine["A"] - mine["B"]) > CLEAR
        else:
            assert j["choice"] in ("A", "B")
    assert clear == len(report.judgments), "the case is meant to be clear: every margin beyond CLEAR"
    return [j["choice"] for j in report.judgments]


def test_hf_judge_picks_the_likelier_letter(demo_model_dir: Path, tmp_path: Path):
    choices = check_choices(demo_model_dir, tmp_path)
    assert set(choices) == {"A"}  # the demo model's preference (see the module docstring)
    judge = HFJudge(LLMSpec(provider="hf", model=str(demo_model_dir), api_key_env=None))
    lp = judge.letter_logprobs("Which is better?")
    assert set(lp) == {"A", "B"} and all(v < 0 for v in lp.values())
    settings = JudgeSettings("hf", str(demo_model_dir), order="both")
    again = judge_pairs(PAIRS, None, JudgmentCache([tmp_path / "c.jsonl"]), settings)
    assert again.sent == 0 and again.cached == 6
    # "A" with the candidate shown first, then second: a win, then a loss
    assert [j["verdict"] for j in again.judgments] == ["win", "loss"] * 3


def test_hf_judge_follows_the_letters_when_their_probabilities_are_swapped(demo_model_dir: Path, tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    a, b = (tok(" " + x, add_special_tokens=False)["input_ids"][0] for x in ("A", "B"))
    head = model.get_input_embeddings().weight.detach().clone()
    head[[a, b]] = head[[b, a]]
    model.config.tie_word_embeddings = False
    model.lm_head = torch.nn.Linear(head.shape[1], head.shape[0], bias=False)
    model.lm_head.weight = torch.nn.Parameter(head)
    swapped = tmp_path / "swapped"
    model.save_pretrained(swapped)
    tok.save_pretrained(swapped)

    choices = check_choices(swapped, tmp_path)
    assert set(choices) == {"B"}


def test_hf_judge_reads_a_template_files_system_message(demo_model_dir: Path, tmp_path: Path):
    from sami_core.spec import validate_spec

    template = validate_spec("judge", {"candidate": {"path": "c"}, "baseline": {"path": "b"},
                                       "template": "paper"}).template
    judge = HFJudge(LLMSpec(provider="hf", model=str(demo_model_dir), api_key_env=None, dtype="float32"))
    ctx = judge._context("the user message", template.system)
    assert ctx.index(template.system) < ctx.index("the user message") and ctx.endswith("Final Response:")
    assert judge.letter_logprobs("Which?", template.system) != judge.letter_logprobs("Which?")
    settings = JudgeSettings("hf", judge.model, order="both", template=template)
    report = judge_pairs(PAIRS, lambda: judge, JudgmentCache([]), settings)
    # its answers end "Final Response: A|B": the paper template's pattern reads every one
    assert [j["status"] for j in report.judgments] == ["ok"] * 6
    assert all(j["prompt_tokens"] is None for j in report.judgments)  # a local judge bills nothing
