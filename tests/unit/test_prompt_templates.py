"""Prompt templates (presets, validation, rendering), the forced response prefix, the
response filters with their counts, and the EOS that training scores."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from sami_core.pipeline import expand
from sami_core.prompts import (PRESETS, PromptTemplates, apply_filters, build_prompt, check_template,
                               response_failures)
from sami_core.spec import FilterSpec, PromptSpec, validate_spec

C, Q = "1. Be brief.\n2. Be kind.", "My cat ate my homework."


# ---- templates ----------------------------------------------------------------------------------
def test_check_template_names_the_unknown_placeholder():
    assert check_template("{constitution} / {query} {{literal}}") == ["constitution", "query"]
    with pytest.raises(ValueError, match=r"unknown placeholder \{post\}"):
        check_template("{constitution} {post}")
    with pytest.raises(ValueError, match=r"unknown placeholder \{query!r\}"):
        check_template("{constitution} {query!r}")
    with pytest.raises(ValueError, match=r"has no \{query\}"):
        check_template("Principles: {constitution}")
    with pytest.raises(ValueError, match="literal braces"):
        check_template("{constitution} {query")


def test_bad_templates_are_refused_at_validation_with_the_field():
    with pytest.raises(SpecError) as e:
        validate_spec("generate", {"prompts": {"generation": "{constitution} {post} {query}"}})
    assert e.value.errors[0][0] == "prompts.generation" and "{post}" in e.value.errors[0][1]
    with pytest.raises(SpecError) as e:
        validate_experiment({"prompts": {"training": "{constitution} only"}})
    assert e.value.errors[0][0] == "prompts.training" and "{query}" in e.value.errors[0][1]
    with pytest.raises(SpecError) as e:
        validate_experiment({"task": "dialogue", "prompts": {"preset": "paper-tldr"}})
    assert e.value.errors[0][0] == "prompts.preset" and "summarization" in e.value.errors[0][1]
    for kind in ("sample", "evaluate"):
        with pytest.raises(SpecError, match="prompts.generation"):
            validate_spec(kind, {"prompts": {"generation": "{x}"}})


def test_builtin_is_todays_prompt_for_both():
    t = PromptTemplates.from_spec("summarization", PromptSpec())
    assert t.generation_prompt(C, Q) == t.training_prompt(C, Q) == build_prompt("summarization", C, Q)
    assert PromptTemplates.from_spec("dialogue", None).generation_prompt(C, Q) == build_prompt("dialogue", C, Q)


def test_paper_preset_generates_with_a_scaffold_and_trains_on_a_short_prompt():
    t = PromptTemplates.from_spec("summarization", PromptSpec(preset="paper-tldr"))
    gen, train = t.generation_prompt(C, Q), t.training_prompt(C, Q)
    assert gen.endswith("Summary: The post") and train.endswith("Summary:")
    assert C in gen and Q in gen and C in train and Q in train
    assert len(gen) > len(train) + 100 and "Thank you" in gen and "Thank you" not in train
    assert PRESETS["paper-tldr"].tasks == ("summarization",)


def test_own_templates_override_the_preset():
    own = PromptTemplates.from_spec("summarization", PromptSpec(generation="C: {constitution}\nQ: {query}\nA:"))
    assert own.generation_prompt(C, Q) == own.training_prompt(C, Q) == f"C: {C}\nQ: {Q}\nA:"
    mixed = PromptTemplates.from_spec("summarization", PromptSpec(preset="paper-tldr", response_prefix="",
                                                                   training="{query} | {constitution} =>"))
    assert mixed.generation_prompt(C, Q).endswith("Summary:") and mixed.training_prompt(C, Q) == f"{Q} | {C} =>"


def test_chat_gets_the_template_as_its_user_turn():
    class Tok:  # a chat template as text, like a tokenizer's apply_chat_template
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    t = PromptTemplates.from_spec("summarization", PromptSpec(preset="paper-tldr"))
    gen = t.generation_prompt(C, Q, tokenizer=Tok(), chat=True)
    assert gen.startswith("<user>You will summarize") and gen.endswith("<assistant> The post")
    assert t.training_prompt(C, Q, tokenizer=Tok(), chat=True).endswith("Summary:<assistant>")
    built_in = PromptTemplates("summarization").generation_prompt(C, Q, tokenizer=Tok(), chat=True)
    assert built_in.startswith("<system>Follow these principles")  # as before: constitution in the system turn
    assert t.chat_preview("generation", C, Q)[-1] == {"role": "assistant (forced start)", "content": "The post"}


# ---- the forced prefix ---------------------------------------------------------------------------
def test_forced_prefix_is_kept_or_stripped():
    raw = " is about a cat that ate homework.\n\nPost: another post"
    keep = PromptTemplates("summarization", response_prefix="The post", keep_prefix=True)
    strip = PromptTemplates("summarization", response_prefix="The post", keep_prefix=False)
    done = keep.finish(raw, 12, 64, ["\n\nPost:"])
    assert done.text == "The post is about a cat that ate homework." and not done.ended_with_eos  # cut: no EOS
    assert strip.finish(raw, 12, 64, ["\n\nPost:"]).text == "is about a cat that ate homework."
    assert keep.finish("s are short.", 3, 64, []).text == "The posts are short."  # the model continues the word
    assert keep.finish(" is short.", 3, 64, []).ended_with_eos  # ended before the cap, nothing cut
    assert not keep.finish(" is short and", 64, 64, []).ended_with_eos  # the length cap cut it


# ---- filters ------------------------------------------------------------------------------------
PAPER_FILTERS = FilterSpec(drop_substrings=["[insert", "[]", "]", "Response"], ends_with=["."])


def test_each_filter_on_its_own():
    f = dict(min_chars=1, drop_substrings=PAPER_FILTERS.drop_substrings, ends_with=["."])
    assert response_failures("The post is short.", **f) == []
    assert response_failures("The post [insert summary].", **f) == ["drop_substrings"]
    assert response_failures("The post is cut", **f) == ["ends_with"]
    assert response_failures("Response: ok", **f) == ["drop_substrings", "ends_with"]
    assert response_failures("", **f) == ["min_chars", "ends_with"]
    assert response_failures("no end", min_chars=1, drop_substrings=[], ends_with=[]) == []  # empty = any ending
    assert response_failures("Done!", min_chars=1, drop_substrings=[], ends_with=[".", "!"]) == []


def test_filter_counts_add_up():
    groups = [
        ["The post is short.", "The post is long."],  # kept
        ["The post is short.", "The post is short."],  # identical: require_distinct
        ["The post [insert].", "The post is fine."],  # "[insert" and "]"
        ["The post is cut", "Response: fine."],  # ending; "Response"
    ]
    keep, c = apply_filters(groups, PAPER_FILTERS)
    assert keep == [True, False, False, False]
    assert (c.queries, c.kept, c.queries_with_invalid, c.require_distinct) == (4, 1, 2, 1)
    assert (c.responses, c.drop_substrings, c.ends_with, c.min_chars) == (8, 2, 1, 0)
    assert c.drop_substrings_each == {"[insert": 1, "[]": 0, "]": 1, "Response": 1}
    assert c.queries_with_invalid + c.require_distinct == c.queries - c.kept
    keep, c = apply_filters(groups, SimpleNamespace(min_chars=1, drop_substrings=[], ends_with=[],
                                                    require_distinct=False))
    assert keep == [True] * 4 and c.kept == 4


# ---- pipeline -----------------------------------------------------------------------------------
def test_the_experiment_passes_prompts_to_every_prompting_job(tmp_path: Path):
    exp = validate_experiment({"prompts": {"preset": "paper-tldr", "keep_prefix": False},
                               "filters": {"ends_with": ["."]}, "evaluation": {"limit": 4}})
    jobs = {j.key: j for j in expand(exp, tmp_path)}
    for key in ("generate-1", "sample-1", "sample-base", "evaluate-1"):
        assert jobs[key].spec["prompts"]["preset"] == "paper-tldr" and not jobs[key].spec["prompts"]["keep_prefix"]
    assert jobs["generate-1"].spec["filters"]["ends_with"] == ["."]
    assert jobs["train-1"].spec["training"]["append_eos"] == "auto" == jobs["evaluate-1"].spec["append_eos"]


# ---- the EOS training scores ---------------------------------------------------------------------
def test_append_eos_default_scores_only_the_models_own_eos(demo_model_dir):
    from transformers import AutoTokenizer

    from sami_core.train import tokenize_rows

    assert validate_spec("train", {"data": {"path": "x"}}).training.append_eos == "auto"
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    eos = tok.eos_token_id
    row = {"query_id": "q", "prompts": ["Summary:", "Summary:"], "responses": ["A cat.", "A dog"],
           "eos": [True, False]}  # response 1 ended with the model's EOS, response 2 was cut
    auto = tokenize_rows([row], tok, "auto")[0].response_ids
    assert auto[0][-1] == eos and eos not in auto[1]
    assert tokenize_rows([row], tok, True)[0].response_ids == [auto[0], auto[1] + [eos]]
    assert all(eos not in r for r in tokenize_rows([row], tok, False)[0].response_ids)
    unknown = {k: v for k, v in row.items() if k != "eos"}  # e.g. the paper's data: cut at stop strings
    assert all(eos not in r for r in tokenize_rows([unknown], tok, "auto")[0].response_ids)


def test_generation_and_training_prompts_are_cut_at_the_same_point(demo_model_dir):
    from transformers import AutoTokenizer

    from sami_core.prompts import PromptBuilder

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    t = PromptTemplates.from_spec("summarization", PromptSpec(preset="paper-tldr"))
    build = PromptBuilder("summarization", tok, False, max_prompt_tokens=160, templates=t)
    gen, train = build.pair("1. Be brief.", " ".join(["the cat sat on the mat"] * 100))
    assert build.n_tokens(gen) <= 160 and build.n_tokens(train) <= 160 and build.truncations == 1
    cut = train.split("Post: ", 1)[1].rsplit("\n\nSummary:", 1)[0]
    assert cut.endswith(" ...") and f"Post: {cut}\n\nSummary: The post" in gen


def test_generate_writes_training_prompts_and_filter_counts(tmp_path: Path, demo_model_dir):
    """A light generate on the demo model with the paper's prompts and filters."""
    from sami_core.contract import DATA_FILE, OUTPUTS_FILE
    from sami_core.stages import run_generate

    spec = validate_spec("generate", {
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"},
        "data": {"source": "demo", "train_size": 6, "eval_size": 4},
        "prompts": {"preset": "paper-tldr"}, "filters": {"drop_substrings": ["the"], "ends_with": ["."],
                                                         "require_distinct": True, "min_chars": 1},
        "generation": {"max_new_tokens": 12, "temperature": 1.0, "batch_size": 12}})
    try:
        out = run_generate(spec, tmp_path / "gen")
    except ValueError as err:  # every query dropped is a clear refusal; the counts are still written
        assert "every query was dropped" in str(err)
        out = json.loads((tmp_path / "gen" / OUTPUTS_FILE).read_text())
    c = out["filter_counts"]
    assert out == json.loads((tmp_path / "gen" / OUTPUTS_FILE).read_text())
    assert c["queries"] == out["n_queries"] == 6 and c["responses"] == 12 and c["kept"] == out["n_kept"]
    assert c["queries_with_invalid"] + c["require_distinct"] == out["n_dropped"]
    assert set(c["drop_substrings_each"]) == {"the"}
    gens = [json.loads(x) for x in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert all(g["prompt"].endswith("Summary: The post") and g["training_prompt"].endswith("Summary:")
               for g in gens)
    for row in map(json.loads, (tmp_path / "gen" / DATA_FILE).read_text().splitlines()):
        assert all(p.endswith("Summary:") for p in row["prompts"])  # what train scores under
        assert all(r.startswith("The post") and r.endswith(".") and "the" not in r for r in row["responses"])
        assert len(row["eos"]) == len(row["responses"]) == 2
