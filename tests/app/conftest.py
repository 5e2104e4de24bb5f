"""The app tier: pages driven by streamlit.testing.v1.AppTest on a temporary workspace.

``workspace`` points $SAMI_HOME at a fresh folder with a migrated SQLite database;
``open_page("queue", experiment="3")`` builds an AppTest of the real entry file
(navigation + sidebar) showing that page, with those query parameters, and runs it.
Seed data through the real write paths (db.ingest, db.experiments, db.queue,
services.results.import_results_file), never by hand-made rows that skip them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from streamlit.testing.v1 import AppTest

from app.testing import app_test

from db.engine import open_database
from db.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
ENTRY = ROOT / "app" / "streamlit_app.py"


@dataclass
class AppWorkspace:
    ws: Workspace
    engine: Engine

    @property
    def home(self) -> Path:
        return self.ws.home


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppWorkspace:
    home = tmp_path / "ws"
    monkeypatch.setenv("SAMI_HOME", str(home))
    monkeypatch.delenv("SAMI_DATABASE_URL", raising=False)
    ws = Workspace(home)
    ws.create()
    engine = open_database(ws.database_url)
    yield AppWorkspace(ws, engine)
    engine.dispose()


def render_page(page: str, *, timeout: float = 60, **query: str) -> AppTest:
    """An AppTest of the entry file showing ``page`` with these query parameters, run
    once against whatever workspace $SAMI_HOME / $SAMI_DATABASE_URL name; no exception."""
    at = app_test(timeout)
    for k, v in query.items():
        at.query_params[k] = v
    at.switch_page(f"views/{page}.py")
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.fixture
def open_page(workspace: AppWorkspace) -> Callable[..., AppTest]:
    return render_page
