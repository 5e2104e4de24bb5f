"""`sami ui --with-worker` (what `make run` starts): the UI answers on 127.0.0.1, one
worker registers, and SIGTERM to the command stops both (the worker deregisters)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy import select

from db.engine import open_database
from db.models import Worker
from db.testing import free_port

ROOT = Path(__file__).resolve().parents[2]


def _until(check, timeout: float, what: str):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def _health(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def test_ui_with_worker_serves_and_stops_both_on_sigterm(tmp_path: Path):
    home = tmp_path / "ws"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SAMI_DATABASE_URL"} | {"SAMI_HOME": str(home)}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--with-worker", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    engine = None
    try:
        _until(lambda: _health(port), 60, "the UI's health endpoint")
        engine = open_database(f"sqlite:///{home / 'sami.db'}")

        def workers() -> list:
            with engine.connect() as c:
                return c.execute(select(Worker.pid, Worker.status)).all()

        ((pid, status),) = _until(workers, 30, "the worker to register")
        assert status == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert not _health(port)
        _until(lambda: workers()[0].status == "stopped", 10, "the worker to deregister")
        _until(lambda: not Path(f"/proc/{pid}").exists(), 10, "the worker process to exit")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out = proc.stdout.read() if proc.stdout else ""
        if engine is not None:
            engine.dispose()
    assert f"http://127.0.0.1:{port}" in out
