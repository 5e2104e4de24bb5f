"""How a ``sami`` subcommand is declared, and what every command shares: its workspace
(``$SAMI_HOME``, default ``./.sami``), its database (``$SAMI_DATABASE_URL``, default the
workspace's SQLite file, migrated on first use) and one way to run a transaction."""

from __future__ import annotations

import argparse
import errno
import functools
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from db.engine import DatabaseUrlError, open_database, parse_database_url, transact
from db.workspace import DATABASE_URL_ENV, HOME_ENV, Workspace

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


INT_MAX = 2**31 - 1  # the database's integer columns (PostgreSQL integer)


def integer(lo: int = 0, hi: int = INT_MAX) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi] (ids, counts), else a one-line usage error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is out of range; use {lo}..{hi}")
        return value

    parse.__name__ = "integer"
    return parse


def number(lo: float = 0.0) -> Callable[[str], float]:
    """An argparse type: a finite number >= lo (seconds, temperatures, prices)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (lo <= value < float("inf")):
            raise argparse.ArgumentTypeError(f"{text} is out of range; use a finite number >= {lo:g}")
        return value

    parse.__name__ = "number"
    return parse


class CliError(Exception):
    """A usage or state error: printed as ``sami: error: ...`` with exit code 2."""

    exit_code = 2


class EnvironmentProblem(CliError):
    """The machine, not the request: a folder that cannot be written, a database that
    cannot be reached. Printed as ``sami: error: ...`` with exit code 1."""

    exit_code = 1


def workspace(*, create: bool = False) -> Workspace:
    """The workspace named by ``$SAMI_HOME``; refused (naming the variable) when that is a
    file. ``create``: make its folders, refused (exit 1) where they cannot be written."""
    ws = Workspace.from_env()
    if ws.home.exists() and not ws.home.is_dir():
        raise CliError(f"{HOME_ENV}={ws.home} is a file, not a folder; point {HOME_ENV} at a folder "
                       f"(it is created when missing)")
    if create:
        for folder in (ws.home, ws.runs_dir):
            check_writable_folder(folder, f"workspace {HOME_ENV}={ws.home}", f"point {HOME_ENV} at a writable folder")
    return ws


def check_writable_folder(folder: Path, what: str, fix: str) -> None:
    """Create ``folder`` if needed and check that a file can be written in it; else
    EnvironmentProblem naming ``what`` (e.g. ``SAMI_HOME=/x``), why, and ``fix``."""
    existed = folder.is_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except FileExistsError:
        raise EnvironmentProblem(f"{what}: {folder} is not a folder; {fix}") from None
    except OSError as err:
        why = err.strerror or str(err)
        if existed or err.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise EnvironmentProblem(f"{what}: {folder} is read-only here ({why}); {fix}") from None
        raise EnvironmentProblem(f"{what}: cannot create {folder} ({why}); {fix}") from None


@functools.lru_cache(maxsize=1)
def engine():  # noqa: ANN201 (sqlalchemy Engine)
    """The workspace's database, migrated; bad settings are refused naming the variable."""
    return open_database(checked_database_url())


def checked_database_url() -> str:
    """The workspace's database URL, refused (naming the variable) when it is no URL we
    support, or, for SQLite, when its folder cannot be written."""
    ws = workspace()
    url = ws.database_url
    try:
        parsed = parse_database_url(url)
    except DatabaseUrlError as err:
        raise CliError(f"{DATABASE_URL_ENV}: {err}") from None
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(parsed.database).expanduser().absolute().parent
        if os.environ.get(DATABASE_URL_ENV):
            check_writable_folder(folder, f"{DATABASE_URL_ENV} ({parsed.database})",
                                  f"point {DATABASE_URL_ENV} at a file in a writable folder")
        else:
            check_writable_folder(folder, f"workspace {HOME_ENV}={ws.home}", f"point {HOME_ENV} at a writable folder")
    return url


WRITE_DEADLINE_S = 60.0  # how long a command's transaction may wait for a busy database in all


def _say_waiting(message: str) -> None:
    print(f"sami: {message}", file=sys.stderr, flush=True)


def tx(fn: Callable[[Any], Any], *, write: bool = True) -> Any:
    """Run ``fn(connection)`` in one transaction of the workspace's database (retried
    while the database is busy; a write waiting for another process's lock says so on
    stderr and gives up after 60 s)."""
    return transact(engine(), fn, write=write, deadline_s=WRITE_DEADLINE_S, on_wait=_say_waiting)


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
