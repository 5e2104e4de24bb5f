"""Field paths into a data set's (nested) fields, checked against its schema, without the
ML stack: the generate stage checks them on the `datasets` features it loads
(sami_core.data), ``sami submit`` on a local file's schema (:func:`file_fields`), each with
the same messages naming the spec field and listing the fields at the level a path breaks.

A schema here is a mapping of field name to a nested mapping (a struct), a list (a list
column), or a leaf with a ``dtype`` (datasets' ``Value``, or :class:`Leaf`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sami_core.errors import DataError
from sami_core.spec import DataSpec, template_fields


@dataclass(frozen=True)
class Leaf:
    dtype: str


def _kind(feature: Any) -> str:
    dtype = getattr(feature, "dtype", None)
    if isinstance(feature, (list, tuple)) or type(feature).__name__ in ("Sequence", "LargeList", "List"):
        return "a list"
    return f"{dtype} values" if isinstance(dtype, str) else type(feature).__name__


def resolve(fields: Any, path: str, what: str) -> list[str]:
    """The keys of ``path`` (a column name, or a dotted path into struct columns); DataError
    naming ``what`` and listing the fields at the level where the path breaks."""
    keys = [path] if path in fields else path.split(".")  # a column whose name has dots is taken whole
    cur, done = fields, []
    for key in keys:
        if not isinstance(cur, dict):
            raise DataError(f"{what}: no field {path!r}; {'.'.join(done)!r} holds {_kind(cur)}, not named fields")
        if key not in cur:
            names = ", ".join(cur)
            if not done:
                raise DataError(f"{what}: the data has no field {path!r}; its fields are: {names}")
            raise DataError(f"{what}: no field {path!r}; fields under {'.'.join(done)!r}: {names}")
        cur = cur[key]
        done.append(key)
    if isinstance(cur, dict):
        raise DataError(f"{what}: {path!r} is a struct, not a value; name one of its fields: "
                        + ", ".join(f"{path}.{k}" for k in cur))
    return keys


def placeholder_keys(fields: Any, name: str, field_keys: list[str]) -> list[str]:
    """A template placeholder: a path from the row, else a sibling of the query field."""
    try:
        return resolve(fields, name, "data.template")
    except DataError as err:
        if len(field_keys) < 2:
            raise DataError(f"data.template: placeholder {{{name}}}: {str(err).split(': ', 1)[1]}") from None
        parent = ".".join(field_keys[:-1])
        try:
            return resolve(fields, f"{parent}.{name}", "data.template")
        except DataError as err2:
            raise DataError(f"data.template: placeholder {{{name}}} names no field ({str(err).split(': ', 1)[1]}; "
                            f"{str(err2).split(': ', 1)[1]})") from None


def resolve_spec(fields: Any, spec: DataSpec) -> tuple[list[str], list[str] | None, dict[str, list[str]]]:
    """(query field keys, id keys or None, {placeholder: keys}) of a data spec on a schema."""
    field_keys = resolve(fields, spec.field, "data.field")
    id_field = spec.id_field or ("id" if spec.source == "demo" else None)
    id_keys = resolve(fields, id_field, "data.id_field") if id_field else None
    placeholders: dict[str, list[str]] = {}
    for name in template_fields(spec.template) if spec.template else []:
        if name != "query" and name not in placeholders:
            placeholders[name] = placeholder_keys(fields, name, field_keys)
    return field_keys, id_keys, placeholders


# ---- a local file's schema ----------------------------------------------------------------
def _merge(tree: dict, row: dict) -> None:
    for k, v in row.items():
        if isinstance(v, dict):
            sub = tree.get(k)
            if not isinstance(sub, dict):
                sub = tree[k] = {}
            _merge(sub, v)
        elif k not in tree or isinstance(tree[k], Leaf) and tree[k].dtype == "null":
            tree[k] = ["list"] if isinstance(v, list) else Leaf("null" if v is None else type(v).__name__)


def file_fields(path: Path, max_rows: int = 100, max_mb: float = 50) -> dict | None:
    """The schema of a local Parquet file (its footer), or of a JSON/JSONL/CSV file's first
    rows; None when it cannot be read cheaply here (too big, unreadable: the stage says why)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            def tree(t) -> Any:
                if hasattr(t, "num_fields") and str(t).startswith("struct"):
                    return {t.field(i).name: tree(t.field(i).type) for i in range(t.num_fields)}
                return ["list"] if str(t).startswith(("list", "large_list")) else Leaf(str(t))

            schema = pq.read_schema(path)
            return {f.name: tree(f.type) for f in schema}
        if path.stat().st_size > max_mb * 1024 * 1024:
            return None
        from sami_core.data_files import read_records

        rows = read_records(path.name, path.read_bytes())
    except (ImportError, OSError, ValueError, DataError):
        return None
    out: dict = {}
    for r in rows[:max_rows]:
        if isinstance(r, dict):
            _merge(out, r)
    return out


def check_file_spec(spec: DataSpec, splits: list[str]) -> tuple[str, str] | None:
    """(spec field, reason) when a local data file of ``spec`` lacks a field the spec names."""
    for split in splits:
        p = Path(spec.path.replace("{split}", split)).expanduser()
        fields = file_fields(p) if p.is_file() else None
        if fields is None:
            continue
        try:
            resolve_spec(fields, spec)
        except DataError as err:
            where, why = str(err).split(": ", 1)
            return where, f"{p.name}: {why}"
    return None
