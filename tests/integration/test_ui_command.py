"""`sami ui --with-worker` (what `make run` starts): the UI answers on 127.0.0.1 and on
no other address, one worker registers and runs a job, and SIGTERM to the command stops
both: the worker hands the running job back to the queue and deregisters."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from sqlalchemy import select

from db import queue
from db.engine import open_database, transact
from db.models import Worker
from db.testing import free_port
from tests.integration.conftest import SLACK_S
from workers.daemon import WorkerConfig
from sami_core.launch import is_alive, tree_pids

ROOT = Path(__file__).resolve().parents[2]
UI_WORKER = WorkerConfig()  # `sami ui --with-worker` starts `sami worker` with its defaults


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


def _listening_addresses(pid: int) -> list[tuple[ipaddress._BaseAddress, int]]:
    """(address, port) of every TCP socket that process `pid` listens on, from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A = LISTEN
                continue
            hex_ip, hex_port = local.split(":")
            raw = b"".join(bytes.fromhex(hex_ip[i:i + 8])[::-1] for i in range(0, len(hex_ip), 8))  # host order words
            found.append((ipaddress.ip_address(raw), int(hex_port, 16)))
    return found


def _other_local_ipv4() -> list[str]:
    """This machine's IPv4 addresses other than loopback (Linux: /proc/net/fib_trie)."""
    lines = Path("/proc/net/fib_trie").read_text().splitlines() if Path("/proc/net/fib_trie").exists() else []
    found = {lines[i - 1].split()[-1] for i, line in enumerate(lines) if "/32 host LOCAL" in line and i}
    return sorted(a for a in found if not ipaddress.ip_address(a).is_loopback)


def test_ui_with_worker_serves_on_loopback_and_hands_the_running_job_back_on_sigterm(tmp_path: Path):
    home = tmp_path / "ws"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "SAMI_DATABASE_URL"} | {"SAMI_HOME": str(home)}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the worker is a CPU worker whatever this machine has
    proc = subprocess.Popen([sys.executable, "-m", "cli", "ui", "--with-worker", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    engine = None
    try:
        _until(lambda: _health(port), 2 * SLACK_S, "the UI's health endpoint")
        engine = open_database(f"sqlite:///{home / 'sami.db'}")

        # The server listens on the loopback address only: no socket on 0.0.0.0 or ::.
        (ui,) = [p for p in tree_pids(proc.pid)
                 if b"streamlit" in Path(f"/proc/{p}/cmdline").read_bytes() and p != proc.pid]
        listening = [(a, p) for a, p in _listening_addresses(ui) if p == port]
        assert listening and all(a.is_loopback for a, _ in listening), listening
        for address in _other_local_ipv4():  # and from another address of this machine, nothing answers
            with socket.socket() as s:
                s.settimeout(5)
                assert s.connect_ex((address, port)) != 0, f"the UI answers on {address}:{port}"

        def workers() -> list:
            with engine.connect() as c:
                return c.execute(select(Worker.pid, Worker.status)).all()

        ((pid, status),) = _until(workers, SLACK_S, "the worker to register")
        assert status == "running"

        # A job the worker runs: a minute long, so it is still running when the UI stops.
        job = transact(engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 60}))
        running = _until(lambda: (j := transact(engine, lambda c: queue.get_job(c, job), write=False)).status
                         == "running" and j.pid is not None and j, UI_WORKER.poll_interval + SLACK_S,
                         "the worker to start the job")
        pids_log = home / running.run_dir / "pids.log"
        stage = _until(lambda: pids_log.exists() and [int(x) for x in pids_log.read_text().split()],
                       SLACK_S, "the stage's pids")
        assert running.attempts == 1 and all(is_alive(p) for p in stage)

        proc.send_signal(signal.SIGTERM)
        # The UI stops at once; the worker kills its job's tree (SIGTERM, SIGKILL after the grace).
        assert proc.wait(timeout=UI_WORKER.kill_grace_s + SLACK_S) == 0
        assert not _health(port)
        j = transact(engine, lambda c: queue.get_job(c, job), write=False)
        # Handed back, not lost: queued again, the interrupted attempt not counted.
        assert (j.status, j.attempts, j.worker_id) == ("queued", 0, None), j.error
        assert workers()[0].status == "stopped"
        assert not any(is_alive(p) for p in (pid, ui, *stage))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        out = proc.stdout.read() if proc.stdout else ""
        if engine is not None:
            engine.dispose()
    assert f"http://127.0.0.1:{port}" in out
