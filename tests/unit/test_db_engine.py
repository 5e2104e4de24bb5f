"""Engine settings, the retry-on-busy helper and the UTC timestamp type."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import exc, text

from db.engine import is_retryable, make_engine, normalize_url, open_database, transact
from db.models import UTCDateTime


def test_sqlite_pragmas(tmp_path) -> None:  # noqa: ANN001
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}", busy_timeout_ms=1234)
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 1234
        assert conn.execute(text("PRAGMA synchronous")).scalar() == 1  # NORMAL
    engine.dispose()


def test_postgres_urls_use_psycopg3() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_write_transaction_takes_the_lock_up_front(tmp_path) -> None:  # noqa: ANN001
    """BEGIN IMMEDIATE: a write transaction holds SQLite's write lock from its start,
    so another writer is refused even before the first one wrote anything."""
    path = tmp_path / "x.db"
    engine = open_database(f"sqlite:///{path}")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)

    def nothing_written_yet(conn) -> str:  # noqa: ANN001
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        return "ok"

    assert transact(engine, nothing_written_yet) == "ok"
    other.execute("BEGIN IMMEDIATE")  # free again after commit
    other.execute("ROLLBACK")
    engine.dispose()


def test_transact_retries_while_the_database_is_locked(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}", busy_timeout_ms=50)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(0.8, lambda: holder.execute("COMMIT"))
    retries: list[int] = []
    t0 = time.monotonic()
    released.start()
    transact(engine, lambda c: c.execute(text("INSERT INTO t VALUES (1)")), on_retry=lambda e, n: retries.append(n))
    released.join()
    assert time.monotonic() - t0 >= 0.7
    assert retries, "the insert should have met a locked database and retried"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM t")).scalar() == 1
    holder.close()
    engine.dispose()


def test_transact_gives_up_after_its_deadline(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "x.db"
    engine = make_engine(f"sqlite:///{path}", busy_timeout_ms=10)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE t (x INTEGER)"))
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    with pytest.raises(exc.OperationalError, match="locked"):
        transact(engine, lambda c: c.execute(text("INSERT INTO t VALUES (1)")), deadline_s=0.3)
    holder.execute("ROLLBACK")
    holder.close()
    engine.dispose()


def test_non_transient_errors_are_not_retried(tmp_path) -> None:  # noqa: ANN001
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    calls = []

    def missing_table(conn) -> None:  # noqa: ANN001
        calls.append(1)
        conn.execute(text("SELECT * FROM no_such_table"))  # an OperationalError, not a busy one

    def duplicate(conn) -> None:  # noqa: ANN001
        calls.append(1)
        conn.execute(text("CREATE TABLE IF NOT EXISTS u (x INTEGER PRIMARY KEY)"))
        conn.execute(text("INSERT INTO u VALUES (1)"))
        conn.execute(text("INSERT INTO u VALUES (1)"))

    with pytest.raises(exc.OperationalError, match="no such table"):
        transact(engine, missing_table)
    with pytest.raises(exc.IntegrityError):
        transact(engine, duplicate)
    assert calls == [1, 1]
    engine.dispose()


def test_is_retryable_classifies_errors() -> None:
    class Orig(Exception):
        def __init__(self, sqlstate: str) -> None:
            self.sqlstate = sqlstate

    assert is_retryable(exc.OperationalError("x", {}, Orig("08006")))
    assert is_retryable(exc.OperationalError("x", {}, sqlite3.OperationalError("database is locked")))
    assert not is_retryable(exc.OperationalError("x", {}, sqlite3.OperationalError("no such table: t")))
    assert is_retryable(exc.DBAPIError("x", {}, Orig("40001")))
    assert is_retryable(exc.DBAPIError("x", {}, Orig("40P01")))
    assert not is_retryable(exc.IntegrityError("x", {}, Orig("23505")))
    assert not is_retryable(ValueError("x"))


def test_utc_datetime_round_trip(tmp_path) -> None:  # noqa: ANN001
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    col = UTCDateTime()
    when = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=timezone(timedelta(hours=2)))
    stored = col.process_bind_param(when, engine.dialect)
    assert stored.tzinfo is None and stored.hour == 1  # UTC, naive, for SQLite text
    back = col.process_result_value(stored, engine.dialect)
    assert back == when and back.tzinfo == timezone.utc
    with pytest.raises(ValueError, match="naive"):
        col.process_bind_param(datetime(2026, 1, 1), engine.dialect)
    engine.dispose()
