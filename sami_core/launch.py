"""Running a stage as a child process group, and killing its whole process tree.

The one launcher of stages: the worker daemon runs every job through it, and
`sami judge --now` (services.stages.run_now) runs its stage through it too. Standard
library only (no torch), so every layer may import it.

A stage starts in a new session (so in its own process group, pgid = its pid) with
its stdout and stderr appended to ``RUN_DIR/stage.log`` and an environment marker
``SAMI_JOB_KEY=<database>:<job id>:<attempt>`` that its descendants inherit (torchrun's ranks,
a stage's helpers). If the worker dies, even by SIGKILL, the kernel sends the stage
SIGTERM (``PR_SET_PDEATHSIG``), which torchrun forwards to its ranks.

:func:`kill_tree` finds a job's processes three ways, so that one that left the
process group (``setpgid``) or was reparented to init is still found: descendants by
parent pid, members of the stage's session, and processes carrying the job's marker.
It sends SIGTERM, waits a grace period, sends SIGKILL to what is left, and re-scans
until nothing alive remains (zombies count as gone: they hold no resources but a pid).
Everything here reads Linux's /proc and needs no third-party package.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

JOB_KEY_ENV = "SAMI_JOB_KEY"
_PR_SET_PDEATHSIG = 1
_PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds sami_core/, db/, workers/

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # not Linux/glibc: no parent-death signal
    _libc = None


def job_key(database_url: str, job_id: int, attempt: int | None = None) -> str:
    """The marker of one attempt of one job of one database (two databases both have a
    job 1; two attempts of a job must be told apart). Without ``attempt``: the prefix
    shared by all attempts of the job."""
    base = f"{hashlib.sha1(database_url.encode()).hexdigest()[:12]}:{job_id}:"
    return base if attempt is None else f"{base}{attempt}"


def child_env(
    job_key_value: str, devices: Sequence[str] | None, base: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The stage's environment: the caller's (API keys stay in the environment only),
    plus the claimed GPUs (None: the caller's own, untouched), the job marker, unbuffered
    output and an import path that finds this project even when it is not pip-installed."""
    env = dict(os.environ if base is None else base)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)  # "" = no GPU for a CPU job
    env[JOB_KEY_ENV] = job_key_value
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _die_with_parent(parent_pid: int) -> None:
    """Runs in the child between fork and exec (the worker is single-threaded)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent_pid:  # the worker died before prctl took effect
        os._exit(1)


def start(
    cmd: Sequence[str], *, env: Mapping[str, str], cwd: Path, log_file: int | object | None
) -> subprocess.Popen:
    """Start ``cmd`` as a new session / process group, output to ``log_file`` (None: the
    caller's own stdout and stderr, for a stage run in a terminal)."""
    parent = os.getpid()
    return subprocess.Popen(
        list(cmd),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=None if log_file is None else subprocess.STDOUT,
        cwd=str(cwd),
        env=dict(env),
        start_new_session=True,
        preexec_fn=lambda: _die_with_parent(parent),  # noqa: PLW0108
        close_fds=True,
    )


# --- /proc -------------------------------------------------------------------------------


def _stat(pid: int) -> tuple[str, int, int, int] | None:
    """(state, ppid, pgrp, session) of ``pid``, or None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode(errors="replace")
    except OSError:
        return None
    # "pid (comm) state ppid pgrp session ..."; comm may contain spaces and ')'.
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _has_marker(pid: int, marker: bytes, prefix: bool) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return any(e.startswith(marker) for e in env) if prefix else marker in env


def is_alive(pid: int) -> bool:
    """Exists and is not a zombie."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def tree_pids(root_pid: int | None = None, *, key: str | None = None) -> set[int]:
    """Live processes of a job: ``root_pid``, its descendants, its session's members
    (the stage leads its own session), and processes whose environment holds ``key``
    (a :func:`job_key`; one ending in ":" matches every attempt of the job)."""
    procs = {pid: st for pid in _all_pids() if (st := _stat(pid)) is not None}
    me = os.getpid()
    found: set[int] = set()
    if root_pid is not None:
        children: dict[int, list[int]] = {}
        for pid, (_, ppid, _, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        stack = [root_pid] if root_pid in procs else []
        while stack:
            pid = stack.pop()
            if pid not in found:
                found.add(pid)
                stack.extend(children.get(pid, ()))
        found |= {pid for pid, st in procs.items() if st[3] == root_pid}
    if key is not None:
        marker = f"{JOB_KEY_ENV}={key}".encode()
        prefix = key.endswith(":")
        found |= {pid for pid in procs if pid not in found and _has_marker(pid, marker, prefix)}
    found.discard(me)
    return {pid for pid in found if procs[pid][0] not in ("Z", "X")}


def _signal_all(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(
    proc: subprocess.Popen | int | None,
    *,
    key: str | None = None,
    grace_s: float = 3.0,
    timeout_s: float = 10.0,
) -> set[int]:
    """Terminate a job's processes (see :func:`tree_pids`): SIGTERM, then SIGKILL after
    ``grace_s``; keep scanning until none is alive or ``timeout_s`` passed. Returns the
    pids still alive (empty = confirmed gone). Reaps ``proc`` if it is a Popen."""
    popen = proc if isinstance(proc, subprocess.Popen) else None
    root = popen.pid if popen is not None else proc

    def alive() -> set[int]:
        if popen is not None:
            popen.poll()  # reap the direct child so it does not linger as a zombie
        return tree_pids(root, key=key)

    start_t = time.monotonic()
    pids = alive()
    _signal_all(pids, signal.SIGTERM)
    killed = False
    while pids:
        elapsed = time.monotonic() - start_t
        if elapsed > timeout_s:
            break
        if elapsed > grace_s or killed:
            _signal_all(pids, signal.SIGKILL)
            killed = True
        time.sleep(0.05)
        new = alive()
        if not killed:
            _signal_all(new - pids, signal.SIGTERM)  # children forked meanwhile
        pids = new
    if popen is not None:
        try:
            popen.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            pass
    return pids
