"""Engines, transactions and the retry-on-busy helper.

One code path for SQLite and PostgreSQL:

* SQLite: WAL journal, ``synchronous=NORMAL``, foreign keys on, a busy timeout. The
  pysqlite driver is put in autocommit mode so that *we* emit ``BEGIN``: write
  transactions (:func:`write_transaction`) start with ``BEGIN IMMEDIATE`` and so take
  the write lock up front (a deferred transaction that upgrades to a writer can fail
  with SQLITE_BUSY without waiting); reads start with a plain ``BEGIN``.
* PostgreSQL: ``postgresql://`` URLs use psycopg 3; connections are pre-pinged.

:func:`transact` runs a function in a transaction and retries it when the database is
busy or locked, a connection dropped, or PostgreSQL reports a serialization failure or
deadlock; the function must therefore be safe to re-run (it is, since its transaction
was rolled back).
"""

from __future__ import annotations

import fcntl
import logging
import os
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from typing import TypeVar

from sqlalchemy import create_engine, event, exc
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_MS = 5000
# PostgreSQL SQLSTATEs worth a retry: serialization_failure, deadlock_detected,
# lock_not_available, and the connection-exception class (08xxx).
_RETRY_SQLSTATES = {"40001", "40P01", "55P03"}
_WRITE_OPTION = "sami_write"


