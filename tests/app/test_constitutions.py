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
