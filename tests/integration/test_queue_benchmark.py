"""The queue benchmark runs end to end (small) and prints its summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_queue_benchmark_small() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "queue.py"), "--jobs", "60", "--workers", "2",
         "--backend", "sqlite"],
        capture_output=True, text=True, timeout=180, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"jobs_per_s: \d+\.\d", lines[-1]), lines[-1]
    assert "[sqlite] 60/60 succeeded, never ran 0, double claims 0" in proc.stdout
