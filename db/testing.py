"""Throwaway databases for tests and benchmarks.

:class:`PostgresServer` starts a private PostgreSQL server: ``initdb`` into a temporary
directory, then ``pg_ctl start`` listening on a free loopback port (trust auth, no
Unix socket in a shared place). PostgreSQL refuses to run as root, so when this
process is root the server runs as the ``postgres`` user (through ``runuser`` or
``su``). Nothing here is used by the workbench itself.
"""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

PG_USER = "sami"


def _pg_bindir() -> Path | None:
    """The directory holding initdb and pg_ctl, if PostgreSQL is installed."""
    for name in ("initdb", "pg_ctl"):
        found = shutil.which(name)
        if found:
            return Path(os.path.realpath(found)).parent
    # Debian keeps them out of PATH: /usr/lib/postgresql/<major>/bin.
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(candidates[-1]).parent if candidates else None


def postgres_unavailable_reason() -> str | None:
    """None when a private server can be started here, else why not (a skip reason)."""
    if _pg_bindir() is None:
        return "PostgreSQL is not installed (initdb/pg_ctl not found; on Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "the psycopg driver is not installed (pip install 'psycopg[binary]', the `postgres` extra)"
    if os.geteuid() == 0:
        import pwd

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no `postgres` user to run the server as"
        if not (shutil.which("runuser") or shutil.which("su")):
            return "running as root and neither runuser nor su is available to drop privileges"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (tests start servers on it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A private PostgreSQL server; :meth:`create_database` gives each test its own database."""

    def __init__(self, *, fast: bool = True) -> None:
        """``fast`` turns off fsync (fine for throwaway data; benchmarks pass False)."""
        reason = postgres_unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.bindir = _pg_bindir()
        self.fast = fast
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="sami-pg-"))
        self.datadir = self.root / "data"
        self.logfile = self.root / "server.log"
        self._started = False
        self._template: str | None = None

    def _command(self, args: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return args
        if shutil.which("runuser"):
            return ["runuser", "-u", "postgres", "--", *args]
        import shlex

        return ["su", "postgres", "-s", "/bin/sh", "-c", shlex.join(args)]

    def start(self) -> PostgresServer:
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        subprocess.run(
            self._command([str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", PG_USER,
                           "-A", "trust", "-E", "UTF8", "--no-sync", "--locale=C"]),
            check=True, capture_output=True, text=True,
        )
        opts = [
            f"-p {self.port}", "-c listen_addresses=127.0.0.1", f"-k {self.root}",
            "-c max_connections=200",
        ]
        if self.fast:
            opts += ["-c fsync=off", "-c synchronous_commit=off", "-c full_page_writes=off"]
        proc = subprocess.run(
            self._command([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                           "-o", " ".join(opts), "-w", "-t", "60", "start"]),
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise RuntimeError(f"pg_ctl start failed: {proc.stdout}{proc.stderr}\n{log}")
        self._started = True
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "t", *, template: str | None = None) -> str:
        """A new database (empty, or a copy of database ``template``); returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user={PG_USER} dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        return self.url(name)

    def migrated_template(self) -> str:
        """The name of a database migrated to the current schema, made once: copying
        it is several times faster than migrating each test's database."""
        if self._template is None:
            from db.engine import open_database
            from sqlalchemy.engine import make_url

            engine = open_database(self.create_database("template"))
            name = make_url(str(engine.url)).database
            engine.dispose()  # a template must have no open connections
            self._template = name
        return self._template

    def stop(self) -> None:
        if self._started:
            subprocess.run(
                self._command([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate",
                               "-w", "stop"]),
                capture_output=True,
            )
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)


_shared: PostgresServer | None = None


def shared_postgres() -> PostgresServer:
    """One server per process, started on first call and stopped at exit."""
    global _shared
    if _shared is None:
        server = PostgresServer().start()
        atexit.register(server.stop)
        _shared = server
    return _shared


BACKENDS = ("sqlite", "postgresql")


def new_database_url(backend: str, directory: Path, *, migrated: bool = False) -> str:
    """A fresh database of ``backend`` ("sqlite": a file in ``directory``;
    "postgresql": a new database on the :func:`shared_postgres` server), empty or
    already ``migrated`` (PostgreSQL: copied from a migrated template)."""
    if backend == "sqlite":
        url = f"sqlite:///{directory / 'sami.db'}"
        if migrated:
            from db.engine import open_database

            open_database(url).dispose()
        return url
    if backend == "postgresql":
        server = shared_postgres()
        return server.create_database(template=server.migrated_template() if migrated else None)
    raise ValueError(f"unknown backend {backend!r}")


def truncate_all(engine) -> None:  # noqa: ANN001 (sqlalchemy Engine)
    """Empty every workbench table and restart its ids (PostgreSQL; a test reusing
    one migrated database is much faster than creating a database per test)."""
    from db.models import Base

    names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"TRUNCATE {names} RESTART IDENTITY CASCADE")
