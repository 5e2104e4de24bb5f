"""Published results in the workspace: importing response files as response sources
(`sami import-results`, `make run`), and listing the sources.

A published results file (the paper's ``<checkpoint>-<policy model>-<constitution
source>-constitution-temperature-<t>.json``) becomes an ``import`` response source named
after the file, one response per index, and its constitution text an ``import:...``
constitution version. Importing again updates, never duplicates.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection

from db import experiments, ingest
from sami_core import constitutions
from sami_core.errors import DataError
from sami_core.results import PUBLISHED_DIR, PublishedResults, load_published
from services.errors import JudgingError

def results_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.json`` files named or held by the given files/folders, sorted, deduplicated."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise JudgingError(f"{p}: no *.json results files in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise JudgingError(f"{p}: no such file or folder")
    seen, unique = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            unique.append(p)
    return unique


def shipped_results() -> list[Path]:
    return sorted(PUBLISHED_DIR.glob("*.json"))


def load_results_files(paths: Iterable[Path]) -> list[tuple[Path, PublishedResults]]:
    """Read and check every file before anything is stored (JudgingError naming the first
    bad one), so that importing a folder is all or nothing."""
    out = []
    for path in paths:
        try:
            out.append((path, load_published(path)))
        except DataError as err:
            raise JudgingError(f"{err} (nothing was imported)") from None
    return out


def import_results_file(conn: Connection, path: Path, res: PublishedResults | None = None) -> dict[str, Any]:
    """One published results file -> an ``import`` response source named after the file
    (without .json) and one response per index (query_id = the index). Idempotent.
    ``res``: the file already read by :func:`load_results_files`."""
    if res is None:
        res = load_results_files([path])[0][1]
    source_id = ingest.upsert_import_source(
        conn, res.source, path=str(path.resolve()), model=f"{res.model}:{res.checkpoint}",
        temperatures=[res.temperature], constitution_source=res.constitution_source)
    versions: dict[str, int] = {}  # constitution text -> constitutions id
    for text in dict.fromkeys(r.constitution for r in res.rows):
        versions[text] = import_constitution(conn, text, res.constitution_source, path.name)
    ingest.upsert_responses(conn, source_id, [
        {"query_id": r.query_id, "query": r.question, "temperature": res.temperature, "text": r.response,
         "constitution_id": versions[r.constitution]}
        for r in res.rows])
    return {"source_id": source_id, "source": res.source, "checkpoint": res.checkpoint, "model": res.model,
            "constitution_source": res.constitution_source, "temperature": res.temperature,
            "n_responses": len(res.rows), "constitution_ids": sorted(set(versions.values()))}


def import_principles(text: str) -> list[dict[str, str | None]]:
    """A published file's constitution text ("1. ...\n2. ...") as stored principles; a text
    that is not numbered principles is kept whole as one principle."""
    try:
        parsed = constitutions.from_reference({"positive": text, "negative": text})
        principles = [{"principle": p.principle, "antithesis": None} for p in parsed.principles]
    except constitutions.ConstitutionError:
        principles = []
    return principles or [{"principle": text.strip(), "antithesis": None}]


def import_constitution(conn: Connection, text: str, constitution_source: str, file_name: str = "") -> int:
    """The constitutions version ``import:<constitution source>`` with ``text``'s principles
    (identical principles reuse a version); its id."""
    cid, _, _ = experiments.constitution_version(
        conn, f"import:{constitution_source}"[:200], import_principles(text),
        description=f"imported from published results ({file_name})" if file_name else "imported")
    return cid




def list_sources(conn: Connection) -> list[dict]:
    """Every response source with its kind, experiment, response count, model and the
    constitution it answered (db.ingest.source_constitution, as ``constitution_label``)."""
    return [{**r, "constitution_label": ingest.source_constitution(r)} for r in ingest.list_sources(conn)]
