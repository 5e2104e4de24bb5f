"""Held-out MI (stage `evaluate`): prefix-shared scoring against the naive N² scoring.

Runs the evaluate stage on the demo model (or ``--model``) over ``--queries`` eval queries
(one greedy response per constitution variant), then times the stage's own scoring
function (``sami_core.evaluate.score_matrices``) on those responses twice: with the
prefix-shared matrix (one sequence per constitution, the default) and with the naive N²
one (one sequence per (constitution, response) pair, the test oracle). Both give the MI
summary; the script prints both timings, both bounds, the largest |difference| of the
matrices, and last ``speedup_vs_naive: X.XX`` (naive seconds / prefix seconds).

    python benchmarks/evaluate.py            # 64 queries, N = 2, 48 new tokens, best of 3
    python benchmarks/evaluate.py --n 4      # N = 4 (constitution demo:opus/2)
    python benchmarks/evaluate.py --quick    # smoke run: 8 queries, 8 new tokens, 1 repeat

Each scoring is timed ``--repeats`` times, interleaved, and its best run counts (a small
machine shared with other work varies a lot between runs).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder is sys.path[0]: its modules (queue.py) would shadow the
# standard library's for torch. Import from the checkout instead (no `pip install -e .`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import json  # noqa: E402

from sami_core.contract import GENERATIONS_FILE, MI_FILE  # noqa: E402
from sami_core.demo_model import ensure_demo_model  # noqa: E402
from sami_core.spec import validate_spec  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (fewer queries and tokens)")
    parser.add_argument("--model", help="model path or hub id (default: the demo model)")
    parser.add_argument("--queries", type=int, help="eval queries (default 64; quick: 8)")
    parser.add_argument("--n", type=int, default=2, help="N constitution variants per query (default 2)")
    parser.add_argument("--constitution", help="default: demo:opus/0 for N = 2, demo:opus/2 (4 variants) above")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per response (default 48; quick: 8)")
    parser.add_argument("--batch", type=int, default=4, help="queries per scoring forward (default 4)")
    parser.add_argument("--repeats", type=int, help="timed runs per method, the best counts (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    n_queries = args.queries or (8 if args.quick else 64)
    max_new = args.max_new_tokens or (8 if args.quick else 48)
    repeats = args.repeats or (1 if args.quick else 3)

    import numpy as np
    import torch

    from sami_core.evaluate import run_evaluate, score_matrices
    from sami_core.generation import load_model_and_tokenizer
    from sami_core.stages import resolve_model_path
    from sami_core.stats import mi_summary
    from sami_core.train import tokenize_rows

    if args.threads:
        torch.set_num_threads(args.threads)
    model_path = args.model or str(ensure_demo_model())
    spec = validate_spec("evaluate", {
        "model": {"path": model_path}, "data": {"source": "demo", "eval_size": n_queries},
        "constitution": {"path": args.constitution or ("demo:opus/0" if args.n == 2 else "demo:opus/2")},
        "n_constitutions": args.n, "logprob_impl": "prefix", "score_batch_size": args.batch,
        "generation": {"max_new_tokens": max_new, "batch_size": 16},
    })
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = run_evaluate(spec, Path(tmp) / "eval")
        stage_s = time.perf_counter() - t0
        gens = [json.loads(x) for x in (Path(tmp) / "eval" / GENERATIONS_FILE).read_text().splitlines()]
        stage_mats = {r["query_id"]: r["matrix"] for r in map(json.loads, (Path(tmp) / "eval" / MI_FILE)
                                                             .read_text().splitlines())}
    by_q: dict[str, dict[int, dict]] = {}
    for g in gens:
        by_q.setdefault(g["query_id"], {})[g["variant"]] = g
    rows = [{"query_id": q, "prompts": [v[i]["training_prompt"] for i in range(args.n)],
             "responses": [v[i]["response"] for i in range(args.n)], "eos": [v[i]["eos"] for i in range(args.n)]}
            for q, v in by_q.items()]
    model, tokenizer = load_model_and_tokenizer(resolve_model_path(model_path))
    examples = tokenize_rows(rows, tokenizer, spec.append_eos)
    p_len = [len(p) for e in examples for p in e.prompt_ids]
    r_len = [len(r) for e in examples for r in e.response_ids]
    print(f"model: {model_path} on {next(model.parameters()).device} ({torch.get_num_threads()} CPU threads)")
    print(f"queries: {len(examples)}, N = {args.n}; prompts {min(p_len)}-{max(p_len)} tokens "
          f"(mean {np.mean(p_len):.0f}), responses {min(r_len)}-{max(r_len)} tokens (mean {np.mean(r_len):.1f}), "
          f"greedy; {args.batch} queries per forward")
    print(f"evaluate stage (sampling + prefix scoring): {stage_s:.1f} s; "
          f"MI lower bound {out['mi_lower_bound']:.4f} nats "
          f"[{out['mi_lower_bound_ci_low']:.4f}, {out['mi_lower_bound_ci_high']:.4f}]")

    specs = {impl: spec.model_copy(update={"logprob_impl": impl}) for impl in ("prefix", "naive")}
    best = {impl: float("inf") for impl in specs}
    mats: dict[str, np.ndarray] = {}
    for _ in range(repeats):
        for impl, s in specs.items():
            started = time.perf_counter()
            got = []
            for k in range(0, len(examples), args.batch):
                got += score_matrices(model, examples[k : k + args.batch], s, tokenizer)
            best[impl] = min(best[impl], time.perf_counter() - started)
            mats[impl] = np.array(got)  # (Q, N, N)
    # input tokens per query: prefix sum_i |p_i| + N sum_j (|y_j| - 1); naive sum_ij (|p_i| + |y_j| - 1)
    tokens = {"prefix": sum(sum(map(len, e.prompt_ids)) + args.n * sum(len(r) - 1 for r in e.response_ids)
                            for e in examples),
              "naive": sum(len(p) + len(r) - 1 for e in examples for p in e.prompt_ids for r in e.response_ids)}
    for impl in specs:
        s = mi_summary(mats[impl], seed=spec.seed, n_boot=spec.n_boot)
        print(f"{impl:>7}: {best[impl]:7.3f} s for {len(examples)} queries ({len(examples) / best[impl]:7.1f} queries/s, "
              f"{tokens[impl]:,.0f} input tokens); MI lower bound {s['mi_lower_bound']:.4f} nats "
              f"[{s['mi_lower_bound_ci_low']:.4f}, {s['mi_lower_bound_ci_high']:.4f}], row accuracy "
              f"{s['row_accuracy']:.3f}, column accuracy {s['col_accuracy']:.3f}")
    stage = np.array([stage_mats[e.query_id] for e in examples])
    diff = float(np.abs(mats["prefix"] - mats["naive"]).max())
    diff_stage = float(np.abs(stage - mats["naive"]).max())
    print(f"max |L_prefix - L_naive|: {diff:.2e}; max |L_stage - L_naive|: {diff_stage:.2e} "
          f"({'OK' if max(diff, diff_stage) <= 1e-4 else 'MISMATCH'} at tolerance 1e-4)")
    print(f"speedup_vs_naive: {best['naive'] / best['prefix']:.2f}")
    return 0 if max(diff, diff_stage) <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
