"""sami_core.data_files: query files (JSON, JSONL, CSV) read and checked without the ML
stack, as the app's uploads and a submitted spec's data file are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_core.data_files import DataFileError, check_data_file, check_upload, read_records
from sami_core.errors import DataError


def test_upload_checks():
    ok_jsonl = b'{"post": "a"}\n{"post": "b"}\n'
    assert check_upload("q.jsonl", ok_jsonl, "post", 1) == 2
    assert check_upload("q.json", json.dumps([{"post": "a"}]).encode(), "post", 1) == 1
    assert check_upload("q.json", ok_jsonl, "post", 1) == 2  # JSON lines in a .json file
    assert check_upload("q.csv", b"id,post\n1,hello\n2,world\n", "post", 1) == 2
    with pytest.raises(DataFileError, match="not a JSON, JSONL or CSV"):
        check_upload("q.txt", b"hello", "post", 1)
    with pytest.raises(DataFileError, match="no field 'post'.*fields are: text"):
        check_upload("q.jsonl", b'{"text": "a"}\n', "post", 1)
    with pytest.raises(DataFileError, match="row 2 has no text"):
        check_upload("q.csv", b"post\nhello\n\"\"\n", "post", 1)
    with pytest.raises(DataFileError, match="over the 1 MB"):
        check_upload("q.jsonl", ok_jsonl * 200_000, "post", 1)
    with pytest.raises(DataFileError, match="line 2 is not valid JSON"):
        check_upload("q.jsonl", b'{"post": "a"}\n{nope\n', "post", 1)
    with pytest.raises(DataFileError, match="empty"):
        check_upload("q.csv", b"", "post", 1)


def test_records_keep_their_fields_and_a_bom_is_dropped():
    rows = read_records("q.csv", "\ufeffid,post\n1,hello\n".encode())
    assert rows == [{"id": "1", "post": "hello"}]
    assert read_records("q.json", b'[{"post": "a", "n": 2}]') == [{"post": "a", "n": 2}]


def test_a_refused_file_is_a_data_error():
    with pytest.raises(DataError):
        read_records("q.json", b'{"post": "one object"}')


def test_data_file_checks(tmp_path: Path):
    good, bad = tmp_path / "q.jsonl", tmp_path / "bad.jsonl"
    good.write_text('{"post": "a"}\n')
    bad.write_text('{"text": "a"}\n')
    (tmp_path / "q.parquet").write_bytes(b"PAR1")
    assert check_data_file(str(good), "post", 1) is None
    assert "no field 'post'" in check_data_file(str(bad), "post", 1)
    assert "does not exist" in check_data_file(str(tmp_path / "missing.jsonl"), "post", 1)
    assert check_data_file(str(tmp_path / "q.parquet"), "post", 1) is None  # the stage reads it
    assert check_data_file(str(bad), "post", 1e-9) is None  # too big to check here: the stage checks it


def test_nested_field_paths_and_split_files(tmp_path: Path):
    p = tmp_path / "tldr.jsonl"
    p.write_text(json.dumps({"info": {"id": "a", "post": "my post"}, "choice": 0}) + "\n")
    assert check_data_file(str(p), "info.post", 1) is None
    assert "no field 'info.pst'" in check_data_file(str(p), "info.pst", 1)
    assert "no field 'info.id.x'" in check_data_file(str(p), "info.id.x", 1)
    assert check_data_file(str(tmp_path / "{split}.jsonl"), "post", 1) is None  # the stage reads each split
