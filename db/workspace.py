"""Where the workbench keeps its state: ``$SAMI_HOME`` (default ``./.sami``).

A workspace holds the SQLite database (``sami.db``, unless ``$SAMI_DATABASE_URL``
points every process at PostgreSQL) and the run directories (``runs/``). A job's
``run_dir`` that is relative is relative to the workspace, so workers on other hosts
that mount the same workspace elsewhere resolve it to the same files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_ENV = "SAMI_HOME"
DATABASE_URL_ENV = "SAMI_DATABASE_URL"
DEFAULT_HOME = ".sami"
DB_FILENAME = "sami.db"
RUNS_DIRNAME = "runs"


def sami_home() -> Path:
    """``$SAMI_HOME`` or ``./.sami``, absolute."""
    return Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()


def database_url(home: Path | None = None) -> str:
    """``$SAMI_DATABASE_URL`` or the workspace's SQLite file."""
    url = os.environ.get(DATABASE_URL_ENV)
    if url:
        return url
    return f"sqlite:///{(home or sami_home()) / DB_FILENAME}"


def default_run_dir(job_id: int, kind: str) -> str:
    """The run_dir given to a job enqueued without one (relative to the workspace)."""
    return f"{RUNS_DIRNAME}/job-{job_id:06d}-{kind}"


@dataclass(frozen=True)
class Workspace:
    home: Path

    @classmethod
    def from_env(cls) -> Workspace:
        return cls(sami_home())

    @property
    def database_url(self) -> str:
        return database_url(self.home)

    @property
    def runs_dir(self) -> Path:
        return self.home / RUNS_DIRNAME

    def resolve(self, path: str | os.PathLike) -> Path:
        """A run_dir (or any workspace path) as an absolute path."""
        p = Path(path).expanduser()
        return p if p.is_absolute() else self.home / p

    def inside(self, path: str | os.PathLike) -> str:
        """``path`` (relative to the workspace, or absolute) as stored for a job's run
        directory: relative to the workspace when inside it. ValueError when it lies
        outside (after ``..`` and symbolic links): a job writes only in its workspace."""
        home = self.home.resolve()
        target = self.resolve(path).resolve()
        if target == home or not target.is_relative_to(home):
            raise ValueError(f"{str(path)!r} is outside the workspace {home}: run directories live under it "
                             f"(give a path relative to it, e.g. runs/my-job)")
        return str(target.relative_to(home))

    def create(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.runs_dir.mkdir(exist_ok=True)


def redacted_url(url: str) -> str:
    """A database URL safe to print: the password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is printed as nothing at all
        return "<unparsable database URL>"
