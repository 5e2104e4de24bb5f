"""Alembic environment: runs on the connection db.migrations passes in (already in a
transaction that holds the migration lock), or on the workspace database."""

from __future__ import annotations

from alembic import context

from db.models import Base

config = context.config


def _run(connection) -> None:  # noqa: ANN001
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite ALTERs via table copies
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (--sql) migrations are not supported; run them on a database")

connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    from db.engine import make_engine
    from db.workspace import database_url

    with make_engine(database_url()).begin() as conn:
        _run(conn)
