"""sami_core.results: the paper's published response files and the CSV helpers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_core.errors import DataError
from sami_core.results import (
    PUBLISHED_DIR, csv_safe, load_published, load_published_dir, parse_result_name, safe_output_path,
)


def test_all_shipped_files_parse():
    results = load_published_dir()
    assert len(results) == 10
    for r in results:
        assert len(r.rows) == 250
        assert [row.query_id for row in r.rows] == [str(i) for i in range(250)]
        assert r.model == "mistral" and r.constitution_source in ("mistral", "opus") and r.temperature == 0.0
        assert r.rows[0].question.startswith("POST:") and r.rows[0].constitution.startswith("1. ")
        assert all(row.response for row in r.rows)
    checkpoints = sorted({r.checkpoint for r in results})
    assert checkpoints == ["base", "instruct", "iteration-1-epoch-0.12", "iteration-2-epoch-0.25-from-epoch-0.12",
                           "iteration-3-epoch-0.38-from-epoch-0.25"]
    # the same post at the same index in every file
    assert len({r.rows[17].question for r in results}) == 1


def test_parse_result_name():
    name = "iteration-2-epoch-0.25-from-epoch-0.12-mistral-opus-constitution-temperature-0.0.json"
    assert parse_result_name(name) == {
        "source": "iteration-2-epoch-0.25-from-epoch-0.12-mistral-opus-constitution-temperature-0.0",
        "checkpoint": "iteration-2-epoch-0.25-from-epoch-0.12", "model": "mistral",
        "constitution_source": "opus", "temperature": 0.0}
    assert parse_result_name("base-llama-claude-constitution-temperature-1")["temperature"] == 1.0
    with pytest.raises(DataError, match="not named like"):
        parse_result_name("responses.json")


def test_load_published_rejects_malformed(tmp_path: Path):
    p = tmp_path / "base-m-c-constitution-temperature-0.0.json"
    p.write_text(json.dumps({"constitution": {"0": "1. x"}, "question": {"0": "q"}, "response": {"1": "r"}}))
    with pytest.raises(DataError, match="different indices"):
        load_published(p)
    p.write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        load_published(p)
    assert PUBLISHED_DIR.is_dir()


@pytest.mark.parametrize("cell", ["=1+1", "+1", "-2", "@SUM(A1)", "\tx", "\rx", "=HYPERLINK(\"http://x\")"])
def test_csv_safe_neutralises_formulas(cell):
    assert csv_safe(cell) == "'" + cell


def test_csv_safe_leaves_other_values():
    assert csv_safe("The post") == "The post"
    assert csv_safe(-2) == -2 and csv_safe(0.5) == 0.5 and csv_safe(None) is None and csv_safe("") == ""


def test_safe_output_path(tmp_path: Path):
    assert safe_output_path(tmp_path, "winrates.csv") == (tmp_path / "winrates.csv").resolve()
    assert safe_output_path(tmp_path, "sub/x.csv") == (tmp_path / "sub" / "x.csv").resolve()
    for bad in ("../x.csv", "/etc/passwd", "sub/../../x.csv", "", ".", "a\x00b"):
        with pytest.raises(ValueError):
            safe_output_path(tmp_path, bad)
    (tmp_path / "link").symlink_to(tmp_path.parent)
    with pytest.raises(ValueError, match="escapes"):
        safe_output_path(tmp_path, "link/x.csv")
