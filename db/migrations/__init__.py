"""Alembic migrations, run programmatically: the schema is created on first use and
brought up to date after an upgrade, keeping the data already there.

* :func:`ensure_schema` (called by db.engine.open_database) is cheap when the schema is
  current: one ``SELECT`` of Alembic's version table, no Alembic import.
* :func:`upgrade` serialises concurrent first uses (several workers starting at once):
  SQLite runs the migrations inside one ``BEGIN IMMEDIATE`` transaction (SQLite DDL is
  transactional), PostgreSQL under a transaction-scoped advisory lock. A process that
  waited for the lock finds the schema current and does nothing.

A new migration: add a file to ``versions/`` (``python -m db.migrations revision -m
"what" --autogenerate`` drafts one from the models), then set :data:`HEAD` to its
revision (a unit test checks that :data:`HEAD` is Alembic's head and that the models
match the migrated schema). Migrations that alter SQLite tables use batch mode
(``render_as_batch`` is on for SQLite).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError

# The newest revision in versions/ (checked by tests/unit/test_db_migrations.py).
HEAD = "0009"
_HERE = Path(__file__).parent
_PG_LOCK_KEY = 0x5A3105  # any constant shared by all processes of the workbench


def current_revision(conn_or_engine: Connection | Engine) -> str | None:
    """The revision the database is at, or None for a database never migrated."""
    if isinstance(conn_or_engine, Engine):
        with conn_or_engine.connect() as conn:
            return current_revision(conn)
    from db.engine import is_retryable

    conn = conn_or_engine
    try:
        rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    except DBAPIError as err:
        if is_retryable(err):  # busy, locked, unreachable: not an answer
            raise
        conn.rollback()  # no such table: never migrated
        return None
    return rows[0] if rows else None


def alembic_config(connection: Connection | None = None):  # noqa: ANN201 (alembic.config.Config)
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.set_main_option("path_separator", "os")
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """Alembic's head revision, read from the scripts in versions/."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    return {rev.revision for rev in ScriptDirectory.from_config(alembic_config()).walk_revisions()}


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply migrations up to ``revision``, holding the database-wide lock (see above)."""
    from alembic import command

    with engine.connect() as conn:
        conn.execution_options(sami_write=True)  # SQLite: BEGIN IMMEDIATE (db.engine)
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
            command.upgrade(alembic_config(conn), revision)


def ensure_schema(engine: Engine) -> None:
    """Migrate ``engine``'s database to :data:`HEAD` unless it is there already.

    Retries for a while (about 30 s) when the database is busy (another process
    migrating or writing) or unreachable, then raises."""
    import time

    from db.engine import is_retryable

    deadline = time.monotonic() + 30
    while True:
        try:
            current = current_revision(engine)
            if current == HEAD:
                return
            if current is not None and current not in _known_revisions():
                raise RuntimeError(
                    f"the database's schema is at revision {current}, newer than this code knows "
                    f"(up to {HEAD}): upgrade the workbench on this machine"
                )
            upgrade(engine)
            return
        except DBAPIError as err:
            if not is_retryable(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
