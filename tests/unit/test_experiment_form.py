"""app.new_experiment (the New experiment page's logic): spec <-> form widgets <-> YAML
round trips (and `sami submit` accepting the YAML), model path checks, and every error
of a spec as (field path, reason) pairs."""

from __future__ import annotations

from pathlib import Path

import pytest

from app import new_experiment as ef
from sami_core.errors import SpecError
from sami_core.spec import EXAMPLES_DIR, read_spec_file
from services import experiments as submit

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))


@pytest.fixture(autouse=True)
def _no_judge_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_form_yaml_form_keeps_the_spec(path: Path):
    spec = read_spec_file(path)
    values, problems = ef.widget_values(spec)
    assert set(problems) <= {"judge.baselines"}  # model baselines ({model, label}) are edited in the YAML
    # form -> spec: writing back what the widgets show changes nothing
    assert ef.apply_values(spec, values) == spec
    # spec -> YAML -> spec -> form: the same spec and the same widget values
    again = ef.from_yaml(ef.to_yaml(spec))
    assert again == spec
    assert ef.widget_values(again)[0] == values


def test_form_edits_reach_the_yaml_and_untouched_keys_travel(tmp_path: Path):
    spec = ef.demo_spec()
    values, _ = ef.widget_values(spec)
    values.update({"iterations": 2, "training.lr": 1e-6, "sampling.temperatures": "0.0, 0.7",
                   "judge.judge.concurrency": 3, "data.train_size": None})
    edited = ef.apply_values(spec, values)
    back = ef.from_yaml(ef.to_yaml(edited))
    assert back["iterations"] == 2 and back["training"]["lr"] == 1e-6
    assert back["sampling"]["temperatures"] == [0.0, 0.7]
    assert back["judge"]["judge"]["concurrency"] == 3
    assert "train_size" in back["data"] and back["data"]["train_size"] is None
    assert back["generation"] == spec["generation"] and back["filters"] == spec["filters"]  # not in the form
    # and the YAML is a file `sami submit` takes
    f = tmp_path / "exp.yaml"
    f.write_text(ef.to_yaml(edited), encoding="utf-8")
    prepared = submit.prepare(f)
    assert prepared.exp.iterations == 2 and prepared.exp.sampling.temperatures == [0.0, 0.7]


def test_untouched_defaults_never_appear_in_the_yaml():
    spec = dict(ef.INITIAL)
    values, _ = ef.widget_values(spec)
    assert ef.apply_values(spec, values) == spec
    assert "training" not in ef.to_yaml(ef.apply_values(spec, values))


def test_the_yaml_of_the_initial_spec_is_accepted_by_sami_submit(tmp_path: Path):
    f = tmp_path / "exp.yaml"
    f.write_text(ef.to_yaml(ef.INITIAL), encoding="utf-8")
    assert submit.prepare(f).exp.name == "experiment"


def test_widget_conversions():
    temps = ef.BY_PATH["sampling.temperatures"]
    assert ef.from_widget(temps, "0, 0.3 1.0") == [0.0, 0.3, 1.0]
    with pytest.raises(ValueError, match="'hot' is not a number"):
        ef.from_widget(temps, "0.0, hot")
    assert ef.to_widget(ef.BY_PATH["judge.judge.base_url"], None) == ""
    assert ef.from_widget(ef.BY_PATH["judge.judge.base_url"], "  ") is None
    with pytest.raises(ValueError, match="edit it in the YAML"):
        ef.to_widget(ef.BY_PATH["n_constitutions"], "two")
    with pytest.raises(ValueError):  # model baselines are edited in the YAML
        ef.to_widget(ef.BY_PATH["judge.baselines"], ["base", {"model": "x/y", "label": "instruct"}])


def test_judging_on_and_off():
    spec = dict(ef.INITIAL)
    on = ef.set_judging(spec, True)
    assert on["judge"]["baselines"] == ["base"]
    assert ef.set_judging(on, True) == on  # already on: kept as it is
    assert "judge" not in ef.set_judging(on, False)


def test_invalid_yaml_names_the_line():
    with pytest.raises(SpecError, match="invalid YAML at line"):
        ef.from_yaml("name: x\nmodel: [unclosed\n")
    with pytest.raises(SpecError, match="mapping"):
        ef.from_yaml("- a\n- b\n")
    with pytest.raises(SpecError, match="nothing"):
        ef.from_yaml("")


