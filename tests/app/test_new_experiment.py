"""New experiment page: the demo in one click, the form and the YAML view agree (and the
YAML is what `sami submit` takes), a saved constitution version reaches the jobs, and
every bad input shows an error next to its field with nothing enqueued."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from app import new_experiment as ef
from db.engine import transact
from db.experiments import constitution_version
from db.models import Constitution, Experiment, Job
from services import experiments as submit

K = "new_experiment."
ROWS = [{"principle": "Summaries are concise.", "antithesis": "Summaries are long-winded."}]


@pytest.fixture(autouse=True)
def _no_judge_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(k, raising=False)


def _counts(workspace) -> tuple[int, int, int]:
    def q(c):
        return tuple(c.execute(select(func.count()).select_from(m)).scalar_one()
                     for m in (Experiment, Job, Constitution))
    return transact(workspace.engine, q, write=False)


def _yaml(at) -> str:
    return at.text_area(key=K + "yaml").value


def _errors(at) -> list[str]:
    return [e.value for e in at.error]


def _submit(at):
    return at.button(key=K + "submit").click().run()


def _refused(at, workspace, field: str, reason: str) -> None:
    """The submit showed `field: ...reason...` and wrote nothing."""
    assert not at.exception, [e.value for e in at.exception]
    assert any(e.startswith(f"{field}: ") and reason in e for e in _errors(at)), _errors(at)
    assert any("Nothing was submitted" in e for e in _errors(at))
    assert not at.success
    assert _counts(workspace) == (0, 0, 0)


def test_the_demo_experiment_submits_its_jobs(open_page, workspace):
    at = open_page("new_experiment")
    at.button(key=K + "demo").click().run()
    assert yaml.safe_load(_yaml(at)) == ef.demo_spec()
    assert at.text_input(key=K + "name").value == "demo"
    assert at.selectbox(key=K + "constitution").value == "demo:opus/0 (shipped)"
    _submit(at)
    assert not at.exception and not _errors(at)
    assert at.success[0].value.startswith("Experiment 1 submitted")
    jobs = transact(workspace.engine, lambda c: c.execute(select(Job.name, Job.experiment_id)).all(), write=False)
    assert {j.experiment_id for j in jobs} == {1}
    dag = next(d.value for d in at.dataframe if "depends on" in d.value.columns)
    assert sorted(dag["job"]) == sorted(j.name for j in jobs) and "generate-1" in set(dag["job"])
    assert dag.set_index("job").loc["train-1", "depends on"] == "generate-1"
    link = [p for p in at.get("page_link") if "Queue" in p.value][0]
    assert link.proto.query_string == "experiment=1"


def test_a_saved_constitution_version_is_what_the_jobs_use(open_page, workspace):
    v1 = transact(workspace.engine, lambda c: constitution_version(c, "tldr", ROWS))[0]
    v2 = transact(workspace.engine, lambda c: constitution_version(
        c, "tldr", ROWS + [{"principle": "Summaries are polite.", "antithesis": "Summaries are rude."}]))[0]
    at = open_page("new_experiment")
    box = at.selectbox(key=K + "constitution")
    assert box.options[:2] == ["tldr v2", "tldr v1"]
    box.select("tldr v1").run()
    assert yaml.safe_load(_yaml(at))["constitution"] == {"name": "tldr", "principles": ROWS}
    _submit(at)
    assert at.success[0].value.startswith("Experiment 1 submitted") and "tldr v1" in at.success[0].value
    used = transact(workspace.engine, lambda c: set(c.execute(select(Job.constitution_id)).scalars()), write=False)
    assert used == {v1} and v1 != v2
    assert _counts(workspace)[2] == 2  # no new version: v1 was reused


def test_yaml_edited_by_hand_fills_the_form_and_the_form_fills_the_yaml(open_page, workspace, tmp_path: Path):
    at = open_page("new_experiment")
    spec = {**ef.demo_spec(), "name": "by-hand", "n_constitutions": 2, "iterations": 2}
    spec["sampling"] = {**spec["sampling"], "temperatures": [0.0, 0.5]}
    at.text_area(key=K + "yaml").input(yaml.safe_dump(spec)).run()
    assert not at.exception and not _errors(at)
    assert at.text_input(key=K + "name").value == "by-hand"
    assert at.number_input(key=K + "iterations").value == 2
    assert at.text_input(key=K + "sampling.temperatures").value == "0.0, 0.5"
    # form -> YAML
    at.number_input(key=K + "training.grad_accum").set_value(8).run()
    at.text_input(key=K + "sampling.temperatures").input("0.0, 0.7").run()
    shown = yaml.safe_load(_yaml(at))
    assert shown == {**spec, "training": {**spec["training"], "grad_accum": 8},
                     "sampling": {**spec["sampling"], "temperatures": [0.0, 0.7]}}
    # the YAML view is a file `sami submit` accepts, giving the same experiment
    f = tmp_path / "exp.yaml"
    f.write_text(_yaml(at), encoding="utf-8")
    prepared = submit.prepare(f)
    assert prepared.exp.training.grad_accum == 8 and prepared.exp.iterations == 2
    assert prepared.exp.model_dump() == submit.prepare_data(shown).exp.model_dump()


def test_invalid_yaml_is_refused(open_page, workspace):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input("name: demo\nmodel: [unclosed\n").run()
    assert any(e.startswith("yaml: invalid YAML at line") for e in _errors(at))
    assert _yaml(at).startswith("name: demo\nmodel: [unclosed")  # the user's text stays
    _refused(_submit(at), workspace, "yaml", "invalid YAML")


@pytest.mark.parametrize("change, field, reason", [
    ({"typo_key": 1}, "typo_key", "unknown key"),
    ({"training": {"lr": 1e-6, "optimiser": "adamw"}}, "training.optimiser", "unknown key"),
    ({"constitution": {"name": "c", "principles": []}}, "constitution", "empty"),
    ({"constitution": {"name": "c", "principles": [{"principle": "Be brief."}]}}, "constitution.principles",
     "at most 1"),
    ({"n_constitutions": 4, "constitution": {"name": "c", "principles": ROWS}}, "constitution.principles",
     "add antitheses or lower N"),
    ({"data": {"source": "hf"}}, "data", "needs `dataset`"),
])
def test_bad_yaml_specs_are_refused_naming_the_field(open_page, workspace, change, field, reason):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input(yaml.safe_dump({**ef.INITIAL, **change})).run()
    _refused(_submit(at), workspace, field, reason)


def test_n_below_two_is_refused_next_to_the_field(open_page, workspace):
    at = open_page("new_experiment")
    at.number_input(key=K + "n_constitutions").set_value(1).run()
    _refused(_submit(at), workspace, "n_constitutions", "must be >= 2")


def test_a_local_model_path_must_exist_but_a_hub_id_is_accepted(open_page, workspace, tmp_path: Path):
    at = open_page("new_experiment")
    at.text_input(key=K + "model.path").input(str(tmp_path / "no-such-model")).run()
    assert any(e.startswith("model.path: local directory") for e in _errors(at))
    _refused(_submit(at), workspace, "model.path", "does not exist")
    at.text_input(key=K + "model.path").input("mistralai/Mistral-7B-v0.1").run()
    assert not _errors(at)
    assert yaml.safe_load(_yaml(at))["model"]["path"] == "mistralai/Mistral-7B-v0.1"


def _upload_source(at):
    at.selectbox(key=K + "data.source").select("file").run()
    return at


@pytest.mark.parametrize("name, content, reason", [
    ("q.jsonl", b'{"text": "a post"}\n', "no field 'post'"),
    ("q.csv", b"post\nhello\n\"\"\n", "row 2 has no text"),
    ("q.json", b'{"post": "not a list"}', "give a list of objects"),
])
def test_bad_uploads_are_refused(open_page, workspace, name, content, reason):
    at = _upload_source(open_page("new_experiment"))
    at.file_uploader(key=K + "upload").set_value((name, content, "application/octet-stream")).run()
    assert any("Upload refused" in e and reason in e for e in _errors(at)), _errors(at)
    assert not (workspace.home / "uploads").exists()
    _refused(_submit(at), workspace, "data.path", reason)


def test_a_huge_upload_is_refused(open_page, workspace, monkeypatch):
    from app import state

    monkeypatch.setattr(state, "MAX_UPLOAD_MB", 1)
    at = _upload_source(open_page("new_experiment"))
    big = b'{"post": "' + b"x" * (1024 * 1024) + b'"}\n'
    at.file_uploader(key=K + "upload").set_value(("big.jsonl", big, "application/octet-stream")).run()
    assert any("over the 1 MB upload limit" in e for e in _errors(at)), _errors(at)
    _refused(_submit(at), workspace, "data.path", "over the 1 MB")
    assert _counts(workspace) == (0, 0, 0)


def test_an_upload_is_stored_in_the_workspace_and_submitted(open_page, workspace):
    at = _upload_source(open_page("new_experiment"))
    at.text_input(key=K + "data.field").input("text").run()
    rows = b"".join(json.dumps({"text": f"post {i}"}).encode() + b"\n" for i in range(60))
    at.file_uploader(key=K + "upload").set_value(("my posts.jsonl", rows, "application/octet-stream")).run()
    assert not _errors(at)
    stored = Path(at.text_input(key=K + "data.path").value)
    assert stored.parent == workspace.home / "uploads" and stored.read_bytes() == rows
    assert yaml.safe_load(_yaml(at))["data"] == {"source": "file", "field": "text", "path": str(stored)}
    _submit(at)
    assert at.success[0].value.startswith("Experiment 1 submitted"), _errors(at)
    spec = transact(workspace.engine, lambda c: c.execute(select(Experiment.spec)).scalar_one(), write=False)
    assert spec["data"]["path"] == str(stored) and spec["data"]["field"] == "text"


def test_values_the_form_cannot_show_stay_in_the_yaml_and_are_refused_there(open_page, workspace):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input(yaml.safe_dump({**ef.INITIAL, "n_constitutions": "two"})).run()
    assert any("cannot show 'two'" in c.value for c in at.caption)
    assert yaml.safe_load(_yaml(at))["n_constitutions"] == "two"
    _refused(_submit(at), workspace, "n_constitutions", "valid integer")


def test_judging_off_and_on_keeps_the_judge_section(open_page, workspace):
    at = open_page("new_experiment")
    at.button(key=K + "demo").click().run()
    judge = yaml.safe_load(_yaml(at))["judge"]
    at.checkbox(key=K + "judge.enabled").uncheck().run()
    assert "judge" not in yaml.safe_load(_yaml(at))
    assert not [w for w in at.text_input if w.key == K + "judge.judge.model"]
    at.checkbox(key=K + "judge.enabled").check().run()
    assert yaml.safe_load(_yaml(at))["judge"] == judge
    at.selectbox(key=K + "judge.judge.provider").select("openai").run()
    at.text_input(key=K + "judge.judge.base_url").input("http://127.0.0.1:8000/v1").run()
    at.number_input(key=K + "judge.judge.concurrency").set_value(4).run()
    shown = yaml.safe_load(_yaml(at))["judge"]["judge"]
    assert shown == {**judge["judge"], "provider": "openai", "base_url": "http://127.0.0.1:8000/v1", "concurrency": 4}


def test_a_hub_dataset_needs_its_name(open_page, workspace):
    at = open_page("new_experiment")
    at.selectbox(key=K + "data.source").select("hf").run()
    _refused(_submit(at), workspace, "data", "needs `dataset`")
    at.text_input(key=K + "data.dataset").input("org/tldr").run()
    at.text_input(key=K + "data.split").input("validation").run()
    data = yaml.safe_load(_yaml(at))["data"]
    assert data == {"source": "hf", "dataset": "org/tldr", "split": "validation"}


def test_a_temperature_that_is_not_a_number_is_refused(open_page, workspace):
    at = open_page("new_experiment")
    at.text_input(key=K + "sampling.temperatures").input("0.0, hot").run()
    assert _errors(at) == ["sampling.temperatures: 'hot' is not a number (write e.g. 0.0, 1.0)"]
    _refused(_submit(at), workspace, "sampling.temperatures", "'hot' is not a number")
    assert sum("'hot'" in e for e in _errors(at)) == 1  # shown once, next to the field


def test_every_error_shows_at_once_each_next_to_its_field(open_page, workspace):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input(yaml.safe_dump({**ef.INITIAL, "n_constitutions": 1,
                                                      "training": {"lr": -1.0}})).run()
    _submit(at)
    errors = _errors(at)
    n = [i for i, e in enumerate(errors) if e.startswith("n_constitutions: must be >= 2")]
    lr = [i for i, e in enumerate(errors) if e.startswith("training.lr: must be > 0")]
    assert len(n) == 1 and len(lr) == 1, errors
    # in the form's order (SAMI above Training), above the summary that nothing was submitted
    assert n[0] < lr[0] < errors.index("Nothing was submitted: fix the fields marked above.")
    _refused(at, workspace, "n_constitutions", "must be >= 2")


def test_the_forms_own_checks_and_the_specs_errors_show_together(open_page, workspace, tmp_path: Path):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input(yaml.safe_dump({**ef.INITIAL, "training": {"lr": -1.0}})).run()
    at.text_input(key=K + "model.path").input(str(tmp_path / "no-such-model")).run()
    at.text_input(key=K + "sampling.temperatures").input("0.0, hot").run()
    _submit(at)
    errors = _errors(at)
    for field, reason in (("model.path", "does not exist"), ("training.lr", "must be > 0"),
                          ("sampling.temperatures", "'hot' is not a number")):
        assert sum(e.startswith(f"{field}: ") and reason in e for e in errors) == 1, errors
    _refused(at, workspace, "training.lr", "must be > 0")


def test_sampling_under_the_antithesis_is_a_checkbox_that_adds_its_jobs(open_page, workspace):
    at = open_page("new_experiment")
    at.button(key=K + "demo").click().run()
    box = at.checkbox(key=K + "sampling.antithesis")
    assert box.value is False and yaml.safe_load(_yaml(at))["sampling"].get("antithesis") in (None, False)
    box.check().run()
    assert yaml.safe_load(_yaml(at))["sampling"]["antithesis"] is True
    _submit(at)
    assert not at.exception and not _errors(at)
    jobs = transact(workspace.engine, lambda c: c.execute(select(Job.name, Job.label)).all(), write=False)
    assert ("sample-1-antithesis", "iteration-1 (antithesis)") in {(j.name, j.label) for j in jobs}


def test_a_shipped_folder_is_a_constitution_set_each_member_a_version(open_page, workspace):
    at = open_page("new_experiment")
    at.button(key=K + "demo").click().run()
    at.selectbox(key=K + "constitution").select(ef.shipped_set_label("demo:opus")).run()
    assert yaml.safe_load(_yaml(at))["constitution"] == {"paths": "demo:opus"}
    _submit(at)
    assert not at.exception and not _errors(at)
    shown = at.success[0].value.replace("\\:", ":")  # markdown-escaped names
    assert "constitution set demo:opus (6 constitutions, one drawn per query: demo:opus/0 v1" in shown
    names = transact(workspace.engine, lambda c: sorted(c.execute(select(Constitution.name)).scalars()), write=False)
    assert names == [f"demo:opus/{k}" for k in range(6)]


def test_the_papers_prompts_and_filters_from_the_form_reach_the_jobs(open_page, workspace):
    at = open_page("new_experiment")
    at.selectbox(key=K + "prompts.preset").select("paper-tldr").run()
    at.text_input(key=K + "filters.drop_substrings").input("[insert, [], ], Response").run()
    at.text_input(key=K + "filters.ends_with").input(".").run()
    spec = yaml.safe_load(_yaml(at))
    assert spec["prompts"] == {"preset": "paper-tldr"}
    assert spec["filters"] == {"drop_substrings": ["[insert", "[]", "]", "Response"], "ends_with": ["."]}
    codes = [c.value for c in at.code]
    gen = next(c for c in codes if c.endswith("Summary: The post"))
    train = next(c for c in codes if "<rest of response 1" in c)
    assert "Thank you" in gen and "Thank you" not in train and train.split(" The post <rest")[0].endswith("Summary:")
    at = _submit(at)
    assert at.success and not _errors(at)
    jobs = transact(workspace.engine, lambda c: dict(c.execute(select(Job.name, Job.spec)).all()),
                    write=False)
    assert jobs["generate-1"]["prompts"]["preset"] == "paper-tldr"
    assert jobs["generate-1"]["filters"]["ends_with"] == ["."] and jobs["sample-1"]["prompts"]["preset"] == "paper-tldr"


def test_an_unknown_placeholder_is_refused_next_to_the_template(open_page, workspace):
    at = open_page("new_experiment")
    at.text_area(key=K + "prompts.generation").input("{constitution}\nPOST: {post}\n{query}\nTL;DR:").run()
    assert any("unknown placeholder {post}" in c.value for c in at.caption)  # the preview says why it has none
    _refused(_submit(at), workspace, "prompts.generation", "unknown placeholder {post}")


def test_too_few_uploaded_queries_a_missing_constitution_and_model_all_show_at_submit(open_page, workspace):
    """30 uploaded queries cannot hold out eval_size 50: refused at submit naming the field and
    the fix, beside every other error of the spec (not only the first)."""
    at = _upload_source(open_page("new_experiment"))
    at.text_input(key=K + "data.field").input("text").run()
    rows = b"".join(json.dumps({"text": f"post {i}"}).encode() + b"\n" for i in range(30))
    at.file_uploader(key=K + "upload").set_value(("thirty.jsonl", rows, "application/octet-stream")).run()
    _refused(_submit(at), workspace, "data.eval_size", "lower data.eval_size to at most 29")
    spec = {**yaml.safe_load(_yaml(at)), "constitution": {"path": "/no/such/constitution.json"},
            "model": {"path": "/no/such/model"}}
    at.text_area(key=K + "yaml").input(yaml.safe_dump(spec)).run()
    _submit(at)
    for field, reason in (("model.path", "does not exist"), ("constitution.path", "does not exist"),
                          ("data.eval_size", "at most 29")):
        assert sum(e.startswith(f"{field}: ") and reason in e for e in _errors(at)) == 1, _errors(at)
    _refused(at, workspace, "data.eval_size", "at most 29")


def test_errors_of_a_submit_go_when_the_yaml_changes(open_page, workspace):
    at = open_page("new_experiment")
    at.number_input(key=K + "n_constitutions").set_value(1).run()
    _refused(_submit(at), workspace, "n_constitutions", "must be >= 2")
    at.text_area(key=K + "yaml").input(yaml.safe_dump({**ef.INITIAL, "iterations": 2})).run()
    assert not _errors(at)
    # an invalid edit after a failed submit drops the old errors too (its own is shown)
    at.number_input(key=K + "n_constitutions").set_value(1).run()
    assert any(e.startswith("n_constitutions: ") for e in _errors(_submit(at)))
    at.text_area(key=K + "yaml").input("name: [unclosed\n").run()
    assert [e for e in _errors(at) if not e.startswith("yaml: ")] == [], _errors(at)


def test_a_learning_rate_in_scientific_notation_stays_in_the_form(open_page, workspace):
    at = open_page("new_experiment")
    at.text_area(key=K + "yaml").input(yaml.safe_dump(ef.INITIAL) + "training: {lr: 1e-5}\n").run()
    assert not _errors(at) and not [c.value for c in at.caption if "training.lr" in c.value]
    assert at.number_input(key=K + "training.lr").value == pytest.approx(1e-5)
    at.number_input(key=K + "training.lr").set_value(2e-6).run()
    assert yaml.safe_load(_yaml(at))["training"]["lr"] == pytest.approx(2e-6)
    _submit(at)
    spec = transact(workspace.engine, lambda c: c.execute(select(Experiment.spec)).scalar_one(), write=False)
    assert spec["training"]["lr"] == pytest.approx(2e-6)


def test_a_submitted_shipped_constitution_is_listed_once(open_page, workspace):
    at = open_page("new_experiment")
    _submit(at)
    assert at.success, _errors(at)
    at = open_page("new_experiment")
    options = at.selectbox(key=K + "constitution").options
    assert "demo:opus/0 (shipped)" in options and "demo:opus/0 v1" not in options
    assert at.selectbox(key=K + "constitution").value == "demo:opus/0 (shipped)"
    # an edited version under the shipped name is a version of its own, and listed as one
    import streamlit as st

    from app.constitutions import load_shipped

    edited = load_shipped("demo:opus/0")
    edited[0]["principle"] = "Summaries are very short."
    transact(workspace.engine, lambda c: constitution_version(c, "demo:opus/0", edited))
    st.cache_data.clear()  # the page's cached read of the versions (written here, not through the app)
    assert "demo:opus/0 v2" in open_page("new_experiment").selectbox(key=K + "constitution").options


def test_the_demo_set_too_is_checked_against_eval_size(open_page, workspace):
    at = open_page("new_experiment")
    at.number_input(key=K + "data.eval_size").set_value(250).run()
    _refused(_submit(at), workspace, "data.eval_size", "the demo set gives at most 250 queries")
