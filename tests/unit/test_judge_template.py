"""Judge templates from files (sami_core/judge/template.py, JudgeSpec.template): the shipped
paper-style template, the checks made when a spec is validated (at submit), rendering and
the answer pattern; unparseable answers counted apart or as ties; token cost arithmetic."""

from __future__ import annotations

from pathlib import Path

import pytest

from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from sami_core.judge.pairs import Pair
from sami_core.judge.runner import JudgeSettings, plan_tasks, verdict_of
from sami_core.judge.template import parse_choice, shipped_templates
from sami_core.judge.usage import cost_usd, job_usage_text
from sami_core.spec import validate_spec
from sami_core.stats import winrate_table

SIDES = {"candidate": {"path": "cand.json"}, "baseline": {"path": "base.json"}}
GOOD_USER = "P: {query}\nC: {constitution}\nA: {response_a}\nB: {response_b}\nEnd with Verdict: A or B."


def write(tmp_path: Path, text: str, name: str = "t.yaml") -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return str(tmp_path / name)


def refused(data: dict, kind: str = "judge") -> dict[str, str]:
    with pytest.raises(SpecError) as err:
        validate_spec(kind, data) if kind == "judge" else validate_experiment(data)
    return dict(err.value.errors)


def test_the_shipped_paper_template_renders_system_user_and_parses_its_answer() -> None:
    assert "paper" in shipped_templates()
    spec = validate_spec("judge", {**SIDES, "template": "paper", "unparseable": "tie"})
    assert spec.template.name == "paper" and spec.template.system and spec.unparseable == "tie"
    pair = Pair("q1@0.0", "q1", "POST: My cat knocks cups off the table.", "1. Be concise.\n2. Be polite.", 0.0,
                "Cat knocks cups.", "My cat, who is a menace, keeps knocking cups off tables.", "c", "b")
    (task,) = plan_tasks([pair], JudgeSettings("openai", "gpt-4o", template=spec.template, order="candidate_first"))
    assert task.system == spec.template.system
    assert "100 words" in task.prompt and "Final Response: A" in task.prompt
    assert "<query>\nMy cat knocks cups off the table.\n</query>" in task.prompt  # the POST: label dropped
    assert "<response_a>\nCat knocks cups.\n</response_a>" in task.prompt  # candidate first
    assert "1. Be" in task.prompt and "2. Be" in task.prompt and "{" not in task.prompt
    # its own cache namespace: the built-in template's answers are not reused for it
    (builtin,) = plan_tasks([pair], JudgeSettings("openai", "gpt-4o", order="candidate_first"))
    assert builtin.cache_key != task.cache_key and builtin.system is None

    pattern = spec.template.answer_pattern
    assert parse_choice("Comparison: A is shorter.\nFinal Response: A", pattern) == ("A", "A is shorter.")
    assert parse_choice("Final Response: A\n...on reflection:\nFinal Response: **B**", pattern)[0] == "B"
    assert parse_choice("Both are fine; I cannot choose.", pattern)[0] is None
    assert parse_choice("Final Response: Tie", pattern)[0] is None  # the paper's template offers no tie


@pytest.mark.parametrize("text, field_fragment", [
    ("system: s\nuser: '" + GOOD_USER.replace("{query}", "{post}") + "'\nanswer_pattern: 'Verdict: ([AB])'\n",
     "unknown placeholder {post}"),
    ("system: s\nuser: 'Only {query} {constitution} {response_a}'\nanswer_pattern: 'Verdict: ([AB])'\n",
     "never shows {response_b}"),
    ("system: s\nuser: '" + GOOD_USER + "'\n", "no answer_pattern"),
    ("system: s\nuser: '" + GOOD_USER + "'\nanswer_pattern: 'Verdict: [AB]'\n", "needs a group"),
    ("system: s\nuser: '" + GOOD_USER + "'\nanswer_pattern: 'Verdict: ([AB]'\n", "not a regular expression"),
    ("system: s\nuser: '" + GOOD_USER + "'\nanswer_pattern: 'Verdict: ([AB])'\nextra: 1\n", "unknown key(s) extra"),
    ("system: s\nuser: '" + GOOD_USER.replace("{query}", "{query!r}") + "'\nanswer_pattern: 'V: ([AB])'\n",
     "conversions and format specs"),
])
def test_a_bad_template_file_is_refused_naming_the_field(tmp_path: Path, text: str, field_fragment: str) -> None:
    path = write(tmp_path, text)
    errors = refused({**SIDES, "template": path})
    assert list(errors) == ["template"] and field_fragment in errors["template"], errors
    assert str(tmp_path) in errors["template"]  # the file it came from
    # the same check when an experiment is submitted, under the experiment's field path
    exp_errors = refused({"judge": {"judge": {"provider": "hf", "model": "demo"}, "template": path}}, "experiment")
    assert list(exp_errors) == ["judge.template"] and field_fragment in exp_errors["judge.template"]


