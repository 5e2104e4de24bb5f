"""benchmarks/gpu_check.sh --cpu-smoke: the GPU check's whole path on the CPU.

The wrapper reuses this interpreter's venv (no set-up), then gpu_check.py builds a tiny
random Llama with the offline demo tokenizer, runs the real train stage under torchrun
with FSDP2 over gloo (one process, ``fsdp: yes``), loads the final checkpoint, times both
log-prob matrix paths at N = 2 and 4 and batched generation, and prints the table with
``mfu_prefix_n4: X`` last. The GPU figures themselves can only come from a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sami_core.logprobs import MatrixBatch

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_cpu_smoke_runs_the_train_stage_and_prints_the_table(tmp_path, demo_model_dir):
    env = {**os.environ, "VENV": str(Path(sys.executable).parent.parent), "GPU_CHECK_VLLM": "0",
           "GPU_CHECK_TIMEOUT": "300"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke",
                           "--work-dir", str(tmp_path), "--tokenizer", str(demo_model_dir)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=330)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    train = next(line for line in out.splitlines() if line.startswith("train:"))
    assert "backend gloo" in train and "fsdp True" in train, train
    assert "2 steps" in train and "loss finite: OK" in train and "checkpoint loads: OK" in train, train
    for n in (2, 4):
        for method in ("prefix", "naive"):
            row = re.search(rf"^log-prob matrix fwd\+bwd, {method}\s+{n}\s+(\d+)\s+([\d.]+)\s+(\d+)\s", out, re.M)
            assert row and float(row.group(2)) > 0 and int(row.group(3)) > 0, (method, n, out)
    assert re.search(r"^generate, transformers batched\s+16\s+[\d.]+\s+\d+", out, re.M), out  # 4 prompts x 4 tokens
    assert re.search(r"^generate, vLLM\s+vLLM not installed", out, re.M), out
    assert re.fullmatch(r"mfu_prefix_n4: (nan|\d+\.\d{4})", out.strip().splitlines()[-1]), out
    assert (tmp_path / "run" / "checkpoints" / "final" / "config.json").exists()


def test_body_tokens_counts_the_tokens_each_path_runs():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    path = list(sys.path)
    try:
        spec.loader.exec_module(gpu_check)
    finally:
        sys.path[:] = path  # the module puts the repository root first
    body_tokens = gpu_check.body_tokens
    # one query, N = 2: prompts of 5 and 7 tokens, responses of 3 and 4
    batch = MatrixBatch(prompt_ids=[[[1] * 5, [1] * 7]], response_ids=[[[2] * 3, [2] * 4]])
    assert body_tokens(batch, "prefix") == (5 + 2 + 3) + (7 + 2 + 3)  # P_i + sum_j (R_j - 1)
    assert body_tokens(batch, "naive") == (5 + 3 - 1) + (5 + 4 - 1) + (7 + 3 - 1) + (7 + 4 - 1)
