"""Running one stage now, in the foreground, through the worker's launcher
(sami_core.launch): `sami judge --now`.

The stage runs exactly as a worker runs it (sami_core.contract.build_command, its own
process group and session, the project on its import path, ``exit_status.json`` read
back when it fails), except that its output goes to this terminal and no lease is held.
Ctrl-C kills its whole process tree; the run directory keeps what it finished, so running
it again resumes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sami_core import contract, launch
from sami_core.rundir import atomic_write_json


@dataclass
class StageRun:
    """How a foreground stage ended: its exit code as a worker reads it (torchrun's 1
    unfolded from ``exit_status.json``) and the stage's own reason when it gave one."""

    exit_code: int
    reason: str | None
    run_dir: Path

    @property
    def ok(self) -> bool:
        return self.exit_code == contract.EXIT_OK


def read_progress(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / contract.PROGRESS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_now(kind: str, spec: Mapping[str, Any], run_dir: Path, *, cwd: Path,
            on_progress: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 0.5,
            env: Mapping[str, str] | None = None) -> StageRun:
    """Run stage ``kind`` on ``spec`` in ``run_dir`` (created; relative paths in the spec
    are relative to ``cwd``, the workspace) and wait for it. ``on_progress`` gets every
    new ``progress.json``. The caller's GPUs (CUDA_VISIBLE_DEVICES) are left as they are."""
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / contract.JOB_SPEC_FILE
    atomic_write_json(spec_path, dict(spec))
    (run_dir / contract.EXIT_STATUS_FILE).unlink(missing_ok=True)  # an earlier run's
    cmd = contract.build_command(kind, spec_path=spec_path, run_dir=run_dir, devices=[], python=sys.executable)
    key = f"now-{uuid.uuid4().hex[:12]}:{os.getpid()}:1"
    child_env = {**launch.child_env(key, None, env), **contract.stage_env(kind, [])}
    proc = launch.start(cmd, env=child_env, cwd=cwd, log_file=None)
    last = None
    try:
        while True:
            try:
                rc = proc.wait(timeout=poll_s)
            except subprocess.TimeoutExpired:
                rc = None
            progress = read_progress(run_dir)
            seen = None if progress is None else (progress.get("done"), progress.get("total"), progress.get("status"))
            if progress is not None and seen != last and on_progress is not None:
                on_progress(progress)
            last = seen
            if rc is not None:
                break
    except BaseException:  # Ctrl-C, SIGTERM turned into an exception: nothing of the stage survives
        launch.kill_tree(proc, key=key)
        raise
    launch.kill_tree(proc, key=key)  # a stray helper the stage left
    code, recorded = contract.stage_exit_code(rc, run_dir)
    return StageRun(code, str(recorded["reason"]) if recorded and recorded.get("reason") else None, run_dir)