def normalize_url(url: str) -> str:
    """Map ``postgres://`` and ``postgresql://`` to the psycopg 3 driver."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


class DatabaseUrlError(ValueError):
    """A database URL that is not one the workbench can use; the message says what works."""


_URL_FORMS = "sqlite:////absolute/path/sami.db or postgresql://user@host/dbname"


def parse_database_url(url: str):  # noqa: ANN201 (sqlalchemy URL)
    """``url`` parsed (psycopg 3 for PostgreSQL); DatabaseUrlError unless it is SQLite or PostgreSQL."""
    try:
        parsed = make_url(normalize_url(url))
    except exc.ArgumentError:
        raise DatabaseUrlError(f"not a database URL; use {_URL_FORMS}") from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise DatabaseUrlError(f"{backend} is not supported; use {_URL_FORMS}")
    return parsed


def make_engine(url: str, *, busy_timeout_ms: int | None = None, echo: bool = False) -> Engine:
    """An engine for ``url`` with the settings above (no migrations: see :func:`open_database`).

    ``busy_timeout_ms`` defaults to ``$SAMI_SQLITE_BUSY_TIMEOUT_MS`` or 5000. Raises
    DatabaseUrlError for a URL that is neither SQLite nor PostgreSQL.
    """
    parsed = parse_database_url(url)
    url = normalize_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, echo=echo, pool_pre_ping=True)

    if busy_timeout_ms is None:
        busy_timeout_ms = int(os.environ.get("SAMI_SQLITE_BUSY_TIMEOUT_MS", DEFAULT_BUSY_TIMEOUT_MS))
    file_db = bool(parsed.database) and parsed.database != ":memory:"
    if file_db:
        os.makedirs(os.path.dirname(os.path.abspath(parsed.database)), exist_ok=True)
    engine = create_engine(
        url,
        echo=echo,
        connect_args={"timeout": busy_timeout_ms / 1000.0, "check_same_thread": False},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # noqa: ANN001 (DBAPI types)
        dbapi_conn.isolation_level = None  # autocommit at the driver: BEGIN is ours (below)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        # Switching to WAL needs a brief exclusive lock; a fresh file opened by many
        # processes at once can report "locked" here, so retry it.
        _retry_sqlite_pragma(cur, "PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # WAL: durable on app crash, no fsync per commit
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    if file_db:
        _WRITER_LOCKS[id(engine)] = _WriterLock(os.path.abspath(parsed.database) + ".lock")
        weakref.finalize(engine, _WRITER_LOCKS.pop, id(engine), None)
    return engine


def _retry_sqlite_pragma(cur, sql: str, deadline_s: float = 30.0) -> None:  # noqa: ANN001
    import sqlite3

    end = time.monotonic() + deadline_s
    while True:
        try:
            cur.execute(sql)
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) and "busy" not in str(err) or time.monotonic() > end:
                raise
            time.sleep(0.01 + random.random() * 0.05)


class _WriterLock:
    """Queues a SQLite database's writers in the kernel instead of SQLite's busy loop.

    SQLite's busy handler retries a locked database after sleeps that grow to 100 ms,
    so under contention (eight workers claiming) some waits last far longer than the
    transactions they wait for (benchmarks/queue.py: p99 claim latency about 2-3x
    lower with this lock). Holding an exclusive ``flock`` on ``<db>.lock`` around each
    write transaction makes the workbench's own writers sleep in the kernel and wake as
    soon as the lock is free. It is only a latency aid: correctness still comes from
    ``BEGIN IMMEDIATE``, and writers that do not take it (the sqlite3 shell, another
    program) are still handled by the busy timeout. The kernel drops the lock if its
    holder dies.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._thread_lock = threading.Lock()  # flock does not exclude threads sharing an fd
        self._owner: int | None = None
        self._fd: int | None = None
        self._pid = 0

    @contextmanager
    def held(self, deadline_s: float | None = None,
             on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the lock for the block. While another process holds it, ``on_wait(message)``
        is called once (after :data:`WRITE_LOCK_NOTICE_S`) saying what it waits for; past
        ``deadline_s`` seconds of waiting, :class:`WriteLockTimeout` is raised."""
        if self._owner == threading.get_ident():
            # A second write transaction opened inside the first would wait for itself.
            raise RuntimeError("nested write transactions on one SQLite database in one thread")
        with self._thread_lock:
            self._owner = threading.get_ident()
            try:
                fd = self._open()
                if fd is None:
                    yield
                    return
                self._acquire(fd, deadline_s, on_wait)
                try:
                    yield
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                self._owner = None

    def _acquire(self, fd: int, deadline_s: float | None, on_wait: Callable[[str], None] | None) -> None:
        # Non-blocking tries rather than one blocking flock, so that a wait can end at its
        # deadline and be reported: every 0.5-2 ms for the first second (the usual wait
        # under contention, where waking late would cost latency), then up to every 50 ms.
        start = time.monotonic()
        pause, told = 0.0005, False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            if not told and waited >= WRITE_LOCK_NOTICE_S:
                told = True
                limit = f"; giving up after {deadline_s:.0f} s" if deadline_s is not None else ""
                message = (f"waiting for the database's write lock, held by another process "
                           f"(lock file {self.path}){limit}")
                (on_wait or log.warning)(message)
            if deadline_s is not None and waited >= deadline_s:
                raise WriteLockTimeout(
                    f"the database's write lock (lock file {self.path}) stayed held by another process for "
                    f"{waited:.0f} s; try again when it finishes (`fuser {self.path}` shows who holds it)")
            time.sleep(pause)
            pause = min(0.002 if waited < 1.0 else 0.05, pause * 1.5)

    def _open(self) -> int | None:
        if self._fd is None or self._pid != os.getpid():  # a forked child needs its own
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                self._pid = os.getpid()
            except OSError:
                return None
        return self._fd


_WRITER_LOCKS: dict[int, _WriterLock] = {}
WRITE_LOCK_NOTICE_S = 2.0  # how long a writer waits for the lock before it says so


class WriteLockTimeout(Exception):
    """A write transaction waited past its deadline for another process's write lock."""


@contextmanager
def write_transaction(engine: Engine, *, deadline_s: float | None = None,
                      on_wait: Callable[[str], None] | None = None) -> Iterator[Connection]:
    """A transaction meant to write: on SQLite it holds the write lock from its start
    (waiting at most ``deadline_s`` for it, see :meth:`_WriterLock.held`)."""
    lock = _WRITER_LOCKS.get(id(engine))
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with lock.held(deadline_s, on_wait) if lock is not None else nullcontext():
            with conn.begin():
                yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction (SQLite: a deferred BEGIN; does not block writers in WAL)."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn


def is_retryable(err: BaseException) -> bool:
    """Whether ``err`` is a transient database condition worth retrying."""
    if isinstance(err, exc.DBAPIError) and err.connection_invalidated:
        return True
    if isinstance(err, exc.OperationalError):
        if type(err.orig).__module__.startswith("sqlite3"):
            # "database is locked" / "database table is locked" / SQLITE_BUSY; not
            # "no such table" and the like, which are OperationalErrors too.
            message = str(err.orig).lower()
            return "locked" in message or "busy" in message
        return True  # PostgreSQL: connection failures, server restarts
    if isinstance(err, exc.DBAPIError):
        sqlstate = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
        return bool(sqlstate) and (sqlstate in _RETRY_SQLSTATES or sqlstate.startswith("08"))
    return False


def transact(
    engine: Engine,
    fn: Callable[[Connection], T],
    *,
    write: bool = True,
    deadline_s: float | None = 60.0,
    on_retry: Callable[[BaseException, int], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> T:
    """Run ``fn(conn)`` in one transaction, committed on return; retry while retryable.

    Retries use exponential backoff with jitter (5 ms doubling to 1 s) until
    ``deadline_s`` (None = forever), then the last error is raised. ``on_retry(err, n)``
    is called before each retry (e.g. to log). A write that waits for another process's
    SQLite write lock calls ``on_wait(message)`` once and raises :class:`WriteLockTimeout`
    at the same deadline.
    """
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            left = None if deadline_s is None else max(0.0, deadline_s - (time.monotonic() - start))
            ctx = (write_transaction(engine, deadline_s=left, on_wait=on_wait) if write
                   else read_transaction(engine))
            with ctx as conn:
                return fn(conn)
        except exc.DBAPIError as err:
            if not is_retryable(err):
                raise
            attempt += 1
            if deadline_s is not None and time.monotonic() - start > deadline_s:
                raise
            if on_retry is not None:
                on_retry(err, attempt)
            else:
                log.debug("database busy (%s); retry %d", err.__class__.__name__, attempt)
            time.sleep(min(1.0, 0.005 * 2 ** min(attempt, 8)) * (0.5 + random.random()))


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """ORM sessions for the app's reads and edits (queue operations use db.queue)."""
    return sessionmaker(engine, expire_on_commit=False)


def open_database(url: str | None = None, *, migrate: bool = True) -> Engine:
    """An engine for ``url`` (default: the workspace's, see db.workspace) with the
    schema brought up to date: migrations run on first use and after an upgrade."""
    if url is None:
        from db.workspace import database_url

        url = database_url()
    engine = make_engine(url)
    if migrate:
        from db.migrations import ensure_schema

        ensure_schema(engine)
    return engine
