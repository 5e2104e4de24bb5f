"""An experiment's judge section: model baselines (e.g. the instruct model) become
sample-<label> jobs judged against every iteration; `provider: auto` resolves against the
environment; bad entries are refused naming the field."""

from __future__ import annotations

import pytest

from sami_core.errors import SpecError
from sami_core.pipeline import expand, sample_key
from sami_core.experiment_spec import AUTO_JUDGE_MODEL, resolve_auto_judge, resolve_experiment_judge, validate_experiment

INSTRUCT = "mistralai/Mistral-7B-Instruct-v0.2"


def experiment(baselines: list, iterations: int = 2, **judge) -> dict:
    return {"name": "x", "iterations": iterations,
            "judge": {"judge": {"provider": "hf", "model": "demo", "api_key_env": None, **judge},
                      "baselines": baselines}}


def test_a_model_baseline_is_sampled_once_and_judged_against_every_iteration() -> None:
    exp = validate_experiment(experiment(["base", {"model": INSTRUCT, "label": "instruct"}, "iteration-1"]))
    plans = {p.key: p for p in expand(exp, "runs/e")}
    assert list(plans) == [
        "sample-base", "sample-instruct", "generate-1", "train-1", "sample-1", "generate-2", "train-2", "sample-2",
        "judge-1-vs-base", "judge-1-vs-instruct", "judge-2-vs-base", "judge-2-vs-instruct", "judge-2-vs-iteration-1"]
    inst = plans["sample-instruct"]
    base = plans["sample-base"]
    # Sampled the way the checkpoints are: same eval queries, constitution, temperatures; only the model differs.
    assert (inst.kind, inst.depends_on, inst.iteration, inst.label, inst.run_dir) == (
        "sample", [], 0, "instruct", "runs/e/sample-instruct")
    assert inst.spec["model"] == {"path": INSTRUCT, "dtype": "auto", "prompt_format": "auto",
                                  "trust_remote_code": False}
    assert {k: v for k, v in inst.spec.items() if k != "model"} == {k: v for k, v in base.spec.items() if k != "model"}
    judge = plans["judge-2-vs-instruct"]
    assert judge.depends_on == ["sample-2", "sample-instruct"]
    assert judge.label == "iteration-2 vs instruct"
    assert judge.spec["candidate"]["name"] == "iteration-2"
    assert judge.spec["baseline"] == {"path": "runs/e/sample-instruct", "name": "instruct", "temperature": None}
    assert plans["judge-2-vs-iteration-1"].depends_on == ["sample-2", "sample-1"]


def test_a_model_entry_may_be_a_full_model_spec_and_labels_default_to_the_model_name() -> None:
    exp = validate_experiment(experiment([{"model": {"path": INSTRUCT, "prompt_format": "chat",
                                                     "dtype": "bfloat16"}}], iterations=1))
    (b,) = exp.judge.baselines
    assert b.label == "Mistral-7B-Instruct-v0.2" and b.model.prompt_format == "chat"
    plans = {p.key: p for p in expand(exp, "runs/e")}
    assert plans["sample-Mistral-7B-Instruct-v0.2"].spec["model"]["dtype"] == "bfloat16"
    assert plans["judge-1"].spec["baseline"]["name"] == "Mistral-7B-Instruct-v0.2"  # one baseline: plain key
    # The validated spec round-trips (what the experiments row stores is submittable again).
    again = validate_experiment(exp.model_dump(mode="json"))
    assert again == exp


def test_existing_specs_keep_their_meaning() -> None:
    exp = validate_experiment(experiment(["base", "iteration-1"]))
    assert exp.judge.baselines == ["base", "iteration-1"]
    assert [p.key for p in expand(exp, "r") if p.kind == "judge"] == [
        "judge-1-vs-base", "judge-2-vs-base", "judge-2-vs-iteration-1"]
    assert validate_experiment({"judge": {}}).judge.judge.provider == "openai"  # the default is unchanged
    assert (sample_key("base"), sample_key("iteration-3"), sample_key("instruct")) == (
        "sample-base", "sample-3", "sample-instruct")


BAD = [
    ("reserved label", [{"model": INSTRUCT, "label": "base"}], "judge.baselines.0.label: 'base' names the"),
    ("label with a space", [{"model": INSTRUCT, "label": "my model"}], "judge.baselines.0.label: 'my model': use"),
    ("digits only", [{"model": INSTRUCT, "label": "7"}], "judge.baselines.0.label: '7': use letters"),
    ("no model", ["base", {"label": "instruct"}], "judge.baselines.1.model: required key is missing"),
    ("empty model", [{"model": " ", "label": "x"}], "judge.baselines.0.model.path: must name a model"),
    ("typo", [{"model": INSTRUCT, "lable": "x"}], "judge.baselines.0.lable: unknown key"),
    ("bad prompt format", [{"model": {"path": INSTRUCT, "prompt_format": "chatml"}}],
     "judge.baselines.0.model.prompt_format:"),
    ("not an entry", ["base", 3], "judge.baselines.1: must be 'base', 'iteration-K' or a model entry"),
    ("bare name", ["instruct"], "judge.baselines.0: 'instruct' is neither 'base' nor 'iteration-K'"),
    ("future iteration", ["iteration-3"], "judge.baselines.0: 'iteration-3' is neither"),
    ("twice", ["base", "base"], "judge.baselines.1: 'base' is already judge.baselines.0"),
    ("same label twice", [{"model": "a/inst"}, {"model": "b/inst"}],
     "judge.baselines.1.label: 'inst' is already judge.baselines.0"),
    ("underivable label", [{"model": "./"}], "judge.baselines.0: no label can be made from model './'"),
]


