"""Fixtures shared by unit tests: a migrated database, an empty workspace for the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from db.engine import open_database
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path):  # noqa: ANN201
    if request.param == "postgresql" and (reason := postgres_unavailable_reason()):
        pytest.skip(reason)
    e = open_database(new_database_url(request.param, tmp_path, migrated=True))
    yield e
    e.dispose()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """$SAMI_HOME: a workspace folder (not created) under tmp_path, the current directory."""
    h = tmp_path / "ws"
    monkeypatch.setenv("SAMI_HOME", str(h))
    monkeypatch.delenv("SAMI_DATABASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    return h
