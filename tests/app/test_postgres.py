"""The app on PostgreSQL (`SAMI_DATABASE_URL`, how workers on several machines share one
queue): the real writes (demo submit, cancel) and every page's reads run on a private
PostgreSQL server started by the test, with the shipped results and judgments seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from app.views import PAGES
from db.engine import open_database
from db.models import Job
from db.testing import new_database_url, postgres_unavailable_reason
from db.workspace import Workspace
from tests.app.conftest import render_page
from tests.app.test_winrates import seed


@pytest.fixture
def pg_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    if reason := postgres_unavailable_reason():
        pytest.skip(reason)
    url = new_database_url("postgresql", tmp_path, migrated=True)
    home = tmp_path / "ws"
    monkeypatch.setenv("SAMI_HOME", str(home))
    monkeypatch.setenv("SAMI_DATABASE_URL", url)
    Workspace(home).create()
    engine = open_database(url)
    yield engine
    engine.dispose()


def test_every_page_on_postgresql(pg_engine):
    seed(pg_engine)  # 2,500 published responses, 240 judgments
    at = render_page("overview")
    at.button(key="overview.submit_demo").click().run()
    assert not at.exception and "submitted" in at.success[0].value
    with pg_engine.connect() as c:
        jobs = {r.name: r.id for r in c.execute(select(Job.name, Job.id))}
    assert {"sample-base", "generate-1", "train-1", "sample-1", "judge-1"} <= set(jobs)

    for p in PAGES:  # every page renders on this database
        render_page(p.file.removesuffix(".py"))

    wr = render_page("winrates")
    table = wr.dataframe[0].value
    assert len(table) == 6 and table["n"].min() > 0  # 3 iterations x 2 baselines, all judged

    q = render_page("queue", job=str(jobs["train-1"]))
    q.button(key="queue.cancel").click().run()
    with pg_engine.connect() as c:
        status = dict(c.execute(select(Job.name, Job.status)).all())
    assert status["train-1"] == "cancelled" and status["judge-1"] == "blocked"
