import pickle

import pytest

from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from sami_core.spec import load_spec, resolve_shipped, spec_fingerprint, validate_spec


def test_defaults_validate():
    g = validate_spec("generate", {})
    assert g.n_constitutions == 2 and g.model.path == "demo"
    t = validate_spec("train", {"data": {"path": "runs/gen"}})
    # the paper's defaults
    assert (t.training.optimizer, t.training.lr, t.training.grad_accum, t.training.save_every) == ("rmsprop", 5e-7, 16, 32)


@pytest.mark.parametrize(
    "kind, data, expected",
    [
        ("generate", {"n_constitutions": 1}, "n_constitutions: must be >= 2"),
        ("generate", {"modle": {}}, "modle: unknown key"),
        ("generate", {"generation": {"temprature": 1}}, "generation.temprature: unknown key"),
        ("generate", {"generation": {"max_new_tokens": "many"}}, "generation.max_new_tokens: Input should be a valid integer"),
        ("train", {"data": {"path": "x"}, "training": {"lr": 0}}, "training.lr: must be > 0"),
        ("train", {"data": {"path": "x"}, "training": {"lr": -1e-5}}, "training.lr: must be > 0"),
        ("train", {}, "data: required key is missing"),
        ("sample", {"temperatures": []}, "temperatures: give at least one temperature"),
        ("generate", {"constitution": {"principles": []}}, "constitution: Value error"),
        ("generate", {"data": {"source": "hf"}}, "needs `dataset`"),
        ("evaluate", {"n_constitutions": 1}, "n_constitutions: must be >= 2"),
        ("evaluate", {"label": "a b"}, "label: 'a b': use letters"),
        ("evaluate", {"score_models": [{"label": "x"}]}, "score_models.0.model: required key is missing"),
        ("evaluate", {"label": "models", "score_models": ["/models/"]}, "score_models.0.label: 'models' is already label"),
        ("evaluate", {"score_models": ["a/base", "b/base"]}, "score_models.1.label: 'base' is already score_models.0.label"),
        ("evaluate", {"score_models": ["/x/."]}, "score_models.0.label: '.' is not a usable label"),
        ("evaluate", {"generation": {"temperature": -1}}, "generation.temperature: Input should be greater"),
    ],
)
def test_bad_specs_name_the_field(kind, data, expected):
    with pytest.raises(SpecError) as err:
        validate_spec(kind, data)
    assert expected.split(":")[0] in str(err.value)
    assert expected.split(": ", 1)[-1].replace("Value error", "") in str(err.value)


def test_unknown_stage_and_non_mapping():
    with pytest.raises(SpecError, match="unknown stage"):
        validate_spec("fly", {})
    with pytest.raises(SpecError, match="mapping"):
        validate_spec("generate", [1, 2])


