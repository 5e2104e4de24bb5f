"""Judging throughput: bounded concurrency vs one request at a time, and a cached re-run.

Runs `sami_core.judge.runner.judge_pairs` against the test server speaking the OpenAI API
(`tests/openai_server.py`, started in its own process as a remote judge would be) on
127.0.0.1, with ``--latency`` seconds added to every answer. Pairs are the paper's published responses (iteration 3 vs
base, under both constitution sources: 500 pairs).

    python benchmarks/judge.py            # 500 pairs at concurrency 32; concurrency 1 on 50 of them
    python benchmarks/judge.py --quick    # smoke run: 64 pairs, concurrency 1 on 8

The concurrency-1 time is measured on a subset and scaled to all pairs (it is linear in
the number of requests: one at a time). Each of the two is timed ``--repeats`` times
(interleaved, a fresh cache each time) and its best run counts: on a small machine
shared with other work single runs vary a lot. A third run judges the same pairs again from the
cache. Then a rate-limited run: the server allows ``--rate-limit`` requests/s (429 with
Retry-After beyond, as providers do) and the judge must adapt its concurrency: every pair
succeeds and ``rate_limited_efficiency`` (judgments/s over the limit) is at least 0.8.
The last line is ``speedup_c32: X.XX`` (targets: >= 20, and 0 requests cached).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder is sys.path[0]: its modules (queue.py) would shadow the
# standard library's. Import from the checkout instead (no `pip install -e .`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sami_core.judge.cache import JudgmentCache  # noqa: E402
from sami_core.judge.client import make_client  # noqa: E402
from sami_core.judge.pairs import load_responses, make_pairs  # noqa: E402
from sami_core.judge.runner import JudgeSettings, RetryPolicy, judge_pairs  # noqa: E402
from sami_core.results import PUBLISHED_DIR  # noqa: E402
from sami_core.spec import LLMSpec  # noqa: E402


class ServerProcess:
    """tests/openai_server.py in a child process (no GIL shared with the client)."""

    def __init__(self, latency: float, rate_limit: float | None = None):
        cmd = [sys.executable, "-m", "tests.openai_server", "--latency", str(latency)]
        if rate_limit:
            cmd += ["--rate-limit", str(rate_limit)]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("port: "):
            self.proc.kill()
            raise SystemExit(f"the test server did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        self.base_url = self.url + "/v1"

    def reset(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/reset", data=b"{}", method="POST")).read()

    @property
    def requests(self) -> int:
        return self.stats()["requests"]

    def stats(self) -> dict:
        return json.loads(urllib.request.urlopen(self.url + "/stats").read())

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def load_pairs(n: int):
    pairs = []
    for source in ("opus", "mistral"):
        ckpt = "iteration-3-epoch-0.38-from-epoch-0.25"
        cand = load_responses(PUBLISHED_DIR / f"{ckpt}-mistral-{source}-constitution-temperature-0.0.json")
        base = load_responses(PUBLISHED_DIR / f"base-mistral-{source}-constitution-temperature-0.0.json")
        pairs += make_pairs(cand, base)
    if n > len(pairs):
        raise SystemExit(f"--pairs {n}: only {len(pairs)} pairs are shipped")
    return pairs[:n]


def timed_run(pairs, srv: ServerProcess, concurrency: int, cache: JudgmentCache) -> tuple[float, int, int]:
    """(seconds, requests the server received, judgments)"""
    spec = LLMSpec(base_url=srv.base_url, model="bench-judge", api_key_env=None, concurrency=concurrency,
                   timeout_s=30)
    settings = JudgeSettings(provider="bench", model=spec.model)  # the port is not part of the cache key
    srv.reset()
    t0 = time.perf_counter()
    report = judge_pairs(pairs, lambda: make_client(spec), cache, settings, concurrency=concurrency,
                         policy=RetryPolicy(max_attempts=3, backoff_initial_s=0.1))
    seconds = time.perf_counter() - t0
    errors = sum(j["verdict"] == "error" for j in report.judgments)
    if errors:
        raise SystemExit(f"{errors} judgments failed; the benchmark needs a clean run")
    return seconds, srv.requests, len(report.judgments)


def rate_limited_run(pairs, rate: float, latency: float, concurrency: int) -> tuple[float, int, dict]:
    """Judge ``pairs`` against a server that allows ``rate`` requests/s (429 + Retry-After
    beyond): (seconds, judgments, the server's counters). Every pair must succeed."""
    with tempfile.TemporaryDirectory() as tmp, ServerProcess(latency, rate_limit=rate) as srv:
        spec = LLMSpec(base_url=srv.base_url, model="bench-judge", api_key_env=None, concurrency=concurrency,
                       timeout_s=30)
        settings = JudgeSettings(provider="bench", model=spec.model)
        t0 = time.perf_counter()
        report = judge_pairs(pairs, lambda: make_client(spec), JudgmentCache([], write_to=Path(tmp) / "c.jsonl"),
                             settings, concurrency=concurrency, policy=RetryPolicy(max_attempts=3, backoff_initial_s=0.1))
        seconds = time.perf_counter() - t0
        errors = sum(j["verdict"] == "error" for j in report.judgments)
        if errors:
            raise SystemExit(f"rate-limited run: {errors} judgments failed (every pair must succeed)")
        return seconds, len(report.judgments), srv.stats()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--subset", type=int, default=50, help="pairs judged at concurrency 1 (scaled to --pairs)")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds the server adds to every answer")
    ap.add_argument("--repeats", type=int, default=2, help="timings per mode; the best counts")
    ap.add_argument("--rate-limit", type=float, default=20.0,
                    help="requests/s the server allows in the rate-limited run (429 + Retry-After beyond)")
    ap.add_argument("--rate-limited-pairs", type=int, default=300, help="pairs judged in the rate-limited run")
    ap.add_argument("--quick", action="store_true", help="smoke run: 64 pairs, subset 8, 1 repeat")
    args = ap.parse_args()
    if args.quick:
        args.pairs, args.subset, args.repeats, args.rate_limited_pairs = 64, 8, 1, 60
    pairs = load_pairs(args.pairs)
    import openai  # noqa: F401  - imported before timing (the client imports it on first use)

    with tempfile.TemporaryDirectory() as tmp, ServerProcess(args.latency) as srv:
        print(f"judge benchmark: {len(pairs)} pairs, server latency {args.latency * 1000:.0f} ms "
              f"(tests/openai_server.py in its own process, {srv.url})")
        best_c, best_1 = None, None
        for r in range(args.repeats):
            cache_file = Path(tmp) / f"c{args.concurrency}-{r}.jsonl"
            run_c = timed_run(pairs, srv, args.concurrency, JudgmentCache([], write_to=cache_file))
            run_1 = timed_run(pairs[: args.subset], srv, 1, JudgmentCache([], write_to=Path(tmp) / f"c1-{r}.jsonl"))
            best_c = run_c if best_c is None or run_c[0] < best_c[0] else best_c
            best_1 = run_1 if best_1 is None or run_1[0] < best_1[0] else best_1
        (t_c, req_c, n_c), (t_1, req_1, n_1) = best_c, best_1
        print(f"concurrency {args.concurrency:>3}: {n_c} judgments in {t_c:6.2f} s "
              f"({n_c / t_c:6.1f} judgments/s, {req_c} requests; best of {args.repeats})")
        t_1_all = t_1 * len(pairs) / n_1
        print(f"concurrency   1: {n_1} judgments in {t_1:6.2f} s ({n_1 / t_1:6.1f} judgments/s, {req_1} requests; "
              f"best of {args.repeats}); estimated for all {len(pairs)}: {t_1_all:6.2f} s "
              f"(measured on {n_1} pairs, scaled x{len(pairs) / n_1:g})")
        t_r, req_r, n_r = timed_run(pairs, srv, args.concurrency, JudgmentCache([cache_file]))
        print(f"cached re-run:   {n_r} judgments in {t_r:6.2f} s, {req_r} requests sent")
        speedup = t_1_all / t_c
    limited_pairs = load_pairs(args.rate_limited_pairs)
    t_l, n_l, stats = rate_limited_run(limited_pairs, args.rate_limit, args.latency, args.concurrency)
    efficiency = n_l / t_l / args.rate_limit
    print(f"rate limit {args.rate_limit:g}/s: {n_l} judgments in {t_l:6.2f} s ({n_l / t_l:5.1f}/s) at concurrency "
          f"{args.concurrency}, {stats['limited']} requests answered 429, {stats['within_limit']} within the limit")
    print(f"targets: speedup >= 20 -> {'OK' if speedup >= 20 else 'MISSED'}; "
          f"cached re-run 0 requests -> {'OK' if req_r == 0 else 'MISSED'}; "
          f"rate-limited throughput >= 80% of the limit, no pair failing -> {'OK' if efficiency >= 0.8 else 'MISSED'}")
    print(f"rate_limited_efficiency: {efficiency:.2f}")
    print(f"speedup_c{args.concurrency}: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
