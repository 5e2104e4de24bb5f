"""The entry file: every page renders on an empty workspace; the sidebar counts workers and jobs."""

from __future__ import annotations

import pytest

from app.views import PAGES
from db import queue
from db.engine import transact


@pytest.mark.parametrize("page", [p.file.removesuffix(".py") for p in PAGES])
def test_every_page_renders_on_an_empty_workspace(open_page, page):
    at = open_page(page)
    assert at.title[0].value == next(p.title for p in PAGES if p.file == f"{page}.py")


def test_sidebar_counts_queued_jobs_and_says_no_worker_is_alive(open_page, workspace):
    transact(workspace.engine, lambda c: [queue.enqueue(c, "sleep", {"seconds": 1}) for _ in range(2)])
    at = open_page("overview")
    text = " ".join(m.value for m in at.sidebar.markdown)
    assert "0 running, 2 queued" in text
    assert any("No worker is alive" in c.value for c in at.sidebar.caption)


def test_the_demo_note_appears_once_an_experiment_trains_the_demo_model(open_page, workspace):
    note = "embedded demo model show the mechanics only"
    at = open_page("overview")
    assert not any(note in c.value for c in at.sidebar.caption)  # nothing on the demo model yet
    at.button(key="overview.submit_demo").click().run()
    at = open_page("overview")
    assert any(note in c.value for c in at.sidebar.caption)
