"""Smoke tests: the benchmark scripts run end to end and print their summary line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_logprob_benchmark_quick():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "logprob_matrix.py"), "--quick", "--device", "cpu"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_reference_n4: \d+\.\d\d", lines[-1]), lines[-1]
    assert "max |L - L_reference| over all runs:" in lines[-2] and lines[-2].endswith("OK")
    # one table row per (N, method)
    assert len([line for line in lines if re.match(r"\s*[24]\s+\([abc]\)", line)]) == 6


def test_generation_benchmark_quick(demo_model_dir: Path):
    # The script finds the same demo model (default dir or $SAMI_DEMO_MODEL, and offline
    # mode, are inherited from this session); the fixture has built it already.
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "generation.py"), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"batched_speedup_b16: \d+\.\d\d", lines[-1]), lines[-1]
    assert str(demo_model_dir) in lines[0]


def test_evaluate_benchmark_quick(demo_model_dir: Path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "evaluate.py"), "--quick"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert re.fullmatch(r"speedup_vs_naive: \d+\.\d\d", lines[-1]), lines[-1]
    assert lines[-2].startswith("max |L_prefix - L_naive|:") and lines[-2].endswith("(OK at tolerance 1e-4)")
    assert str(demo_model_dir) in lines[0] and "queries: 8, N = 2" in lines[1]
    timed = [line for line in lines if re.match(r"\s*(prefix|naive): +\d+\.\d+ s for 8 queries", line)]
    assert len(timed) == 2 and all("MI lower bound" in line for line in timed)
