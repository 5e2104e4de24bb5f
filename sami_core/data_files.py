"""Query files read without the ML stack: a JSON (a list of objects, or JSON lines),
JSONL or CSV file as rows, checked for the query field and a size limit.

The generate stage reads the same files through `datasets` (sami_core.data); these
checks run first, where a file arrives (an upload in the app, a ``data.path`` of a spec
being submitted), so that a bad file is refused before any job is enqueued. Imports no
torch, transformers or datasets.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sami_core.errors import DataError

# The file types read and checked here (by extension); others (Parquet) only by the stage.
FILE_TYPES = ("json", "jsonl", "csv")


class DataFileError(DataError, ValueError):
    """A query file is refused (the message, which starts with the file's name, says why)."""


def read_records(filename: str, content: bytes) -> list[dict[str, Any]]:
    """Rows of a JSON (a list of objects, or JSON lines), JSONL or CSV file."""
    ext = Path(filename).suffix.lower().lstrip(".")
    if ext not in FILE_TYPES:
        raise DataFileError(f"{filename}: not a JSON, JSONL or CSV file (by its extension)")
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise DataFileError(f"{filename}: not UTF-8 text") from None
    if not text.strip():
        raise DataFileError(f"{filename}: the file is empty")
    if ext == "csv":
        try:
            rows = list(csv.DictReader(io.StringIO(text)))
        except csv.Error as err:
            raise DataFileError(f"{filename}: not valid CSV: {err}") from None
        if not rows:
            raise DataFileError(f"{filename}: a header but no rows")
        return rows
    rows: Any = None
    if ext == "json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError:
            rows = None  # maybe JSON lines in a .json file
    if rows is None:
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataFileError(f"{filename}: line {i} is not valid JSON: {err.msg}") from None
    if isinstance(rows, dict):
        raise DataFileError(f"{filename}: give a list of objects (one per query), or one JSON object per line")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        raise DataFileError(f"{filename}: give at least one row, each a JSON object (one per query)")
    return rows


_MISSING = object()


def _get(row: Mapping[str, Any], field: str) -> Any:
    """``row[field]``, or a dotted path (``info.post``) into nested objects; _MISSING if absent."""
    if field in row:
        return row[field]
    cur: Any = row
    for key in field.split("."):
        if not isinstance(cur, Mapping) or key not in cur:
            return _MISSING
        cur = cur[key]
    return cur


def check_records(filename: str, rows: Sequence[Mapping[str, Any]], field: str) -> None:
    """Every row has a non-empty text in ``field`` (a column, or a dotted path into nested objects)."""
    if not any(_get(r, field) is not _MISSING for r in rows):
        cols = sorted({k for r in rows[:100] for k in r})
        raise DataFileError(f"{filename}: no field {field!r} (the query text); its fields are: {', '.join(cols)}. "
                            "Set the query field, or upload a file that has it")
    for i, r in enumerate(rows, 1):
        value = _get(r, field)
        if not isinstance(value, str) or not value.strip():
            raise DataFileError(f"{filename}: row {i} has no text in {field!r}")


def check_upload(filename: str, content: bytes, field: str, max_mb: float) -> int:
    """Refuse (DataFileError) a file that is too big, of another type, or lacks the query
    field; else the number of queries."""
    if len(content) > max_mb * 1024 * 1024:
        raise DataFileError(f"{filename}: {len(content) / 2**20:.1f} MB is over the {max_mb} MB upload limit")
    rows = read_records(filename, content)
    check_records(filename, rows, field)
    return len(rows)


def check_data_file(path: str, field: str, max_mb: float) -> str | None:
    """The same checks on a data file named in a spec (source: file); None when fine or
    when it cannot be checked here (another type, too big: the generate stage checks it),
    else why it is refused."""
    if "{split}" in path:
        return None  # one file per split: the stage reads (and checks) each
    p = Path(path).expanduser()
    if not p.is_file():
        return f"file {path!r} does not exist"
    if p.suffix.lower().lstrip(".") not in FILE_TYPES:
        return None  # e.g. Parquet: the stage reads it; nothing to check here
    if p.stat().st_size > max_mb * 1024 * 1024:
        return None  # too big to check here; the generate stage checks the field
    try:
        check_records(p.name, read_records(p.name, p.read_bytes()), field)
    except DataFileError as err:
        return str(err)
    return None
