"""Queries: from the shipped demo set, a Hugging Face dataset, or a local file.

Everything goes through `datasets`, offline: a hub dataset must already be in the local
cache. Rows are read in order; the query text is ``data.field`` (a dotted path into
struct/dict columns, e.g. ``info.post``), optionally passed through ``data.extract`` (the
first human turn of a dialogue) and ``data.template`` (``"POST: {query}"``). Empty texts are
skipped; a row whose ``data.id_field`` repeats an earlier id is collapsed into it (the first
kept, the count reported). ``data.start``/``data.max_queries`` keep a window of distinct
queries in data order.

The train/eval split is deterministic. Without ``data.eval_split``, the window's queries
are ordered by a seeded hash of their id and the first ``eval_size`` are held out, so the
eval set does not change when the training set is capped (``train_size``). With it, the
training queries are the window (capped by ``train_size``) and the eval queries are the
first ``eval_size`` distinct queries of the other split.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from sami_core.errors import DataError
from sami_core.data_paths import resolve_spec
from sami_core.spec import DATA_DIR, DataSpec

DEMO_POSTS = DATA_DIR / "posts.jsonl"
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_BATCH_ROWS = 4096


@dataclass(frozen=True)
class Query:
    id: str
    text: str


class QueryList(list):
    """Queries, plus what reading them found: ``n_rows`` rows read, ``n_duplicates`` of them
    collapsed into an earlier row with the same id, ``n_empty`` skipped for an empty text."""

    n_rows: int = 0
    n_duplicates: int = 0
    n_empty: int = 0

    def counts(self) -> dict[str, int]:
        return {"n_rows": self.n_rows, "n_duplicates": self.n_duplicates, "n_empty": self.n_empty}


# ---- loading ------------------------------------------------------------------------------
def _file_for(spec: DataSpec, split: str) -> Path:
    p = Path(spec.path.replace("{split}", split)).expanduser()
    if not p.is_file():
        which = f" (split {split!r})" if "{split}" in spec.path else ""
        raise DataError(f"data.path: file {str(p)!r}{which} does not exist")
    return p


def _has_text(path: Path, chunk: int = 1 << 16) -> bool:
    """Whether a text file holds anything but whitespace (read in chunks: files may be large)."""
    with open(path, "rb") as f:
        while block := f.read(chunk):
            if block.strip():
                return True
    return False


def _load_dataset(spec: DataSpec, split: str | None = None):
    import datasets

    datasets.disable_progress_bars()
    split = split or spec.split
    if spec.source == "demo":
        return datasets.load_dataset("json", data_files=str(DEMO_POSTS), split="train")
    if spec.source == "file":
        p = _file_for(spec, split)
        builder = _FILE_BUILDERS.get(p.suffix.lower())
        if builder is None:
            raise DataError(f"data.path: {p.name} is not JSON, JSONL, CSV or Parquet (by its extension)")
        if p.stat().st_size == 0 or (builder != "parquet" and not _has_text(p)):
            raise DataError(f"data.path: {p} is empty; it needs one query per row")
        try:
            return datasets.load_dataset(builder, data_files=str(p), split="train")
        except Exception as err:  # datasets raises many types for malformed files
            reason = str(err).strip() or f"{type(err).__name__} (is it valid {builder.upper()}?)"
            raise DataError(f"data.path: could not read {p} as {builder}: {reason}") from None
    try:
        return datasets.load_dataset(spec.dataset, spec.config, split=split, data_dir=spec.data_dir)
    except Exception as err:
        raise DataError(
            f"data.dataset: could not load {spec.dataset!r} (config {spec.config!r}, split {split!r}"
            f"{f', data_dir {spec.data_dir!r}' if spec.data_dir else ''}) "
            f"offline: {err}. Download it once where the hub is reachable (it is then read from the "
            "local cache), or export it to a local file and use source: file"
        ) from None


def _values(batch: dict, keys: list[str]) -> list:
    """One batch's values at a path: a column, then keys into its nested dicts."""
    values = batch[keys[0]]
    for key in keys[1:]:
        values = [v.get(key) if isinstance(v, dict) else None for v in values]
    return values


# ---- extraction ---------------------------------------------------------------------------
_TURN = re.compile(r"(?:^|\n)\s*(Human|Assistant):")


