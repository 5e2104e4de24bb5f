"""Published results and CSV helpers (torch-free: the app and the importer use them).

The SAMI paper's reference implementation publishes one JSON file of responses per
checkpoint (format: ``sami_core/data/sami_tldr/FORMAT.md``), named
``<checkpoint>-<policy model>-<constitution source>-constitution-temperature-<t>.json``,
each ``{"constitution": {"0": ...}, "question": {"0": ...}, "response": {"0": ...}}``
with string indices that line up across files.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sami_core.errors import DataError

PUBLISHED_DIR = Path(__file__).parent / "data" / "sami_tldr" / "responses"

_NAME = re.compile(
    r"^(?P<checkpoint>.+)-(?P<model>[^-]+)-(?P<constitution_source>[^-]+)"
    r"-constitution-temperature-(?P<temperature>\d+(?:\.\d+)?)$"
)


@dataclass(frozen=True)
class PublishedRow:
    query_id: str  # the file's string index ("0".."249")
    question: str  # as published, e.g. "POST: ..."
    constitution: str  # numbered principles
    response: str


@dataclass(frozen=True)
class PublishedResults:
    source: str  # the file name without .json
    checkpoint: str  # base, instruct, iteration-K-epoch-E[-from-epoch-F]
    model: str  # the policy model, e.g. mistral
    constitution_source: str  # who wrote the constitution, e.g. opus
    temperature: float
    rows: list[PublishedRow] = field(default_factory=list)


def parse_result_name(name: str) -> dict[str, Any]:
    """``iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0[.json]`` ->
    {source, checkpoint, model, constitution_source, temperature}; DataError if it does not fit."""
    source = name[:-5] if name.endswith(".json") else name
    m = _NAME.match(source)
    if not m:
        raise DataError(
            f"{name!r} is not named like a published results file: "
            "<checkpoint>-<policy model>-<constitution source>-constitution-temperature-<t>.json"
        )
    return {"source": source, "checkpoint": m["checkpoint"], "model": m["model"],
            "constitution_source": m["constitution_source"], "temperature": float(m["temperature"])}


def load_published(path: str | Path) -> PublishedResults:
    """Read one published response file; rows are ordered by their integer index."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"results file {str(p)!r} does not exist")
    meta = parse_result_name(p.name)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{p}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                        f"save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{p}: not valid JSON: {err}") from None
    cols = ("constitution", "question", "response")
    if not isinstance(data, dict) or not all(isinstance(data.get(c), dict) for c in cols):
        raise DataError(f"{p}: expected an object with {', '.join(cols)} (each index -> text)")
    keys = set(data["response"])
    for c in cols:
        if set(data[c]) != keys:
            raise DataError(f"{p}: {c!r} and 'response' have different indices")
    try:
        order = sorted(keys, key=int)
    except ValueError:
        raise DataError(f"{p}: indices must be integers as strings ('0', '1', ...)") from None
    for c in cols:
        bad = next((k for k in order if not isinstance(data[c][k], (str, int, float))
                    or isinstance(data[c][k], bool)), None)
        if bad is not None:
            raise DataError(f"{p}: {c!r} at index {bad} is {json.dumps(data[c][bad])}, not text; every "
                            f"question, constitution and response must be a string")
    rows = [PublishedRow(k, str(data["question"][k]), str(data["constitution"][k]), str(data["response"][k]))
            for k in order]
    return PublishedResults(rows=rows, **meta)


def load_published_dir(folder: str | Path = PUBLISHED_DIR) -> list[PublishedResults]:
    """Every ``*.json`` results file in a folder, sorted by name."""
    d = Path(folder)
    if not d.is_dir():
        raise DataError(f"results folder {str(d)!r} does not exist")
    return [load_published(p) for p in sorted(d.glob("*.json"))]


# ---- CSV exports ------------------------------------------------------------------------
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value: Any) -> Any:
    """Neutralise CSV/formula injection: a text cell starting with = + - @ tab or CR gets a
    leading apostrophe, so spreadsheets show it as text. Other values pass unchanged."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def safe_output_path(folder: str | Path, name: str) -> Path:
    """``folder / name`` resolved, refusing names that leave the folder (``..``, absolute
    paths, symlinks pointing out). Raises ValueError."""
    if not name or "\x00" in name:
        raise ValueError("output file name is empty or contains a NUL byte")
    base = Path(folder).resolve()
    target = (base / name).resolve()
    if target == base or base not in target.parents:
        raise ValueError(f"output name {name!r} escapes the folder {str(base)!r}; use a plain file name")
    return target
