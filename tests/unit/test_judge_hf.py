"""The local Hugging Face judge on the demo model (mechanics only: its texts mean nothing)."""

from __future__ import annotations

from pathlib import Path

from sami_core.judge.cache import JudgmentCache
from sami_core.judge.client import HFJudge
from sami_core.judge.pairs import Pair
from sami_core.judge.runner import JudgeSettings, judge_pairs
from sami_core.spec import LLMSpec


def test_hf_judge_picks_the_likelier_letter(demo_model_dir: Path, tmp_path: Path):
    spec = LLMSpec(provider="hf", model=str(demo_model_dir), api_key_env=None)
    judge = HFJudge(spec)
    pairs = [Pair(f"{i}@0.0", str(i), f"POST: my day number {i}", "1. Be concise.\n2. Be kind.", 0.0,
                  f"A short day {i}.", f"A much longer account of day {i} and more.", "ckpt", "base")
             for i in range(3)]
    settings = JudgeSettings("hf", spec.model, order="both")
    report = judge_pairs(pairs, lambda: judge, JudgmentCache([], write_to=tmp_path / "c.jsonl"), settings,
                         concurrency=4)
    assert len(report.judgments) == 6 and report.sent == 6
    for j in report.judgments:
        assert j["status"] == "ok" and j["verdict"] in ("win", "loss") and "log p(A)" in j["raw"]
    lp = judge.letter_logprobs("Which is better?")
    assert set(lp) == {"A", "B"} and all(v < 0 for v in lp.values())
    again = judge_pairs(pairs, None, JudgmentCache([tmp_path / "c.jsonl"]), settings)
    assert again.sent == 0 and again.cached == 6