def test_spec_files(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("n_constitutions: 3\ngeneration:\n  temperature: 0.7\n")
    s = load_spec("generate", p)
    assert s.n_constitutions == 3 and s.generation.temperature == 0.7
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec("generate", tmp_path / "bad.yaml")
    with pytest.raises(SpecError, match="does not exist"):
        load_spec("generate", tmp_path / "nope.yaml")


def test_fingerprint_stable_and_sensitive():
    a = validate_spec("generate", {})
    b = validate_spec("generate", {"n_constitutions": 2})  # same after defaults
    c = validate_spec("generate", {"n_constitutions": 3})
    assert spec_fingerprint(a) == spec_fingerprint(b) != spec_fingerprint(c)


def test_shipped_shorthand():
    assert resolve_shipped("demo:opus/0").endswith("constitutions/opus/0.json")
    assert resolve_shipped("my/file.json") == "my/file.json"
    with pytest.raises(SpecError, match="shipped ones: demo:mistral/0"):
        resolve_shipped("demo:nope/9")


# ---- SpecError: (field path, reason) pairs, and the message people read ----------------------


def test_a_spec_with_several_errors_carries_every_pair_in_order():
    with pytest.raises(SpecError) as info:
        validate_experiment({"n_constitutions": 1, "training": {"lr": -1.0}, "typo": 1}, source="form")
    err = info.value
    assert err.source == "form"
    assert err.errors == [
        ("n_constitutions", "must be >= 2: SAMI contrasts at least two constitutions per query"),
        ("training.lr", "must be > 0 (e.g. 5e-7 for RMSprop on a 7B model)"),
        ("typo", "unknown key (check its spelling and where it is nested)"),
    ]
    # the message is the text it always was (the CLI prints it)
    assert str(err) == (
        "form: invalid spec\n"
        "  n_constitutions: must be >= 2: SAMI contrasts at least two constitutions per query\n"
        "  training.lr: must be > 0 (e.g. 5e-7 for RMSprop on a 7B model)\n"
        "  typo: unknown key (check its spelling and where it is nested)")


def test_a_cross_field_check_carries_the_field_it_names_and_a_spec_wide_one_the_path_nothing():
    with pytest.raises(SpecError) as info:
        validate_experiment({"judge": {"baselines": ["x"]}}, source="form")
    [(path, reason)] = info.value.errors
    assert path == "judge.baselines.0" and reason.startswith("'x' is neither 'base' nor 'iteration-K'")
    assert str(info.value) == f"form: invalid spec\n  judge.baselines.0: {reason}"
    with pytest.raises(SpecError) as info:
        validate_spec("judge", {"candidate": {"path": "a"}, "baseline": {"path": "a"}})
    assert info.value.errors == [("", "candidate and baseline are the same responses; judge two different sources")]
    assert str(info.value) == ("spec: invalid spec\n"
                               "  (top level): candidate and baseline are the same responses; judge two different sources")


def test_one_sentence_errors_carry_one_pair_and_keep_their_text(tmp_path):
    with pytest.raises(SpecError) as info:
        validate_spec("generate", [1], source="g.yaml")
    assert str(info.value) == "g.yaml: a spec must be a mapping of keys to values, got list"
    assert info.value.errors == [("", "a spec must be a mapping of keys to values, got list")]
    with pytest.raises(SpecError) as info:
        validate_spec("fly", {})
    assert info.value.errors == [("", str(info.value))] and str(info.value).startswith("unknown stage 'fly'")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1,\n")
    with pytest.raises(SpecError) as info:
        load_spec("generate", bad)
    assert str(info.value).startswith(f"{bad}: not valid YAML: ") and info.value.source == str(bad)
    assert info.value.errors[0][0] == "" and info.value.errors[0][1].startswith("not valid YAML: ")
    with pytest.raises(SpecError) as info:
        resolve_shipped("demo:nope/9")
    assert info.value.errors == [("constitution.path", str(info.value))]


def test_spec_error_constructors_and_pickling():
    err = SpecError(errors=[("training.lr", "must be > 0"), ("", "whole spec")], source="form")
    assert str(err) == "form: invalid spec\n  training.lr: must be > 0\n  (top level): whole spec"
    assert str(SpecError(errors=[("a", "b")])) == "spec: invalid spec\n  a: b"
    assert str(SpecError("no such file", source="x.yaml")) == "x.yaml: no such file"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is SpecError and str(again) == str(err) and again.errors == err.errors
    assert again.source == "form"
    with pytest.raises(TypeError):
        SpecError()
    with pytest.raises(TypeError):
        SpecError("both", errors=[("a", "b")])


def test_evaluate_defaults_greedy_and_bare_scorer_paths():
    e = validate_spec("evaluate", {"generation": {"max_new_tokens": 8}, "score_models": ["org/base-model"]})
    assert e.generation.temperature == 0.0 and e.generation.max_new_tokens == 8  # greedy unless asked
    assert (e.split, e.n_constitutions, e.reduction, e.label) == ("eval", 2, "mean", "model")
    assert e.score_models[0].model.path == "org/base-model" and e.score_models[0].label == "base-model"
    assert validate_spec("evaluate", {"generation": {"temperature": 0.7}}).generation.temperature == 0.7


def test_yaml_booleans_for_switches_with_an_off_value(tmp_path):
    """YAML reads a bare `no` as false: `mixed_precision: no` and `fsdp: no` mean the word."""
    f = tmp_path / "t.yaml"
    f.write_text("data: {path: x}\ntraining: {mixed_precision: no, fsdp: yes}\n")
    t = load_spec("train", f).training
    assert (t.mixed_precision, t.fsdp) == ("no", "yes")
    f.write_text("data: {path: x}\ntraining: {mixed_precision: bf16, fsdp: no}\n")
    t = load_spec("train", f).training
    assert (t.mixed_precision, t.fsdp) == ("bf16", "no")
    with pytest.raises(SpecError, match="training.mixed_precision: YAML read a bare yes/on/true .* write bf16"):
        validate_spec("train", {"data": {"path": "x"}, "training": {"mixed_precision": True}})
    f.write_text("data: {path: x}\ntraining: {mixed_precision: off, fsdp: on}\n")
    t = load_spec("train", f).training
    assert (t.mixed_precision, t.fsdp) == ("no", "yes")


def test_yaml_floats_without_a_dot_are_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `1e-5` as a string; spec files read it as YAML 1.2 does: a float."""
    f = tmp_path / "t.yaml"
    f.write_text("data: {path: x}\ntraining: {lr: 1e-5, beta: 2E-2}\n")
    t = load_spec("train", f).training
    assert (t.lr, t.beta) == (pytest.approx(1e-5), pytest.approx(0.02))
    from sami_core.spec import yaml_load

    assert yaml_load("a: 1e-5\nb: '1e-5'\nc: 3\nd: 1.5\n") == {"a": 1e-5, "b": "1e-5", "c": 3, "d": 1.5}
