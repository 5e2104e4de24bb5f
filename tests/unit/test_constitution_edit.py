"""app.constitutions (the Constitutions page's logic): editor rows, validation (sami_core's rules), import/export of
the reference format, and the prompt preview."""

from __future__ import annotations

import json

import pytest

from app import constitutions as ce
from sami_core import constitutions as core
from sami_core.errors import ConstitutionError
from sami_core.prompts import plain_prompt

ROWS = [{"principle": "Be concise.", "antithesis": "Be long-winded."},
        {"principle": "Be accurate.", "antithesis": None}]


def test_editor_state_is_applied_like_the_editor_shows_it():
    state = {"edited_rows": {"1": {"antithesis": "Be inaccurate."}}, "added_rows": [{"principle": "New."}],
             "deleted_rows": [0]}
    assert ce.apply_editor_state(ROWS, state) == [
        {"principle": "Be accurate.", "antithesis": "Be inaccurate."}, {"principle": "New.", "antithesis": None}]
    assert ce.apply_editor_state(ROWS, None) == ROWS


def test_blank_rows_are_dropped_and_empty_antitheses_become_none():
    rows = [{"principle": "  a ", "antithesis": float("nan")}, {"principle": None, "antithesis": ""},
            {"principle": "b", "antithesis": " c "}]
    assert ce.clean_rows(rows) == [{"principle": "a", "antithesis": None}, {"principle": "b", "antithesis": "c"}]


@pytest.mark.parametrize("name, rows, message", [
    ("c", [], "no principles"),
    ("c", [{"principle": "", "antithesis": "long"}], "principle 1 is empty"),
    ("c", [{"principle": "brief", "antithesis": None}], "at most 1"),  # N >= 2 needs one antithesis
    ("c", [{"principle": "brief", "antithesis": "x"}, {"principle": "Brief", "antithesis": "y"}], "duplicates"),
    ("", ROWS, "Constitution name"),
    ("x" * 201, ROWS, "at most 200"),
])
def test_bad_drafts_are_refused(name, rows, message):
    result = ce.check(name, rows)
    assert not result.ok
    assert any(message in e for e in result.errors), result.errors


def test_a_principle_without_antithesis_is_allowed_with_a_warning():
    result = ce.check("c", ROWS)
    assert result.ok and result.constitution.max_variants == 2
    assert any("Principle 2 has no antithesis" in w for w in result.warnings)


def test_reference_export_import_round_trip():
    text = ce.export_json(ROWS, "reference")
    data = json.loads(text)
    assert data["positive"] == "1. Be concise.\n2. Be accurate." and data["negative"].startswith("1. Be long-winded.")
    name, principles = ce.parse_upload("mine.json", text.encode(), 1)
    assert name == "mine" and principles == ROWS
    name, principles = ce.parse_upload("n.json", ce.export_json(ROWS, "native").encode(), 1)
    assert principles == ROWS


def test_the_shipped_reference_files_import():
    for s in ce.shipped():
        principles = ce.load_shipped(s)
        assert principles and ce.check("x", principles).ok


@pytest.mark.parametrize("filename, content, message", [
    ("c.txt", b"{}", "not a .json"),
    ("c.json", b"{nope", "not valid JSON"),
    ("c.json", json.dumps({"positive": "1. a"}).encode(), "negative"),
    ("c.json", b" " * (2 * 1024 * 1024), "over the 1 MB"),
])
def test_bad_imports_are_refused(filename, content, message):
    with pytest.raises(ConstitutionError, match=message):
        ce.parse_upload(filename, content, 1)


def test_preview_is_the_exact_generation_prompt_and_the_training_pairs():
    c = core.from_native(ROWS)
    post = ce.sample_posts(1)[0]["post"]
    pv = ce.preview(c, post, n=2, seed=0)
    assert len(pv.generation) == 2 and len(pv.training) == 2 and all(len(r) == 2 for r in pv.training)
    for v, prompt in zip(pv.variants, pv.generation):
        assert prompt == plain_prompt("summarization", v.text, post)
    assert pv.variants[0].is_positive and "Be concise." in pv.generation[0] and post in pv.generation[0]
    assert "Be long-winded." in pv.generation[1]  # the only flippable principle is flipped
    assert pv.training[0][1].startswith(pv.generation[0] + " ") and "response 2" in pv.training[0][1]
    chat = ce.preview(c, post, n=2, chat=True)
    assert "system" in chat.generation[0] and "Be concise." in chat.generation[0]
