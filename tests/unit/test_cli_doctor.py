"""`sami doctor`: one line per check, exit 0 when a worker could run here, else the
first problem named on stderr (1: the machine). Run in this process on a real SQLite
workspace; torch is probed in a child process, as the command does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.test_cli_bad_input import one_line, sami


def test_a_worker_ready_machine_passes_every_check(home: Path, capsys: pytest.CaptureFixture) -> None:  # noqa: F811
    assert sami(capsys, "init", "--no-demo-model")[0] == 0
    rc, out, err = sami(capsys, "doctor")
    assert (rc, err) == (0, ""), out
    lines = {ln.split()[1]: ln for ln in out.splitlines()}
    assert lines["workspace"].startswith("ok") and str(home) in lines["workspace"]
    assert lines["database"].startswith("ok") and "(current)" in lines["database"]
    assert lines["torch"].startswith("ok") and "torchrun present" in lines["torch"]
    assert lines["gpus"].startswith("info")


def test_slurm_commands_missing_fail_only_for_the_slurm_executor(
    home: Path, capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch  # noqa: F811
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    # Nothing on PATH but this interpreter's own folder (the torch probe needs none of it).
    monkeypatch.setenv("PATH", os.pathsep.join([str(empty), str(Path(os.sys.executable).parent)]))
    rc, out, err = sami(capsys, "doctor")
    assert rc == 0 and "info  slurm" in out, (out, err)
    rc, out, err = sami(capsys, "doctor", "--executor", "slurm")
    assert rc == 1 and "FAIL  slurm" in out
    assert "sbatch, squeue, scontrol, scancel, srun not found on PATH" in one_line(err)
