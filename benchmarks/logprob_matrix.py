"""Benchmark: forward + backward of the SAMI log-prob matrix L (sami_core/logprobs.py).

Three ways to compute the same (B, N, N) matrix:
  (a) reference: the seed's method, N^2 padded sequences prompt_i + y_j, vocab logits and
      a full log_softmax at every position (logprob_matrix_naive(full_logits=True));
  (b) naive-tail: the same N^2 sequences, vocab logits at response positions only;
  (c) prefix: B*N sequences [prompt_i, y_1, ..., y_N] with a 4D mask (the default path).

Model: a random-init Llama with a 32k vocab; prompts ~400 tokens, responses ~80
(ragged, random ids, seeded). Time: median over several rounds of forward +
L.sum().backward() (one warmup round, before the first N only: on CPU nothing is tuned
per shape). The three methods run interleaved, one call each per round, so that load
from other processes on a shared machine hits them alike; the process CPU time per
call is shown too (with one thread it is the compute time, whatever the load; with
more, threads spinning while a sibling waits for a core inflate it). On a busy
machine (load average at or above the core count) the default is one thread: with two,
each parallel op waits for a descheduled sibling and wall times become erratic.

Peak memory of one call: on CUDA, torch.cuda.max_memory_allocated after a reset, in
the timing process. On CPU torch's allocator is invisible to tracemalloc and a process
keeps freed heap for reuse, so each (method, N) runs once more in a fresh subprocess
that resets its RSS high-water mark just before the call (Linux: write 5 to
/proc/self/clear_refs) and reports VmHWM - VmRSS: the memory the call added, parameter
gradients included (the same for every method). --quick skips this.

    .venv/bin/python benchmarks/logprob_matrix.py [--quick] [--device auto|cpu|cuda] [--threads K]

The last line printed is `speedup_vs_reference_n4: X.XX` (median time of (a) / median
time of (c) at N = 4). The tokens column counts the tokens that go through the
transformer body, padding not included: N^2 (P + R - 1) per query for (a) and (b),
N P + N^2 (R - 1) for (c).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

# Python puts this script's folder first on sys.path, where sibling benchmark files
# (benchmarks/queue.py, ...) would shadow standard modules that torch imports: swap it
# for the repository root.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from sami_core.logprobs import MatrixBatch, logprob_matrix_naive, logprob_matrix_prefix  # noqa: E402

METHODS = {
    "reference": "(a) naive, full logits (seed)",
    "naive_tail": "(b) naive, tail logits",
    "prefix": "(c) prefix-shared",
}

FULL = dict(
    vocab=32000, hidden=256, intermediate=1024, layers=4, heads=4, kv_heads=4,
    queries=2, prompt_len=400, response_len=80, warmup=1, rounds=3,
)
QUICK = dict(
    vocab=4000, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2,
    queries=1, prompt_len=60, response_len=12, warmup=1, rounds=2,
)


def build_model(cfg: dict, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], intermediate_size=cfg["intermediate"],
        num_hidden_layers=cfg["layers"], num_attention_heads=cfg["heads"],
        num_key_value_heads=cfg["kv_heads"], max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).to(device).float()  # train mode; Llama has no dropout


def build_batch(cfg: dict, n: int) -> MatrixBatch:
    """Ragged prompts (+-10%) and responses (+-25%) of random ids, seeded by N."""
    rng = random.Random(1000 + n)
    P, R, V = cfg["prompt_len"], cfg["response_len"], cfg["vocab"]

    def toks(mean: int, spread: float) -> list[int]:
        length = rng.randint(int(mean * (1 - spread)), int(mean * (1 + spread)))
        return [rng.randrange(3, V) for _ in range(length)]

    return MatrixBatch(
        prompt_ids=[[toks(P, 0.10) for _ in range(n)] for _ in range(cfg["queries"])],
        response_ids=[[toks(R, 0.25) for _ in range(n)] for _ in range(cfg["queries"])],
    )


def compute(method: str, model, batch: MatrixBatch) -> torch.Tensor:
    if method == "reference":
        return logprob_matrix_naive(model, batch, full_logits=True)
    if method == "naive_tail":
        return logprob_matrix_naive(model, batch)
    return logprob_matrix_prefix(model, batch)


def _proc_status_kib(field: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.M).group(1))


def cpu_peak_mib(cfg: dict, method: str, n: int) -> float:
    """Run in a fresh process: RSS the call (forward + backward) adds at its peak."""
    model = build_model(cfg, "cpu")
    batch = build_batch(cfg, n)
    try:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        base = _proc_status_kib("VmRSS")
    except OSError:  # not Linux, or not allowed: fall back to the lifetime peak
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    compute(method, model, batch).sum().backward()
    try:
        peak = _proc_status_kib("VmHWM")
    except OSError:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return (peak - base) / 1024


def cpu_peak_mib_isolated(cfg: dict, method: str, n: int, threads: int | None) -> float:
    cmd = [sys.executable, __file__, "--memory-worker", json.dumps([cfg, method, n])]
    if threads:
        cmd += ["--threads", str(threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def bench_n(cfg: dict, model, n: int, device: str, warmup: int) -> dict:
    """Interleaved rounds of (a), (b), (c) at one N: median and min time, last L."""
    batch = build_batch(cfg, n)
    cuda = device == "cuda"
    times = {m: [] for m in METHODS}
    cpu_times = {m: [] for m in METHODS}
    peaks = {m: [] for m in METHODS}
    values = {}
    for rnd in range(warmup + cfg["rounds"]):
        for method in METHODS:
            model.zero_grad(set_to_none=True)
            if cuda:
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                L = compute(method, model, batch)  # (B, N, N)
            L.sum().backward()
            if cuda:
                torch.cuda.synchronize()
                peaks[method].append((torch.cuda.max_memory_allocated() - base) / 2**20)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            if rnd >= warmup:
                times[method].append(elapsed)
                cpu_times[method].append(cpu)
            values[method] = L.detach()
            del L
    model.zero_grad(set_to_none=True)
    if cuda:  # the correctness check runs in float32, without autocast
        with torch.no_grad():
            values = {m: compute(m, model, batch) for m in METHODS}
    tokens_naive = sum(  # tokens through the transformer body, padding not counted
        len(p) + len(y) - 1
        for b in range(batch.B) for p in batch.prompt_ids[b] for y in batch.response_ids[b]
    )
    tokens_prefix = sum(
        len(p) + sum(len(y) - 1 for y in batch.response_ids[b])
        for b in range(batch.B) for p in batch.prompt_ids[b]
    )
    return {
        m: {
            "time_s": statistics.median(times[m]),
            "min_s": min(times[m]),
            "cpu_s": statistics.median(cpu_times[m]),
            "peak_mib": max(peaks[m]) if peaks[m] else float("nan"),
            "L": values[m].float().cpu(),
            "tokens": tokens_prefix if m == "prefix" else tokens_naive,
        }
        for m in METHODS
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small, fast smoke run")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads for torch; 0 (default) = torch's choice, or 1 when the load average "
        "is already at the core count (or with --quick): on a busy machine a second thread "
        "waits for a core at every parallel op and wall times become erratic",
    )
    parser.add_argument("--memory-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    threads, why = args.threads, "--threads"
    busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    if not threads and device == "cpu" and (args.quick or busy):
        threads, why = 1, "--quick" if args.quick else "auto: busy machine"
    if threads:
        torch.set_num_threads(threads)
    if args.memory_worker:  # child process: one call, print its peak
        cfg, method, n = json.loads(args.memory_worker)
        print(f"{cpu_peak_mib(cfg, method, n):.1f}")
        return

    cfg = QUICK if args.quick else FULL
    precision = "bf16 autocast" if device == "cuda" else "float32"
    print(
        f"log-prob matrix L, forward+backward | device {device} ({precision}, "
        f"{torch.get_num_threads()} thread(s)) | Llama vocab {cfg['vocab']}, hidden {cfg['hidden']}, "
        f"{cfg['layers']} layers | {cfg['queries']} queries/batch, prompts ~{cfg['prompt_len']}, "
        f"responses ~{cfg['response_len']} tokens | median of {cfg['rounds']} interleaved rounds "
        f"({cfg['warmup']} warmup round first)"
    )
    if device == "cpu":
        chosen = f" ({why})" if threads else ""
        print(
            f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; "
            f"{torch.get_num_threads()} torch thread(s){chosen}"
        )
    model = build_model(cfg, device)
    mem_name = "peak CUDA MiB" if device == "cuda" else "peak +RSS MiB"
    header = (
        f"{'N':>2}  {'method':<31} {'tokens':>7} {'s/iter':>8} {'min s':>8} {'cpu s':>8} {'vs (a)':>7} "
        f"{'vs (b)':>7} {mem_name:>13} {'max|L-L_a|':>11}"
    )
    print(header)
    print("-" * len(header))
    speedup_n4 = float("nan")
    worst_diff = 0.0
    for n in (2, 4):
        results = bench_n(cfg, model, n, device, warmup=cfg["warmup"] if n == 2 else 0)
        if device == "cpu" and not args.quick:
            for method in METHODS:
                results[method]["peak_mib"] = cpu_peak_mib_isolated(cfg, method, n, threads)
        ref = results["reference"]
        for method, label in METHODS.items():
            res = results[method]
            diff = (res["L"] - ref["L"]).abs().max().item()
            worst_diff = max(worst_diff, diff)
            print(
                f"{n:>2}  {label:<31} {res['tokens']:>7} {res['time_s']:>8.3f} {res['min_s']:>8.3f} "
                f"{res['cpu_s']:>8.3f} "
                f"{ref['time_s'] / res['time_s']:>6.2f}x "
                f"{results['naive_tail']['time_s'] / res['time_s']:>6.2f}x "
                f"{res['peak_mib']:>13.0f} {diff:>11.2e}".replace(" nan ", "   - ")
            )
        if n == 4:
            speedup_n4 = ref["time_s"] / results["prefix"]["time_s"]
    print("-" * len(header))
    status = "OK" if worst_diff <= 1e-5 else "FAILED (> 1e-5)"
    print(f"max |L - L_reference| over all runs: {worst_diff:.2e} {status}")
    if worst_diff > 1e-5:
        sys.exit(f"prefix/naive disagree with the reference by {worst_diff:.2e}")
    print(f"speedup_vs_reference_n4: {speedup_n4:.2f}")


if __name__ == "__main__":
    main()