def test_model_path_checks(tmp_path: Path):
    assert ef.check_model_path("demo") is None
    assert ef.check_model_path("mistralai/Mistral-7B-v0.1") is None
    assert ef.check_model_path("gpt2") is None
    assert ef.check_model_path(str(tmp_path)) is None
    assert "does not exist" in ef.check_model_path(str(tmp_path / "missing"))
    assert "does not exist" in ef.check_model_path("./no/such/model")
    (tmp_path / "f.bin").write_bytes(b"x")
    assert "is a file" in ef.check_model_path(str(tmp_path / "f.bin"))
    assert "neither" in ef.check_model_path("not a model id!")


def test_uploads_are_stored_once_by_content(tmp_path: Path):
    a = ef.save_upload(tmp_path, "../../evil name.jsonl", b'{"post": "a"}\n')
    b = ef.save_upload(tmp_path, "../../evil name.jsonl", b'{"post": "a"}\n')
    assert a == b and a.parent == tmp_path / "uploads" and a.name.endswith("-evil-name.jsonl")
    assert a.read_bytes() == b'{"post": "a"}\n'


def test_prepare_reports_every_error_at_once_by_field():
    spec = {**ef.INITIAL, "n_constitutions": 1, "training": {"lr": -1.0}, "model": {"path": "/no/such/model/dir"}}
    prepared, errors = ef.prepare(spec, 1)
    assert prepared is None
    # the app's own check first, then the spec's errors in the schema's order; model.path once
    assert [p for p, _ in errors] == ["model.path", "n_constitutions", "training.lr"], errors
    assert "does not exist" in errors[0][1] and "must be >= 2" in errors[1][1] and "must be > 0" in errors[2][1]


def test_merge_errors_skips_fields_already_refused():
    first = [("data.path", "the uploaded file was refused: ..."), ("sampling.temperatures", "'hot' is not a number")]
    more = [("data", "source 'file' needs `path`"), ("sampling.temperatures", "give at least one"),
            ("training.lr", "must be > 0"), ("", "a spec-wide problem"), ("data_x", "unknown key")]
    assert ef.merge_errors(first, more) == first + [("training.lr", "must be > 0"), ("", "a spec-wide problem"),
                                                    ("data_x", "unknown key")]
    assert ef.merge_errors([], more) == more


@pytest.mark.parametrize("change, field, reason", [
    ({"n_constitutions": 1}, "n_constitutions", "must be >= 2"),
    ({"typo": 1}, "typo", "unknown key"),
    ({"model": {"path": "/no/such/model/dir"}}, "model.path", "does not exist"),
    ({"constitution": {"name": "c", "principles": []}}, "constitution", "empty"),
    ({"constitution": {"name": "c", "principles": [{"principle": "be brief"}]}}, "constitution.principles",
     "at most 1"),
    ({"data": {"source": "file", "path": "/no/such/file.jsonl"}}, "data.path", "does not exist"),
])
def test_prepare_refuses_bad_specs_naming_the_field(change: dict, field: str, reason: str):
    prepared, errors = ef.prepare({**ef.INITIAL, **change}, 1)
    assert prepared is None
    assert any(p == field and reason in r for p, r in errors), errors


def test_prepare_checks_a_data_file_has_the_query_field(tmp_path: Path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"text": "a"}\n')
    spec = {**ef.INITIAL, "data": {"source": "file", "path": str(f), "eval_size": 0}}  # one row: all for training
    prepared, errors = ef.prepare(spec, 1)
    assert prepared is None and errors[0][0] == "data.path" and "no field 'post'" in errors[0][1]
    prepared, errors = ef.prepare({**spec, "data": {**spec["data"], "field": "text"}}, 1)
    assert errors == [] and prepared.exp.data.path == str(f)


def test_constitution_choices_and_labels():
    versions = [{"id": 2, "name": "brief", "version": 2, "principles": [{"principle": "a", "antithesis": "b"}]},
                {"id": 1, "name": "brief", "version": 1, "principles": [{"principle": "x", "antithesis": None}]}]
    choices = ef.constitution_choices(versions, ["demo:opus/0"])
    assert list(choices) == ["brief v2", "brief v1", "demo:opus/0 (shipped)"]
    assert choices["demo:opus/0 (shipped)"] == {"path": "demo:opus/0"}
    for label, value in choices.items():
        assert ef.constitution_label(value, versions) == label
    assert ef.constitution_label({"name": "other", "principles": [{"principle": "a"}]}, versions).startswith("inline")
