"""Queries: from the shipped demo set, a Hugging Face dataset, or a local file.

Everything goes through `datasets`, offline: a hub dataset must already be in the local
cache. The train/eval split is deterministic: queries are ordered by a seeded hash of
their id, the first `eval_size` are held out, so the eval set does not change when the
training set is capped.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sami_core.errors import DataError
from sami_core.spec import DATA_DIR, DataSpec

DEMO_POSTS = DATA_DIR / "posts.jsonl"
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass(frozen=True)
class Query:
    id: str
    text: str


def _load_dataset(spec: DataSpec):
    import datasets

    datasets.disable_progress_bars()
    if spec.source == "demo":
        return datasets.load_dataset("json", data_files=str(DEMO_POSTS), split="train")
    if spec.source == "file":
        p = Path(spec.path)
        if not p.is_file():
            raise DataError(f"data.path: file {str(p)!r} does not exist")
        builder = _FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"data.path: {p.name} is not JSON, JSONL, CSV or Parquet (by its extension)")
        try:
            return datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as err:  # datasets raises many types for malformed files
            raise DataError(f"data.path: could not read {p} as {builder}: {err}") from None
    try:
        return datasets.load_dataset(spec.dataset, spec.config, split=spec.split)
    except Exception as err:
        raise DataError(
            f"data.dataset: could not load {spec.dataset!r} (config {spec.config!r}, split {spec.split!r}) "
            f"offline: {err}. Download it once where the hub is reachable (it is then read from the "
            "local cache), or export it to a local file and use source: file"
        ) from None


def load_queries(spec: DataSpec) -> list[Query]:
    ds = _load_dataset(spec)
    cols = list(ds.column_names)
    if spec.field not in cols:
        raise DataError(f"data.field: the data has no field {spec.field!r}; its fields are: {', '.join(cols)}")
    if spec.id_field is not None and spec.id_field not in cols:
        raise DataError(f"data.id_field: the data has no field {spec.id_field!r}; its fields are: {', '.join(cols)}")
    ids = ds[spec.id_field] if spec.id_field else (ds["id"] if spec.source == "demo" else range(len(ds)))
    out = []
    seen = set()
    for qid, text in zip(ids, ds[spec.field]):
        if text is None or not str(text).strip():
            continue
        qid = str(qid)
        if qid in seen:
            raise DataError(f"data.id_field: id {qid!r} appears twice; ids must be unique")
        seen.add(qid)
        out.append(Query(qid, str(text)))
    if not out:
        raise DataError(f"data: no non-empty {spec.field!r} values found")
    return out


def split_queries(queries: list[Query], spec: DataSpec) -> tuple[list[Query], list[Query]]:
    """(train, eval): deterministic for (seed, ids); eval is the first eval_size by hash."""

    def key(q: Query) -> str:
        return hashlib.sha256(f"{spec.seed}:{q.id}".encode()).hexdigest()

    ordered = sorted(queries, key=key)
    if spec.eval_size >= len(ordered):
        raise DataError(
            f"data.eval_size: {spec.eval_size} held-out queries leave none of {len(ordered)} for training"
        )
    eval_q = ordered[: spec.eval_size]
    train_q = ordered[spec.eval_size :]
    if spec.train_size is not None:
        train_q = train_q[: spec.train_size]
    return train_q, eval_q


def load_split(spec: DataSpec, split: str) -> list[Query]:
    train_q, eval_q = split_queries(load_queries(spec), spec)
    return train_q if split == "train" else eval_q
