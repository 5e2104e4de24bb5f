"""The entry file: `streamlit run app` serves it; every page renders on an empty
workspace; the sidebar counts workers and jobs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from app.views import PAGES
from db import queue
from db.engine import transact
from db.testing import free_port

from tests.app.conftest import ROOT


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


def test_sidebar_counts_are_read_afresh_at_every_rerun(open_page, workspace):
    """A job queued by someone else (a CLI, another browser) between two refreshes is
    counted at the next one: the sidebar does not reuse a cached count."""
    at = open_page("queue")
    at.run()  # warm: this run takes well under the read cache's ttl (2 s)
    assert "0 running, 0 queued" in " ".join(m.value for m in at.sidebar.markdown)
    transact(workspace.engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 1}))
    at.run()
    assert "0 running, 1 queued" in " ".join(m.value for m in at.sidebar.markdown)


def test_the_demo_note_appears_once_an_experiment_trains_the_demo_model(open_page, workspace):
    note = "embedded demo model show the mechanics only"
    at = open_page("overview")
    assert not any(note in c.value for c in at.sidebar.caption)  # nothing on the demo model yet
    at.button(key="overview.submit_demo").click().run()
    at = open_page("overview")
    assert any(note in c.value for c in at.sidebar.caption)


def _one_session(port: int, timeout: float) -> list:
    """The ForwardMsgs of one browser session's first run, over Streamlit's websocket
    (what a browser tab receives), until the script finished."""
    from websockets.sync import client as ws_client  # a dependency of streamlit
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    msgs = []
    with ws_client.connect(f"ws://127.0.0.1:{port}/_stcore/stream", subprotocols=["streamlit"],
                           open_timeout=timeout) as ws:
        rerun = BackMsg()
        rerun.rerun_script.query_string = ""
        ws.send(rerun.SerializeToString())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = ForwardMsg()
            msg.ParseFromString(ws.recv(timeout=deadline - time.monotonic()))
            msgs.append(msg)
            if msg.WhichOneof("type") == "script_finished":
                return msgs
    raise AssertionError(f"the script did not finish within {timeout} s")


def test_streamlit_run_app_serves_the_workbench(tmp_path: Path):
    """`streamlit run app` (the folder, as users of a Streamlit app type it) runs
    app/streamlit_app.py: the server answers, and a session gets the workbench's pages."""
    timeout = 120  # a loaded machine starts Streamlit and imports pandas and plotly slowly
    port = free_port()
    env = {**os.environ, "SAMI_HOME": str(tmp_path / "ws")}
    env.pop("SAMI_DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app", "--server.port", str(port), "--server.address", "127.0.0.1",
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while True:
            assert proc.poll() is None, proc.stdout.read().decode(errors="replace")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    assert r.read() == b"ok"
                    break
            except OSError:
                assert time.monotonic() < deadline, "streamlit run app did not answer"
                time.sleep(0.5)
        msgs = _one_session(port, timeout)
        by_type = {}
        for m in msgs:
            by_type.setdefault(m.WhichOneof("type"), []).append(m)
        assert by_type["page_config_changed"][0].page_config_changed.title == "SAMI Workbench"
        pages = [p.page_name for p in by_type["navigation"][0].navigation.app_pages]
        assert pages == [p.title for p in PAGES]
        assert not [m for m in msgs if m.WhichOneof("type") == "delta" and m.delta.new_element.HasField("exception")]
        assert list((tmp_path / "ws").glob("*.db"))  # the sidebar opened the workspace's database
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
