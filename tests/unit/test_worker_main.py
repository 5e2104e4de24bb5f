"""`python -m workers` (what `sami worker` becomes): options refused before the daemon
starts, each with a message naming the option, exit code 2; `sami worker --help` reaches
the daemon's own help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workers.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("argv", "says"), [
    (["--lease-seconds", "0"], "--lease-seconds and --tick-interval must be > 0"),
    (["--lease-seconds", "2", "--tick-interval", "1"], "at least 3 x --tick-interval"),
    (["--kinds", "train,nap"], "--kinds: unknown kind(s) nap"),
    (["submit", "spec.yaml"], "the command line is `sami submit ...`"),
])
def test_bad_options_are_refused_with_the_option_named(argv: list[str], says: str, capsys, tmp_path, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("SAMI_HOME", str(tmp_path / "ws"))
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "ws").exists()  # refused before the workspace was touched


def test_sami_worker_help_is_the_daemon_s_own(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "cli", "worker", "--help"], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "SAMI_HOME": str(tmp_path)}, timeout=60)
    assert out.returncode == 0
    assert out.stdout.startswith("usage: sami worker") and "--exit-when-idle" in out.stdout
