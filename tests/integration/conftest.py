"""Fixtures for tests that start real `sami` processes against a real database.

``sami`` (a :class:`Sami`) is one workspace in a temporary folder with a fresh
database, SQLite or PostgreSQL (a private server started by db.testing; the
PostgreSQL variants are skipped, with the reason, where none can be started).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from db import queue
from db.engine import make_engine, transact
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason
from db.workspace import Workspace
from sami_core.launch import is_alive

ROOT = Path(__file__).resolve().parents[2]

# Short timings so that the fault tests run in seconds; tests derive their limits from them.
POLL_S = 0.1  # idle: between claims
TICK_S = 0.5  # running: between heartbeats (a cancel is seen at the next one)
LEASE_S = 3.0  # a job whose worker missed heartbeats this long is requeued
KILL_GRACE_S = 2.0  # SIGTERM -> SIGKILL
RETRY_BACKOFF_S = 1.0  # a transient failure's wait before the next attempt (doubling)
FAST_WORKER = ["--devices", "", "--poll-interval", str(POLL_S), "--tick-interval", str(TICK_S),
               "--lease-seconds", str(LEASE_S), "--kill-grace", str(KILL_GRACE_S), "--log-level", "DEBUG",
               "--retry-backoff", str(RETRY_BACKOFF_S)]
# What a loaded machine (2 cores shared with training ranks and other test runs) may add
# to the configured timings before something counts as late: interpreter start-ups
# (`sami cancel`, a new worker), scheduling, a busy database. Wide on purpose: a limit
# built from it still fails when the thing never happens (the jobs it waits on run for
# minutes, or forever).
SLACK_S = 30.0


class Sami:
    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.url = url
        self.ws = Workspace(home)
        self.env = {
            **os.environ, "SAMI_HOME": str(home), "SAMI_DATABASE_URL": url,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.engine = make_engine(url)
        self.workers: list[subprocess.Popen] = []

    # --- processes ---------------------------------------------------------------------

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "cli", *args], env=self.env, cwd=self.home,
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"sami {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def worker(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        log = open(self.home / f"worker-{len(self.workers)}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", *FAST_WORKER, *args],
                                env={**self.env, **(env or {})}, cwd=self.home, stdout=log, stderr=log)
        self.workers.append(proc)
        return proc

    def worker_logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()}" for p in sorted(self.home.glob("worker-*.log")))

    def wait_workers(self, timeout: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.workers:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"worker {p.pid} still running\n{self.worker_logs()}") from None
        return [p.returncode for p in self.workers]

    # --- database ----------------------------------------------------------------------

    def tx(self, fn: Callable[[Any], Any]) -> Any:
        return transact(self.engine, fn)

    def enqueue(self, kind: str = "sleep", spec: dict | None = None, **kw: Any) -> int:
        return self.tx(lambda c: queue.enqueue(c, kind, spec or {}, **kw))

    def job(self, job_id: int) -> Any:
        return self.tx(lambda c: queue.get_job(c, job_id))

    def run_dir(self, job_id: int) -> Path:
        return self.ws.resolve(self.job(job_id).run_dir)

    def pids(self, job_id: int) -> list[int]:
        path = self.run_dir(job_id) / "pids.log"
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    def wait_for(self, what: str, predicate: Callable[[], Any], timeout: float = 30, interval: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{self.worker_logs()}")

    # --- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        for p in self.workers:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.workers:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        # Stage processes a test left behind (each run dir lists its pids).
        for pids_file in self.home.glob("runs/*/pids.log"):
            for pid in map(int, pids_file.read_text().split()):
                if is_alive(pid):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
        self.engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql" and (reason := postgres_unavailable_reason()):
        pytest.skip(reason)
    return request.param


@pytest.fixture
def sami(backend: str, tmp_path: Path) -> Sami:
    home = tmp_path / "ws"
    home.mkdir()
    s = Sami(home, new_database_url(backend, home, migrated=True))
    yield s
    s.close()


@pytest.fixture
def sami_sqlite(tmp_path: Path) -> Sami:
    """The same on SQLite only (tests of the worker's own mechanics, not the queue's)."""
    home = tmp_path / "ws"
    home.mkdir()
    s = Sami(home, new_database_url("sqlite", home, migrated=True))
    yield s
    s.close()
