"""Fixtures shared by unit tests that need a migrated database."""

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
