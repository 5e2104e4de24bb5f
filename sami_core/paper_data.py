"""The SAMI paper's published training data, imported as a finished generate output.

The paper released its generated data as one JSON object keyed by example index, each a
list of N entries ``{"prompt": <training prompt>, "response": <text>, "example_id": <int>}``
(one per constitution variant). :func:`read_paper_data` checks such a file (N per example,
the prompts: non-empty and distinct within an example, the responses: non-empty text) and
turns it into the generate stage's rows; :func:`write_generate_output` writes them as a
generate run directory (``data.jsonl``, ``outputs.json``, a finished ``progress.json``) that
a train spec's ``data.path`` can name. Imports no torch, transformers or datasets.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from sami_core.contract import DATA_FILE, OUTPUTS_FILE, PROGRESS_FILE, SPEC_FILE
from sami_core.errors import DataError
from sami_core.rundir import atomic_write_json, atomic_write_text

IMPORT_STAGE = "import"  # spec.json's stage: a generate run refuses to resume in this directory


def _common_suffix(texts: list[str]) -> str:
    """The text all prompts end with (the query and the answer cue), from a line start."""
    first = texts[0]
    n = 0
    while n < len(first) and all(len(t) > n and t[-1 - n] == first[-1 - n] for t in texts):
        n += 1
    suffix = first[len(first) - n:]
    cut = suffix.find("\n")
    return (suffix[cut + 1:] if cut >= 0 and n < len(first) else suffix).strip()


def read_paper_data(obj: Any, n: int, name: str = "the file") -> list[dict]:
    """Rows of the generate stage's data.jsonl from the paper's data (already parsed from
    JSON); DataError naming the example and the entry when it is not of that shape."""
    if n < 2:
        raise DataError(f"--n: SAMI needs N >= 2 constitutions per example, got {n}")
    if not isinstance(obj, dict) or not obj:
        raise DataError(f"{name}: expected a JSON object keyed by example index, each a list of N entries "
                        '{"prompt", "response", "example_id"}; got ' + type(obj).__name__)
    rows, sizes = [], {}
    for key, entries in obj.items():
        where = f"{name}: example {key!r}"
        if not isinstance(entries, list):
            raise DataError(f"{where}: expected a list of N entries, got {type(entries).__name__}")
        sizes.setdefault(len(entries), []).append(key)
        if len(entries) != n:
            continue
        prompts, responses = [], []
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or not {"prompt", "response"} <= set(e):
                have = ", ".join(e) if isinstance(e, dict) else type(e).__name__
                raise DataError(f"{where}, entry {i}: needs 'prompt' and 'response' (has: {have})")
            if not isinstance(e["prompt"], str) or not e["prompt"].strip():
                raise DataError(f"{where}, entry {i}: 'prompt' is not a non-empty text")
            if not isinstance(e["response"], str) or not e["response"].strip():
                raise DataError(f"{where}, entry {i}: 'response' is not a non-empty text")
            if "example_id" in e and str(e["example_id"]) != str(entries[0].get("example_id")):
                raise DataError(f"{where}, entry {i}: example_id {e['example_id']!r} differs from entry 0's "
                                f"{entries[0].get('example_id')!r}")
            prompts.append(e["prompt"])
            responses.append(e["response"])
        if len(set(prompts)) != n:
            raise DataError(f"{where}: its {n} prompts are not distinct (each should carry its own constitution)")
        qid = str(entries[0].get("example_id", key))
        rows.append({"query_id": qid, "query": _common_suffix(prompts), "prompts": prompts,
                     "constitutions": [None] * n, "flips": [None] * n, "responses": responses})
    if set(sizes) != {n}:
        found = "; ".join(f"{len(keys)} with {size} (e.g. {keys[0]!r})" for size, keys in sorted(sizes.items()))
        raise DataError(f"{name}: --n {n}, but examples have other numbers of entries: {found}. "
                        "Give the file's N, or a file with N entries per example")
    ids = [r["query_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise DataError(f"{name}: example ids repeat; each example needs its own example_id")
    return rows


def read_paper_file(path: str | Path, n: int) -> list[dict]:
    p = Path(path).expanduser()
    if p.is_dir():
        raise DataError(f"{path}: a folder; name the training data's JSON file")
    if not p.is_file():
        raise DataError(f"{path}: no such file")
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DataError(f"{p.name}: not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset {err.start}); "
                        "save it as UTF-8") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{p.name}: not a JSON file: {err}") from None
    return read_paper_data(obj, n, p.name)


def write_generate_output(rows: list[dict], run_dir: str | Path, source: str) -> dict:
    """Write ``rows`` as a finished generate run in ``run_dir`` (new or empty); its outputs."""
    rd = Path(run_dir)
    if rd.exists() and any(rd.iterdir()):
        raise DataError(f"{rd}: not empty; import into a new directory")
    rd.mkdir(parents=True, exist_ok=True)
    n = len(rows[0]["prompts"])
    atomic_write_text(rd / DATA_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    outputs = {"data": DATA_FILE, "n_queries": len(rows), "n_kept": len(rows), "n_dropped": 0,
               "n_constitutions": n, "imported_from": str(source)}
    atomic_write_json(rd / SPEC_FILE, {"stage": IMPORT_STAGE, "fingerprint": None,
                                       "spec": {"source": str(source), "n": n}})
    atomic_write_json(rd / OUTPUTS_FILE, outputs)
    atomic_write_json(rd / PROGRESS_FILE, {"stage": "generate", "status": "succeeded", "done": len(rows),
                                           "total": len(rows), "unit": "queries", "message": "imported",
                                           "eta_s": None, "updated_at": time.time()})
    return outputs