def first_human_turn(dialogue: str) -> str | None:
    """The first `Human:` turn of a `\\n\\nHuman: …\\n\\nAssistant: …` dialogue; None if it has none."""
    turns = list(_TURN.finditer(dialogue))
    for i, m in enumerate(turns):
        if m.group(1) == "Human":
            end = turns[i + 1].start() if i + 1 < len(turns) else len(dialogue)
            return dialogue[m.end():end].strip()
    return None


EXTRACTORS = {"first_human_turn": first_human_turn}


# ---- queries ------------------------------------------------------------------------------
def load_queries(spec: DataSpec, split: str | None = None, *, start: int | None = None,
                 limit: int | None = -1) -> QueryList:
    """Distinct queries of ``split`` (default ``data.split``) in data order, from ``start``
    (default ``data.start``), at most ``limit`` (default ``data.max_queries``; None: all)."""
    split = split or spec.split
    start = spec.start if start is None else start
    limit = spec.max_queries if limit == -1 else limit
    ds = _load_dataset(spec, split)
    field_keys, id_keys, placeholders = resolve_spec(ds.features, spec)
    id_field = spec.id_field or ("id" if spec.source == "demo" else None)
    extract = EXTRACTORS[spec.extract] if spec.extract else None
    want = None if limit is None else start + limit
    prefix = f"{split}:" if spec.eval_split and split == spec.eval_split else ""
    tops = list(dict.fromkeys(k[0] for k in [field_keys, *([id_keys] if id_keys else []), *placeholders.values()]))

    out = QueryList()
    seen: set[str] = set()
    n_distinct = 0
    row = -1
    # In batches, so that a window of the first K distinct queries reads only the rows it needs.
    for batch in ds.select_columns(tops).iter(batch_size=_BATCH_ROWS):
        texts = _values(batch, field_keys)
        ids = _values(batch, id_keys) if id_keys else [f"{prefix}{row + 1 + i}" for i in range(len(texts))]
        extra = {name: _values(batch, keys) for name, keys in placeholders.items()}
        for i, (qid, text) in enumerate(zip(ids, texts)):
            row += 1
            if want is not None and n_distinct >= want:
                break
            out.n_rows += 1
            if text is not None and extract is not None:
                text = extract(str(text))
            if text is None or not str(text).strip():
                out.n_empty += 1
                continue
            if qid is None:
                raise DataError(f"data.id_field: row {row} has no {id_field!r}")
            qid = str(qid)
            if qid in seen:
                out.n_duplicates += 1
                continue
            seen.add(qid)
            n_distinct += 1
            if n_distinct <= start:
                continue
            text = str(text)
            if spec.template:
                values = {name: "" if v[i] is None else str(v[i]) for name, v in extra.items()}
                text = render_template(spec.template, {**values, "query": text})
            out.append(Query(qid, text))
        if want is not None and n_distinct >= want:
            break
    if not out:
        if n_distinct and n_distinct <= start:
            raise DataError(f"data.start: {start} skips all {n_distinct} distinct queries of split {split!r}")
        how = f" with a {spec.extract!r} (no 'Human:' turn found)" if spec.extract else ""
        raise DataError(f"data.field: no non-empty {spec.field!r} values{how} in split {split!r}")
    return out


def render_template(template: str, values: dict[str, str]) -> str:
    """``template`` with each placeholder replaced by ``values[name]`` (dotted names are keys,
    not attribute lookups as in str.format)."""
    import string

    parts = string.Formatter().parse(template)
    return "".join(lit + ("" if name is None else values[name]) for lit, name, _f, _c in parts)


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


def load_split(spec: DataSpec, split: str) -> QueryList:
    """The training (``split == "train"``) or eval queries of a data spec, with the counts of
    the rows read for them (:class:`QueryList`)."""
    if spec.eval_split is not None:
        if split == "train":
            qs = load_queries(spec)
            picked = qs[: spec.train_size] if spec.train_size is not None else list(qs)
        else:
            if spec.eval_size == 0:
                return QueryList()
            qs = load_queries(spec, spec.eval_split, start=0, limit=spec.eval_size)
            picked = list(qs)
    else:
        qs = load_queries(spec)
        train_q, eval_q = split_queries(qs, spec)
        picked = train_q if split == "train" else eval_q
    out = QueryList(picked)
    out.n_rows, out.n_duplicates, out.n_empty = qs.n_rows, qs.n_duplicates, qs.n_empty
    return out
