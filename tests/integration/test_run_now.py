"""services.stages.run_now (`sami judge --now`): a stage run in the foreground through the
worker's launcher (sami_core.launch): progress relayed, the stage's own exit code read
back from exit_status.json, and its whole process tree killed on an interrupt."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sami_core.contract import EXIT_BAD_INPUT, OUTPUTS_FILE
from sami_core.launch import is_alive
from services.stages import run_now

pytestmark = pytest.mark.integration


def test_a_stage_runs_to_the_end_with_its_progress_relayed(tmp_path: Path) -> None:
    seen: list[dict] = []
    run = run_now("sleep", {"seconds": 0.6, "checkpoints": 1}, tmp_path / "run", cwd=tmp_path,
                  on_progress=seen.append, poll_s=0.05)
    assert run.ok and run.exit_code == 0 and run.reason is None
    assert json.loads((tmp_path / "run" / OUTPUTS_FILE).read_text())["checkpoints"][0]["step"] == 1
    assert seen and seen[-1]["status"] == "succeeded"
    assert any(p["status"] == "running" for p in seen)  # progress arrived while it ran


def test_a_refused_input_comes_back_as_bad_input_with_the_stage_s_reason(tmp_path: Path) -> None:
    spec = {"model": {"path": "demo"}, "data": {"source": "file", "path": str(tmp_path / "missing.jsonl")},
            "constitution": {"path": "demo:opus/0"}}
    run = run_now("generate", spec, tmp_path / "gen", cwd=tmp_path)
    assert run.exit_code == EXIT_BAD_INPUT and not run.ok
    assert run.reason is not None and "missing.jsonl" in run.reason


def test_an_interrupt_kills_the_stage_s_whole_tree(tmp_path: Path) -> None:
    """The stage starts a grandchild that leaves its process group; an interrupt (Ctrl-C
    raises KeyboardInterrupt in the caller) must leave neither alive."""
    run_dir = tmp_path / "run"

    def interrupt(progress: dict) -> None:
        if (run_dir / "pids.log").exists() and len((run_dir / "pids.log").read_text().split()) >= 2:
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_now("sleep", {"seconds": 60, "grandchild": True}, run_dir, cwd=tmp_path, on_progress=interrupt,
                poll_s=0.1)
    pids = [int(p) for p in (run_dir / "pids.log").read_text().split()]
    assert len(pids) == 2
    assert not any(is_alive(p) for p in pids)
    assert time.monotonic() - started < 50  # killed, not waited for
