"""What every page shares: the workspace, one database engine per process, and reads.

Pages never open engines themselves: :func:`engine` is a ``st.cache_resource`` (one
pool per server process, whatever the number of browser sessions), and reads go
through :func:`read` inside ``st.cache_data`` functions with a short ttl, so a page
that reruns on every widget change does not hit the database each time. Writes go
through :func:`write` (one transaction, retried while the database is busy) and then
clear the read caches, so the next render shows what was written.

Session-state keys are prefixed by the page that owns them (``queue.selected``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any, TypeVar

import streamlit as st
from sqlalchemy.engine import Connection, Engine

from app.formatting import parse_id
from db.engine import open_database, transact
from db.workspace import Workspace, redacted_url

T = TypeVar("T")

# How long a cached read may be reused (seconds); live views poll faster than this.
READ_TTL_S = 2.0
# Uploads (data files, constitutions) are refused above this size (also
# server.maxUploadSize in .streamlit/config.toml and `sami ui`).
MAX_UPLOAD_MB = 20


def workspace() -> Workspace:
    return Workspace.from_env()


@st.cache_resource(show_spinner=False)
def _engine(url: str) -> Engine:
    return open_database(url)


def engine() -> Engine:
    """The workspace database's engine (schema migrated on first use)."""
    return _engine(workspace().database_url)


_READERS: dict[str, Callable[..., Any]] = {}


@st.cache_data(ttl=READ_TTL_S, show_spinner=False, max_entries=512)
def _cached_read(name: str, url: str, args: tuple, kwargs: tuple) -> Any:
    fn = _READERS[name]
    return transact(_engine(url), lambda conn: fn(conn, *args, **dict(kwargs)), write=False)


def load(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(conn, *args, **kwargs)`` read through the cache (ttl :data:`READ_TTL_S`), keyed
    by the function, the database and the arguments (which must be hashable by
    ``st.cache_data``; results must pickle: lists of dicts, DataFrames)."""
    name = f"{fn.__module__}.{fn.__qualname__}"
    _READERS[name] = fn
    return _cached_read(name, workspace().database_url, args, tuple(sorted(kwargs.items())))


def read(fn: Callable[[Connection], T]) -> T:
    """``fn(conn)`` in a read transaction, not cached (prefer :func:`load` in pages)."""
    return transact(engine(), fn, write=False)


def write(fn: Callable[[Connection], T]) -> T:
    """``fn(conn)`` in a write transaction; read caches are cleared afterwards."""
    out = transact(engine(), fn, write=True)
    st.cache_data.clear()
    return out


def database_label() -> str:
    return redacted_url(workspace().database_url)


def app_dir() -> Path:
    return Path(__file__).resolve().parent


def param(name: str, default: Any = None) -> Any:
    """A query parameter of the page's URL (deep links such as ``?experiment=3``)."""
    return st.query_params.get(name, default)


def preselect(name: str, key: str, choices: Collection[Any]) -> None:
    """Before the selectbox ``key`` is first drawn, select the id the URL's ``?name=ID``
    gives when it is one of ``choices`` (a deep link; later picks are the user's)."""
    if key in st.session_state:
        return
    wanted = parse_id(param(name))
    if wanted is not None and wanted in choices:
        st.session_state[key] = wanted
