"""Smoke test: benchmarks/judge.py --quick runs end to end and prints its summary line."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_judge_benchmark_quick():
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "judge.py"), "--quick"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 20
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_c32: \d+\.\d\d", lines[-1]), lines[-1]
    assert "measured on 8 pairs, scaled x8" in proc.stdout
    assert "cached re-run:   64 judgments" in proc.stdout and "0 requests sent" in proc.stdout
