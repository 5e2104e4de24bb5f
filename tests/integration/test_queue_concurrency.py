"""Concurrency outside the worker loop: first use by many processes, process-tree kills."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from pathlib import Path

from sqlalchemy import inspect

from db.engine import make_engine
from db.migrations import HEAD, current_revision
from db.testing import new_database_url
from sami_core import launch
from sami_core.launch import is_alive
from tests.integration.conftest import SLACK_S

ROOT = Path(__file__).resolve().parents[2]


def test_many_processes_migrating_a_new_database_at_once(backend: str, tmp_path: Path) -> None:
    url = new_database_url(backend, tmp_path)  # empty: no schema yet
    code = "import sys; from db.engine import open_database; open_database(sys.argv[1]).dispose()"
    procs = [subprocess.Popen([sys.executable, "-c", code, url], cwd=ROOT, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
    assert [rc for rc, _ in results] == [0] * 4, [err for _, err in results]
    engine = make_engine(url)
    assert current_revision(engine) == HEAD
    assert "jobs" in inspect(engine).get_table_names()
    engine.dispose()


STUBBORN_TREE = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
child = subprocess.Popen([sys.executable, "-c",
    "import os, signal, time; os.setpgid(0, 0); signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ready', flush=True); time.sleep(600)"], stdout=subprocess.PIPE)
child.stdout.readline()  # the grandchild has left the process group
print(os.getpid(), child.pid, flush=True)
time.sleep(600)
"""


def test_kill_tree_finds_and_kills_a_stubborn_tree(tmp_path: Path) -> None:
    log = open(tmp_path / "out.log", "wb")
    key = launch.job_key(f"test-{uuid.uuid4()}", 1, 1)
    proc = launch.start([sys.executable, "-c", STUBBORN_TREE], env=launch.child_env(key, []), cwd=tmp_path,
                        log_file=log)
    deadline = time.monotonic() + SLACK_S  # two interpreters start
    while not (tmp_path / "out.log").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.05)
    pids = [int(x) for x in (tmp_path / "out.log").read_text().split()]
    assert len(pids) == 2 and all(is_alive(p) for p in pids)
    assert os_getpgid(pids[1]) != proc.pid  # the grandchild left the stage's process group
    assert launch.tree_pids(proc.pid) == set(pids)
    assert launch.tree_pids(None, key=key) == set(pids)
    assert launch.tree_pids(None, key=key[:-1]) == set(pids)  # "...:1:" = every attempt of job 1
    assert launch.tree_pids(None, key=key + "0") == set()  # attempt 10 is another attempt

    grace = 0.5
    t0 = time.monotonic()
    survivors = launch.kill_tree(proc, key=key, grace_s=grace)
    assert survivors == set()
    assert time.monotonic() - t0 < grace + SLACK_S  # SIGTERM (ignored), the grace, SIGKILL; not 10 minutes
    assert not any(is_alive(p) for p in pids)
    assert proc.returncode is not None  # reaped


def os_getpgid(pid: int) -> int:
    import os

    return os.getpgid(pid)


def test_kill_tree_by_marker_finds_orphans() -> None:
    """A job's processes whose parent died (reparented to init) are still found by the marker."""
    key = launch.job_key(f"test-{uuid.uuid4()}", 2, 1)
    orphan_maker = ("import subprocess, sys; p = subprocess.Popen([sys.executable, '-c', "
                    "'import os, time; os.setsid(); time.sleep(600)'], stdout=subprocess.DEVNULL, "
                    "stderr=subprocess.DEVNULL); "
                    "print(p.pid, flush=True)")
    out = subprocess.run([sys.executable, "-c", orphan_maker], env=launch.child_env(key, []), capture_output=True,
                         text=True, check=True, timeout=60)
    orphan = int(out.stdout)
    assert is_alive(orphan)
    assert launch.kill_tree(None, key=key, grace_s=0.5) == set()
    assert not is_alive(orphan)
