"""Smoke test: benchmarks/judge.py --quick runs end to end and prints its summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_judge_benchmark_quick():
    # No wall-clock assertion: a smoke test checks that the script runs end to end (the
    # timeout catches a hang); how fast it runs is what the benchmark itself reports.
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "judge.py"), "--quick"],
                          capture_output=True, text=True, timeout=180, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_c32: \d+\.\d\d", lines[-1]), lines[-1]
    assert "measured on 8 pairs, scaled x8" in proc.stdout
    assert "cached re-run:   64 judgments" in proc.stdout and "0 requests sent" in proc.stdout
