"""Constitutions page: saving makes a new version (old ones stay, the same principles
reuse a version), inline validation writes nothing, import/export of the reference
format, the versions' jobs, and the prompt preview."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from app import constitutions as ce
from db.engine import transact
from db.models import Constitution
from sami_core.spec import DATA_DIR
from services import experiments as submit

K = "constitutions."
ROWS = [{"principle": "Summaries are concise.", "antithesis": "Summaries are long-winded."},
        {"principle": "Summaries are accurate.", "antithesis": "Summaries invent details."}]


def _versions(workspace) -> list[tuple[str, int, list]]:
    return transact(workspace.engine, lambda c: [
        (r.name, r.version, r.principles) for r in
        c.execute(select(Constitution).order_by(Constitution.name, Constitution.version))], write=False)


def _count(workspace) -> int:
    return transact(workspace.engine, lambda c: c.execute(select(func.count()).select_from(Constitution)).scalar_one(),
                    write=False)


def _draft(at, name: str, rows: list[dict]):
    """Type a name and rows into a new constitution (rows through the editor's edit state)."""
    at.text_input(key=K + "name").input(name)
    at.session_state[K + "editor"] = {"edited_rows": {}, "added_rows": rows, "deleted_rows": []}
    return at.run()


def test_save_makes_versions_and_old_ones_stay(open_page, workspace):
    at = _draft(open_page("constitutions"), "tldr", ROWS)
    at.button(key=K + "save").click().run()
    assert not at.exception
    assert "Saved" in at.success[0].value and "version 1" in at.success[0].value
    assert _versions(workspace) == [("tldr", 1, [{"principle": r["principle"], "antithesis": r["antithesis"]}
                                                 for r in ROWS])]
    # the saved version is selected and shown in the editor
    assert at.selectbox(key=K + "version").format_func(at.selectbox(key=K + "version").value) == "v1"
    assert list(at.data_editor[0].value["principle"]) == [r["principle"] for r in ROWS]

    # edit one antithesis: a new version whose parent is v1; v1 stays as it was
    at.session_state[K + "editor"] = {"edited_rows": {1: {"antithesis": "Summaries are vague."}},
                                      "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key=K + "save").click().run()
    assert "Saved" in at.success[0].value and "version 2" in at.success[0].value
    versions = _versions(workspace)
    assert [v[:2] for v in versions] == [("tldr", 1), ("tldr", 2)]
    assert versions[0][2][1]["antithesis"] == "Summaries invent details."
    assert versions[1][2][1]["antithesis"] == "Summaries are vague."
    assert "parent v1" in " ".join(t.value for t in at.text)
    table = next(d.value for d in at.dataframe if "experiments" in d.value.columns)  # all versions
    assert list(table["version"]) == [2, 1] and list(table["parent"]) == ["v1", ""]

    # old versions can still be picked and shown
    at.selectbox(key=K + "version").select(at.selectbox(key=K + "version").options[1]).run()
    assert list(at.data_editor[0].value["antithesis"])[1] == "Summaries invent details."


def test_saving_the_same_principles_reuses_the_version(open_page, workspace):
    at = _draft(open_page("constitutions"), "tldr", ROWS)
    at.button(key=K + "save").click().run()
    at.button(key=K + "save").click().run()
    msg = at.success[0].value
    assert "Saved" in msg and "already tldr version 1" in msg and "reused" in msg
    assert _count(workspace) == 1


@pytest.mark.parametrize("name, rows, message", [
    ("c", [], "no principles"),
    ("c", [{"principle": "", "antithesis": "Be long."}], "principle 1 is empty"),
    ("c", [{"principle": "Be brief.", "antithesis": None}], "at most 1"),
    ("c", [{"principle": "Be brief.", "antithesis": "Be long."}, {"principle": "be brief.", "antithesis": "x"}],
     "duplicates principle 1"),
    ("", ROWS, "Constitution name"),
    ("n" * 201, ROWS, "at most 200 characters"),
])
def test_bad_drafts_show_an_error_and_save_nothing(open_page, workspace, name, rows, message):
    at = _draft(open_page("constitutions"), name, rows)
    at.button(key=K + "save").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(message in e for e in errors), errors
    assert any("Nothing saved" in e for e in errors)
    assert not at.success
    assert _count(workspace) == 0


def test_a_principle_without_antithesis_saves_with_a_warning(open_page, workspace):
    rows = [ROWS[0], {"principle": "Summaries are polite.", "antithesis": None}]
    at = _draft(open_page("constitutions"), "mixed", rows)
    assert any("Principle 2 has no antithesis" in c.value for c in at.caption)
    at.button(key=K + "save").click().run()
    assert "Saved" in at.success[0].value
    assert _versions(workspace)[0][2][1] == {"principle": "Summaries are polite.", "antithesis": None}


def test_import_of_the_reference_format_and_export_round_trip(open_page, workspace):
    ref = (DATA_DIR / "constitutions" / "opus" / "0.json").read_bytes()
    at = open_page("constitutions")
    at.file_uploader(key=K + "upload").set_value(("opus0.json", ref, "application/json")).run()
    assert not at.exception
    assert at.text_input(key=K + "name").value == "opus0"
    expected = ce.parse_upload("x.json", ref, 1)[1]
    assert list(at.data_editor[0].value["principle"]) == [p["principle"] for p in expected]
    at.button(key=K + "save").click().run()
    assert "Saved opus0 as version 1" in at.success[0].value
    # export of the saved version: the reference format, which imports back to the same principles
    assert [b.label for b in at.get("download_button")][:1] == ["Export (reference JSON)"]
    exported = ce.export_json(_versions(workspace)[0][2], "reference")
    assert json.loads(exported)["positive"] == json.loads(ref)["positive"]
    assert ce.parse_upload("again.json", exported.encode(), 1)[1] == expected


@pytest.mark.parametrize("filename, content, message", [
    ("c.json", b"{not json", "not valid JSON"),
    ("c.json", json.dumps({"positive": "1. a", "negative": "1. b\n2. c"}).encode(), "positive has 1"),
])
def test_bad_imports_show_an_error_and_change_nothing(open_page, workspace, filename, content, message):
    at = _draft(open_page("constitutions"), "keep", ROWS)
    at.file_uploader(key=K + "upload").set_value((filename, content, "application/json")).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.text_input(key=K + "name").value == "keep"
    assert _count(workspace) == 0


def test_prompt_preview_shows_the_principles_and_the_query(open_page):
    at = _draft(open_page("constitutions"), "tldr", ROWS)
    post = ce.sample_posts(1)[0]["post"]
    codes = [c.value for c in at.code]
    assert len(codes) == 2 + 4  # N = 2 generation prompts and the 2 x 2 training sequences
    assert ROWS[0]["principle"] in codes[0] and post in codes[0] and codes[0].endswith("SUMMARY:")
    assert ROWS[0]["antithesis"] in codes[1] or ROWS[1]["antithesis"] in codes[1]
    assert codes[3].startswith(codes[0] + " <response 2")


def test_each_version_lists_the_jobs_that_used_it(open_page, workspace, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    spec = {"name": "e", "constitution": {"name": "tldr", "principles": ROWS}}
    result = transact(workspace.engine, lambda c: submit.submit(c, submit.prepare_data(spec)))
    at = open_page("constitutions", constitution=str(result.constitution["id"]))
    assert at.selectbox(key=K + "pick").value == "tldr"
    text = " ".join(t.value for t in at.text)
    assert f"used by {len(result.jobs)} job(s) in 1 experiment(s)" in text
    usage = next(d.value for d in at.dataframe if "job ids" in d.value.columns)
    assert list(usage["experiment"]) == [result.experiment_id] and list(usage["jobs"]) == [len(result.jobs)]


def test_a_shipped_constitution_loads_into_the_editor(open_page):
    at = open_page("constitutions")
    at.selectbox(key=K + "shipped").select("demo:mistral/0").run()
    at.button(key=K + "load_shipped").click().run()
    assert at.text_input(key=K + "name").value == "mistral-0"
    assert list(at.data_editor[0].value["principle"]) == [p["principle"] for p in ce.load_shipped("demo:mistral/0")]



def test_job_versions_name_the_version_each_job_used(workspace):
    from db.reads.constitutions import job_versions

    spec = {"name": "e", "constitution": {"name": "tldr", "principles": ROWS}}
    result = transact(workspace.engine, lambda c: submit.submit(c, submit.prepare_data(spec)))
    ids = [j["id"] for j in result.jobs]
    assert transact(workspace.engine, lambda c: job_versions(c, ids), write=False) == {i: "tldr v1" for i in ids}


def test_prompt_preview_of_the_papers_templates(open_page):
    at = _draft(open_page("constitutions"), "tldr", ROWS)
    at.selectbox(key=K + "preset").select("paper-tldr").run()
    codes = [c.value for c in at.code]
    gen, train = codes[0], codes[2]
    assert gen.endswith("Summary: The post") and "Thank you" in gen  # the scaffold, ending in the forced start
    training_prompt = train.split(" The post <rest of response 1")[0]
    assert training_prompt.endswith("Summary:") and "Thank you" not in training_prompt and training_prompt != gen
    assert codes[3].startswith(training_prompt + " The post <rest of response 2")  # the prefix is kept
    at.checkbox(key=K + "keep_prefix").uncheck().run()
    assert [c.value for c in at.code][2].startswith(training_prompt + " <response 1")  # stripped
    at.selectbox(key=K + "task").select("dialogue").run()
    assert any("written for task summarization" in e.value for e in at.error) and not at.exception


# ---- draft with a model ------------------------------------------------------------------------
DRAFTED = [{"principle": "Summaries should be concise.", "antithesis": "Summaries should be long-winded."},
           {"principle": "Summaries should be neutral.", "antithesis": "Summaries should take sides."}]


def _worker_until_idle(workspace, timeout: float = 120) -> str:
    """A real worker (python -m workers, CPU only) that runs what is queued, then exits."""
    import os
    import subprocess
    import sys

    from tests.app.conftest import ROOT

    env = {**os.environ, "SAMI_HOME": str(workspace.home),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "workers", "--devices", "", "--exit-when-idle",
                           "--poll-interval", "0.2", "--tick-interval", "0.2"], env=env, cwd=workspace.home,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stderr


def test_draft_with_a_model_queues_a_job_and_its_draft_is_edited_and_saved(open_page, workspace):
    """The form queues a write_constitution job; a real worker runs it against a real
    OpenAI-speaking server on 127.0.0.1; the draft appears in the editor, is edited, and
    "Save as new version" stores the edited principles."""
    from tests.openai_server import OpenAIServer

    at = open_page("constitutions")
    with OpenAIServer(constitution_reply="```json\n" + json.dumps(DRAFTED) + "\n```") as srv:
        at.text_input(key=K + "draft.model").input("writer-model")
        at.text_input(key=K + "draft.base_url").input(srv.base_url)
        at.text_input(key=K + "draft.api_key_env").input("")
        at.text_area(key=K + "draft.task").input("summarise Reddit posts")
        at.number_input(key=K + "draft.n").set_value(2)
        at.text_input(key=K + "draft.name").input("drafted")
        at.button(key=K + "draft.queue").click().run()
        assert not at.exception and not at.error, [e.value for e in at.error]
        assert any("Draft job #1 is queued" in i.value for i in at.info)
        _worker_until_idle(workspace)
        assert srv.requests == 1
    at.run()
    assert not at.exception
    assert "2 principles by writer-model" in at.success[0].value  # the flash: the draft is in the editor
    assert at.text_input(key=K + "name").value == "drafted"
    assert list(at.data_editor[0].value["antithesis"]) == [p["antithesis"] for p in DRAFTED]
    assert _count(workspace) == 0  # a draft is a proposal until it is saved

    at.session_state[K + "editor"] = {"edited_rows": {1: {"principle": "Summaries should be balanced."}},
                                      "added_rows": [], "deleted_rows": []}
    at.run()
    at.button(key=K + "save").click().run()
    assert "Saved drafted as version 1" in at.success[0].value
    assert _versions(workspace) == [("drafted", 1, [DRAFTED[0], {**DRAFTED[1],
                                                                 "principle": "Summaries should be balanced."}])]
    at.run()  # the saved version stays in the editor: the draft is loaded once
    assert list(at.data_editor[0].value["principle"])[1] == "Summaries should be balanced."


def test_a_draft_with_bad_input_names_every_field_and_queues_nothing(open_page, workspace):
    from db.models import Job

    at = open_page("constitutions")
    at.text_input(key=K + "draft.model").input("")
    at.text_input(key=K + "draft.api_key_env").input("sk-not-a-variable-name")
    at.button(key=K + "draft.queue").click().run()
    errors = [e.value for e in at.error]
    assert any(e.startswith("task_description: say what the model should do") for e in errors), errors
    assert any(e.startswith("writer.api_key_env: must be the NAME of an environment variable") for e in errors)
    assert any(e.startswith("writer.model: name the writer's model") for e in errors)
    # Azure OpenAI: its endpoint and API version replace the base URL
    at.selectbox(key=K + "draft.provider").select("azure").run()
    assert not [t for t in at.text_input if t.key == K + "draft.base_url"]
    at.text_input(key=K + "draft.model").input("my-deployment")
    at.text_input(key=K + "draft.api_key_env").input("AZURE_OPENAI_API_KEY")
    at.text_area(key=K + "draft.task").input("summarise posts")
    at.button(key=K + "draft.queue").click().run()
    assert [e.value for e in at.error] == ["writer: provider 'azure' needs `azure_endpoint` and `api_version`"]
    assert transact(workspace.engine, lambda c: c.execute(select(func.count()).select_from(Job)).scalar_one(),
                    write=False) == 0


def test_a_failed_draft_shows_why(open_page, workspace):
    """A server that answers no constitution: the job fails, and the page says so."""
    from tests.openai_server import OpenAIServer

    at = open_page("constitutions")
    with OpenAIServer(constitution_reply="I cannot write principles.") as srv:
        at.text_input(key=K + "draft.base_url").input(srv.base_url)
        at.text_input(key=K + "draft.api_key_env").input("")
        at.text_area(key=K + "draft.task").input("summarise posts")
        at.button(key=K + "draft.queue").click().run()
        _worker_until_idle(workspace)
    at.run()
    assert any("Draft job #1 failed" in e.value and "no valid constitution" in e.value for e in at.error), \
        [e.value for e in at.error]
    assert at.text_input(key=K + "name").value == ""


def test_a_long_principle_is_read_and_edited_in_full(open_page, workspace):
    """The table cuts a long principle at the column's width; the selected row's full text
    shows in text areas, and an edit there goes back into the table (and is saved)."""
    long = "Summaries should be concise, " + "and keep every detail that matters to the poster, " * 6 + "nothing else."
    def full(at) -> dict:
        return {a.label: a for a in at.text_area if a.key and a.key.startswith(K + "full.")}

    at = _draft(open_page("constitutions"), "long", [{"principle": long, "antithesis": "Summaries ramble."}, ROWS[1]])
    assert full(at)["Principle"].value == long
    at.selectbox(key=K + "full_row").select(1).run()
    assert full(at)["Principle"].value == ROWS[1]["principle"]
    full(at)["Antithesis"].input("Summaries invent details, names and dates.").run()
    at.button(key=K + "full_apply").click().run()
    assert list(at.data_editor[0].value["antithesis"]) == ["Summaries ramble.",
                                                            "Summaries invent details, names and dates."]
    at.button(key=K + "save").click().run()
    assert _versions(workspace)[0][2] == [{"principle": long, "antithesis": "Summaries ramble."},
                                          {**ROWS[1], "antithesis": "Summaries invent details, names and dates."}]


def test_the_key_variable_follows_the_provider_unless_the_user_named_one(open_page):
    at = open_page("constitutions")
    assert at.text_input(key=K + "draft.api_key_env").value == "OPENAI_API_KEY"
    at.selectbox(key=K + "draft.provider").select("azure").run()
    assert at.text_input(key=K + "draft.api_key_env").value == "AZURE_OPENAI_API_KEY"
    at.text_input(key=K + "draft.api_key_env").input("MY_KEY").run()
    at.selectbox(key=K + "draft.provider").select("openai").run()
    assert at.text_input(key=K + "draft.api_key_env").value == "MY_KEY"
    assert not at.exception