def test_a_good_template_file_is_stored_with_its_text(tmp_path: Path) -> None:
    path = write(tmp_path, "system: ''\nuser: |\n  " + GOOD_USER.replace("\n", "\n  ") +
                 "\nanswer_pattern: 'Verdict:\\s*(?P<choice>A|B|Tie)'\n")
    spec = validate_spec("judge", {**SIDES, "template": path})
    dumped = spec.model_dump(mode="json")["template"]
    assert dumped["user"].startswith("P: {query}") and dumped["name"] == path
    assert validate_spec("judge", {**SIDES, "template": dumped}).template == spec.template  # no file needed again
    assert parse_choice("blah\nVerdict: Tie", spec.template.answer_pattern)[0] == "tie"
    assert dict(refused({**SIDES, "template": "no-such-template"}))["template"].startswith("'no-such-template' is "
                                                                                         "neither a shipped")
    assert "allow_tie" in refused({**SIDES, "template": path, "allow_tie": True})


def test_unparseable_answers_counted_as_ties_or_apart_change_the_win_rate() -> None:
    # 6 wins, 2 losses, 2 answers with no readable choice
    choices = [("A", "candidate_first")] * 6 + [("B", "candidate_first")] * 2 + [(None, "candidate_first")] * 2

    def table(unparseable: str) -> dict:
        rows = [{"verdict": verdict_of(c, o, unparseable), "candidate": "c", "baseline": "b", "pair_id": str(i),
                 "order": o} for i, (c, o) in enumerate(choices)]
        (row,) = winrate_table(rows, group_by=("candidate", "baseline"))
        return row

    apart, ties = table("apart"), table("tie")
    assert (apart["n"], apart["invalid"], apart["ties"]) == (8, 2, 0)
    assert apart["win_rate"] == pytest.approx(6 / 8)
    assert (ties["n"], ties["invalid"], ties["ties"]) == (10, 0, 2)
    assert ties["win_rate"] == pytest.approx((6 + 2 / 2) / 10)


def test_cost_from_tokens_and_prices() -> None:
    judge = validate_spec("judge", {**SIDES, "judge": {"price_prompt_per_mtok": 2.5,
                                                       "price_completion_per_mtok": 10.0}}).judge
    assert cost_usd(1_000_000, 100_000, judge) == pytest.approx(2.5 + 1.0)
    assert cost_usd(1000, 10, {"price_prompt_per_mtok": 2.5, "price_completion_per_mtok": 10.0}) == \
        pytest.approx(0.0026)
    assert cost_usd(1000, 10, {}) is None and cost_usd(None, None, judge) is None
    spec = {"judge": judge.model_dump(mode="json")}
    assert job_usage_text({"prompt_tokens": 12345, "completion_tokens": 678}, spec) == \
        "12,345 prompt + 678 completion tokens, estimated cost $0.0376"
    assert job_usage_text({"prompt_tokens": 5, "completion_tokens": 1}, {"judge": {}}) == \
        "5 prompt + 1 completion tokens"
    assert job_usage_text({"wins": 3}, spec) is None  # no usage recorded (an older job)
    assert "price_completion_per_mtok" in refused({**SIDES, "judge": {"price_prompt_per_mtok": 2.5}})["judge"]
