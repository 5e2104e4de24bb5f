"""app.experiment_form: spec <-> form widgets <-> YAML round trips (and `sami submit`
accepting the YAML), upload and model path checks, errors mapped to fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app import experiment_form as ef
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


def test_upload_checks():
    ok_jsonl = b'{"post": "a"}\n{"post": "b"}\n'
    assert ef.check_upload("q.jsonl", ok_jsonl, "post", 1) == 2
    assert ef.check_upload("q.json", json.dumps([{"post": "a"}]).encode(), "post", 1) == 1
    assert ef.check_upload("q.json", ok_jsonl, "post", 1) == 2  # JSON lines in a .json file
    assert ef.check_upload("q.csv", b"id,post\n1,hello\n2,world\n", "post", 1) == 2
    with pytest.raises(ef.UploadError, match="not a JSON, JSONL or CSV"):
        ef.check_upload("q.txt", b"hello", "post", 1)
    with pytest.raises(ef.UploadError, match="no field 'post'.*fields are: text"):
        ef.check_upload("q.jsonl", b'{"text": "a"}\n', "post", 1)
    with pytest.raises(ef.UploadError, match="row 2 has no text"):
        ef.check_upload("q.csv", b"post\nhello\n\"\"\n", "post", 1)
    with pytest.raises(ef.UploadError, match="over the 1 MB"):
        ef.check_upload("q.jsonl", ok_jsonl * 200_000, "post", 1)
    with pytest.raises(ef.UploadError, match="line 2 is not valid JSON"):
        ef.check_upload("q.jsonl", b'{"post": "a"}\n{nope\n', "post", 1)
    with pytest.raises(ef.UploadError, match="empty"):
        ef.check_upload("q.csv", b"", "post", 1)


def test_uploads_are_stored_once_by_content(tmp_path: Path):
    a = ef.save_upload(tmp_path, "../../evil name.jsonl", b'{"post": "a"}\n')
    b = ef.save_upload(tmp_path, "../../evil name.jsonl", b'{"post": "a"}\n')
    assert a == b and a.parent == tmp_path / "uploads" and a.name.endswith("-evil-name.jsonl")
    assert a.read_bytes() == b'{"post": "a"}\n'


def test_spec_errors_map_to_fields():
    msg = ("form: invalid spec\n  n_constitutions: must be >= 2: SAMI contrasts\n  data: source 'hf' needs `dataset`\n"
           "  judge.baselines.0: 'x' is neither 'base' nor ...\n  typo_key: unknown key (check its spelling)")
    errors = ef.parse_errors(msg)
    assert ("n_constitutions", "must be >= 2: SAMI contrasts") in errors
    assert ef.errors_at(errors, "data") == ["data: source 'hf' needs `dataset`"]
    assert ef.errors_at(errors, "judge") == ["judge.baselines.0: 'x' is neither 'base' nor ..."]
    assert ef.errors_at(errors, "typo_key") == ["typo_key: unknown key (check its spelling)"]
    assert ef.parse_errors("devices.train: 8 GPUs needed") == [("devices.train", "8 GPUs needed")]


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
    spec = {**ef.INITIAL, "data": {"source": "file", "path": str(f)}}
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
