"""The rule judge (sami_core.judge.rules): the concision rule on hand-counted cases, and
a judge stage run with it (judgments.jsonl, win rate, cache), offline and model-free."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from sami_core.judge.client import JudgeError, make_client, provider_id
from sami_core.judge.prompt import parse_answer
from sami_core.judge.rules import RULES_VERSION, Concision, judge_concision
from sami_core.judge.stage import run_judge, run_write_constitution, winrate_summary
from sami_core.pipeline import expand
from sami_core.spec import validate_spec

CONST = "1. Be concise.\n2. Be accurate."


def test_concision_counts_words_and_filler_phrases() -> None:
    c = Concision.of("So basically the author, you know, kind of likes Actually cats")
    assert c.words == 11 and c.fillers == ["basically", "you know", "kind of", "actually"]
    assert c.describe() == "11 words, 4 filler phrases"
    assert Concision.of("").describe() == "empty" and Concision.of("Cats.").describe() == "1 word, no filler"
    # whole words only: "really" inside "surreally", "like" without its comma (a verb) are no filler
    assert Concision.of("surreally I like cats").fillers == []


@pytest.mark.parametrize("a, b, choice, why", [
    ("The author lost a cat.", "The author, you know, basically lost a cat.", "A", "fewer filler phrases"),
    # fewer filler phrases wins even when longer
    ("The author lost a small grey cat last week.", "Basically the author lost a cat.", "A", "fewer filler phrases"),
    ("The author lost the cat he adopted.", "The author lost a cat.", "B", "fewer words"),
    ("The author lost a cat.", "A cat got lost here.", "Tie", None),
    ("", "The author lost a cat.", "B", "one is empty"),
    ("   ", "", "Tie", None),
])
def test_concision_rule_decides_as_written(a: str, b: str, choice: str, why: str | None) -> None:
    answer = judge_concision(a, b)
    parsed = parse_answer(answer)
    assert parsed.choice == (choice if choice != "Tie" else "tie"), answer
    assert parsed.rationale.startswith(f"A: {Concision.of(a).describe()}; B: {Concision.of(b).describe()};")
    assert (why or "equally concise") in parsed.rationale
    # the rule is symmetric: swapping the responses swaps the choice
    swapped = parse_answer(judge_concision(b, a)).choice
    assert swapped == {"A": "B", "B": "A", "Tie": "tie"}[choice]


def test_rule_judge_spec_names_the_rule_and_needs_no_key(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    s = validate_spec("judge", {"judge": {"provider": "rule", "model": "concision"},
                                "candidate": {"path": "a"}, "baseline": {"path": "b"}})
    assert provider_id(s.judge) == f"rule:{RULES_VERSION}"
    assert make_client(s.judge).provider_id == provider_id(s.judge)  # no key read, no model loaded
    with pytest.raises(SpecError, match=r"judge: .*provider 'rule': `model` names the rule, one of concision"):
        validate_spec("judge", {"judge": {"provider": "rule", "model": "gpt-4o"},
                                "candidate": {"path": "a"}, "baseline": {"path": "b"}})
    w = validate_spec("write_constitution", {"task_description": "summarise posts",
                                             "writer": {"provider": "rule", "model": "concision"}})
    with pytest.raises(JudgeError, match="'rule' can only judge"):
        run_write_constitution(w, tmp_path / "writer")


def _responses(path: Path, texts: list[str]) -> Path:
    path.mkdir(parents=True)
    rows = [{"key": [str(q), 0.0], "query_id": str(q), "query": f"post {q}", "temperature": 0.0,
             "constitution": CONST, "response": t, "n_tokens": len(t.split())} for q, t in enumerate(texts)]
    (path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_judge_stage_with_the_concision_rule(tmp_path: Path) -> None:
    cand = _responses(tmp_path / "cand", ["The author lost a cat.", "He quit.", "Same length here.",
                                          "Basically he, you know, quit."])
    base = _responses(tmp_path / "base", ["Basically the author, you know, lost a cat.", "He quit his job.",
                                          "Equal length here.", "He quit."])
    spec = validate_spec("judge", {"judge": {"provider": "rule", "model": "concision", "api_key_env": None},
                                   "candidate": {"path": str(cand), "name": "iteration-1"},
                                   "baseline": {"path": str(base), "name": "base"}, "order": "both",
                                   "shared_cache": None})
    out = run_judge(spec, tmp_path / "judge")
    assert (out["wins"], out["losses"], out["ties"], out["invalid"], out["errors"]) == (4, 2, 2, 0, 0)
    assert out["win_rate"] == pytest.approx((4 + 2 / 2) / 8)
    assert out["flip_rate"] == 0.0  # a rule has no position bias
    assert out["judge_model"] == "concision" and out["provider"] == f"rule:{RULES_VERSION}"
    lines = [json.loads(x) for x in (tmp_path / "judge" / "judgments.jsonl").read_text().splitlines()]
    first = next(j for j in lines if j["query_id"] == "0" and j["order"] == "candidate_first")
    assert first["verdict"] == "win" and first["rationale"].startswith(
        "A: 5 words, no filler; B: 8 words, 2 filler phrases; A is more concise (fewer filler phrases)")
    # a second run on a fresh directory reuses nothing without a shared cache but decides the same
    again = run_judge(spec, tmp_path / "judge2")
    assert again["win_rate"] == out["win_rate"]


def test_the_judge_log_prints_the_win_rate_of_each_temperature(tmp_path: Path, capsys) -> None:  # noqa: ANN001
    """Responses sampled at two temperatures make two win rates (as the Win rates page shows
    them): the stage's log line prints both, not 'n/a'."""
    def two_temperatures(path: Path, texts: list[str]) -> Path:
        path.mkdir(parents=True)
        rows = [{"query_id": str(q), "query": f"post {q}", "temperature": t, "constitution": CONST,
                 "response": text} for t in (0.0, 1.0) for q, text in enumerate(texts)]
        (path / "responses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return path

    cand = two_temperatures(tmp_path / "cand", ["He quit.", "Basically he, you know, quit."])
    base = two_temperatures(tmp_path / "base", ["He quit his job.", "He quit."])
    spec = validate_spec("judge", {"judge": {"provider": "rule", "model": "concision", "api_key_env": None},
                                   "candidate": {"path": str(cand), "name": "iteration-1"},
                                   "baseline": {"path": str(base), "name": "base"}, "shared_cache": None})
    out = run_judge(spec, tmp_path / "judge")
    assert out["win_rate"] is None  # two groups: no single figure in outputs.json
    table = json.loads((tmp_path / "judge" / "winrates.json").read_text())
    assert [r["temperature"] for r in table] == [0.0, 1.0] and all(r["win_rate"] == 0.5 for r in table)
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if "win rate" in ln]
    assert "n/a" not in line
    for r in table:
        assert f"T={r['temperature']}: {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n=2)" in line
    assert winrate_summary(table[:1]) == f"0.500 [{table[0]['ci_low']:.3f}, {table[0]['ci_high']:.3f}] (n=2)"
    assert winrate_summary([]) == "n/a" and winrate_summary([{**table[0], "win_rate": float("nan")}]) == "n/a"


def test_experiment_prompt_budget_reaches_generate_sample_and_evaluate(tmp_path: Path) -> None:
    exp = validate_experiment({"name": "x", "iterations": 2, "max_prompt_tokens": 200, "evaluation": {"limit": 4},
                               "judge": {"judge": {"provider": "rule", "model": "concision"}}})
    jobs = {j.key: j for j in expand(exp, tmp_path)}
    for key in ("generate-1", "generate-2", "sample-base", "sample-2", "evaluate-base", "evaluate-1"):
        assert jobs[key].spec["max_prompt_tokens"] == 200, key
    assert jobs["judge-2"].spec["judge"]["provider"] == "rule"
    with pytest.raises(SpecError, match="max_prompt_tokens"):
        validate_experiment({"max_prompt_tokens": 4})
