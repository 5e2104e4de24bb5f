"""How a ``sami`` subcommand is declared, and what every command shares: its workspace
(``$SAMI_HOME``, default ``./.sami``), its database (``$SAMI_DATABASE_URL``, default the
workspace's SQLite file, migrated on first use) and one way to run a transaction."""

from __future__ import annotations

import argparse
import functools
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from db.engine import open_database, transact
from db.workspace import Workspace

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Handler
    passthrough: bool = False  # every argument goes to `run` unparsed (sami worker)


COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def command(name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = _no_arguments, *,
            passthrough: bool = False) -> Callable[[Handler], Handler]:
    """Register ``fn(args) -> exit code`` as ``sami NAME``; ``configure(parser)`` adds its
    arguments. Example (see cli.experiments)::

        def _configure_submit(p): p.add_argument("spec", type=Path)

        @command("submit", "expand an experiment spec into jobs", _configure_submit)
        def cmd_submit(args): ...
    """

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, configure, fn, passthrough)
        return fn

    return register


class CliError(Exception):
    """A usage or state error: printed as ``sami: error: ...`` with exit code 2."""


def workspace() -> Workspace:
    return Workspace.from_env()


@functools.lru_cache(maxsize=1)
def engine():  # noqa: ANN201 (sqlalchemy Engine)
    return open_database(workspace().database_url)


def tx(fn: Callable[[Any], Any], *, write: bool = True) -> Any:
    """Run ``fn(connection)`` in one transaction of the workspace's database (retried
    while the database is busy)."""
    return transact(engine(), fn, write=write)


def age(ts: datetime | None) -> str:
    """How long ago, briefly: 42s, 7m, 3h."""
    if ts is None:
        return "-"
    s = (datetime.now(timezone.utc) - ts).total_seconds()
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


def row_dict(row: Any) -> dict[str, Any]:
    """A database row as plain JSON-able data (timestamps in ISO 8601)."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}


def print_table(rows: list[tuple[str, ...]], *, right: frozenset[int] = frozenset(), last_free: bool = False) -> None:
    """Columns padded to their widest cell (``right``: right-aligned columns); with
    ``last_free`` the last column is not padded (a free-text note)."""
    if not rows:
        return
    n = len(rows[0]) - (1 if last_free else 0)
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r[:n], widths, strict=True))]
        print("  ".join(cells + ([r[-1]] if last_free else [])).rstrip())