@pytest.mark.parametrize("baselines, expected", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_baselines_are_refused_naming_the_field(baselines: list, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_experiment(experiment(baselines))
    assert expected in str(err.value), str(err.value)


def test_auto_resolves_to_an_api_judge_only_when_a_key_variable_is_set() -> None:
    exp = validate_experiment({"judge": {"judge": {"provider": "auto"}}})
    assert exp.judge.judge.model == AUTO_JUDGE_MODEL == "gpt-4o"

    local, note = resolve_experiment_judge(exp, {})
    j = local.judge.judge
    assert (j.provider, j.model, j.api_key_env) == ("hf", "demo", None)
    assert "local hf judge on the demo model" in note and "OPENAI_API_KEY is not set" in note

    api, note = resolve_experiment_judge(exp, {"OPENAI_API_KEY": "sk-planted-0123456789"})
    j = api.judge.judge
    assert (j.provider, j.model, j.api_key_env, j.base_url) == ("openai", "gpt-4o", "OPENAI_API_KEY", None)
    assert "OPENAI_API_KEY is set" in note and "sk-planted" not in note + api.model_dump_json()

    azure, note = resolve_experiment_judge(exp, {"OPENAI_API_KEY": "sk-x", "AZURE_OPENAI_API_KEY": "az-planted-key",
                                                 "AZURE_OPENAI_ENDPOINT": "https://lab.openai.azure.com",
                                                 "AZURE_OPENAI_DEPLOYMENT": "gpt4-prod"})
    j = azure.judge.judge
    assert (j.provider, j.model, j.azure_endpoint, j.api_version, j.api_key_env) == (
        "azure", "gpt4-prod", "https://lab.openai.azure.com", "2024-06-01", "AZURE_OPENAI_API_KEY")
    assert "az-planted-key" not in note + azure.model_dump_json()

    # Another key variable named by the spec; a chosen model is kept for the API judge.
    mine = validate_experiment({"judge": {"judge": {"provider": "auto", "model": "gpt-4-turbo",
                                                    "api_key_env": "LAB_KEY"}}})
    assert resolve_auto_judge(mine.judge.judge, {"OPENAI_API_KEY": "k"})[0].provider == "hf"
    j = resolve_auto_judge(mine.judge.judge, {"LAB_KEY": "k"})[0]
    assert (j.provider, j.model, j.api_key_env) == ("openai", "gpt-4-turbo", "LAB_KEY")
    # Anything but auto is left alone.
    fixed = validate_experiment(experiment(["base"]))
    assert resolve_experiment_judge(fixed, {"OPENAI_API_KEY": "k"}) == (fixed, None)


def test_auto_is_not_a_stage_provider_and_takes_no_endpoint() -> None:
    from sami_core.spec import validate_spec

    with pytest.raises(SpecError, match="judge.provider"):
        validate_spec("judge", {"judge": {"provider": "auto"}, "candidate": {"path": "a"}, "baseline": {"path": "b"}})
    with pytest.raises(SpecError, match="judge.judge: `base_url` is for provider 'openai'"):
        validate_experiment({"judge": {"judge": {"provider": "auto", "base_url": "http://localhost:8000/v1"}}})


def test_an_evaluation_section_adds_evaluate_base_and_one_evaluate_job_per_iteration() -> None:
    spec = {"name": "x", "iterations": 2, "n_constitutions": 2, "model": {"path": "org/base", "prompt_format": "plain"},
            "training": {"reduction": "sum", "append_eos": False},
            "evaluation": {"limit": 12, "max_new_tokens": 20, "variant_seed": 5}, "devices": {"evaluate": 0}}
    plans = {p.key: p for p in expand(validate_experiment(spec), "runs/e")}
    assert list(plans) == ["sample-base", "evaluate-base", "generate-1", "train-1", "sample-1", "evaluate-1",
                           "generate-2", "train-2", "sample-2", "evaluate-2"]
    base, e1, e2 = plans["evaluate-base"], plans["evaluate-1"], plans["evaluate-2"]
    assert (base.kind, base.depends_on, base.iteration, base.label, base.devices) == ("evaluate", [], 0, "base", 0)
    assert (e2.depends_on, e2.iteration, e2.label) == (["train-2"], 2, "iteration-2")
    assert base.spec["model"]["path"] == "org/base" and base.spec["score_models"] == []
    assert e2.spec["model"]["path"] == "runs/e/train-2/checkpoints/final"
    assert e2.spec["label"] == "iteration-2" and e2.spec["score_models"] == [
        {"model": {"path": "org/base", "dtype": "auto", "prompt_format": "plain", "trust_remote_code": False},
         "label": "base"}]
    # every evaluation: the same queries, variants, sampling, and the training's scoring
    same = lambda p: {k: v for k, v in p.spec.items() if k not in ("model", "label", "score_models")}  # noqa: E731
    assert same(base) == same(e1) == same(e2)
    assert (base.spec["split"], base.spec["limit"], base.spec["variant_seed"]) == ("eval", 12, 5)
    assert (base.spec["reduction"], base.spec["append_eos"]) == ("sum", False)
    assert base.spec["generation"]["temperature"] == 0.0 and base.spec["generation"]["max_new_tokens"] == 20
    off = {**spec, "evaluation": {"score_with_base": False}}
    assert [p for p in expand(validate_experiment(off), "r") if p.key == "evaluate-1"][0].spec["score_models"] == []
    del spec["evaluation"]
    assert not [p for p in expand(validate_experiment(spec), "r") if p.kind == "evaluate"]
