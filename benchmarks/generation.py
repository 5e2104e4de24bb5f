"""Batched vs one-at-a-time generation with `sami_core.generation.generate_texts`.

Both runs generate exactly ``--max-new-tokens`` tokens per prompt (EOS is ignored), so
they do the same amount of decoding and tokens/s compares fairly. Prompts are shipped
TL;DR posts in the plain ``POST: ... TL;DR:`` format. The model is the offline demo
model (built into its default directory if missing) unless ``--model`` is given.

    python benchmarks/generation.py            # 32 prompts, 64 new tokens
    python benchmarks/generation.py --quick    # smoke run: 16 prompts, 8 new tokens, 1 repeat

Each mode is timed ``--repeats`` times, interleaved, and its best run counts: on a small
machine shared with other work single runs vary a lot. The last line is
``batched_speedup_b16: X.XX`` (the ratio of tokens/s; target >= 4 on the demo model on
2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder is sys.path[0]: its modules (queue.py) would shadow the
# standard library's for torch. Import from the checkout instead (no `pip install -e .`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sami_core.demo_model import DATA_DIR, ensure_demo_model  # noqa: E402
from sami_core.generation import GenerationConfig, generate_texts, load_model_and_tokenizer  # noqa: E402

BATCH = 16


def load_prompts(n: int, post_chars: int) -> list[str]:
    posts = [json.loads(line)["post"] for line in (DATA_DIR / "posts.jsonl").read_text().splitlines() if line]
    return [f"POST: {p[:post_chars]}\n\nTL;DR:" for p in posts[:n]]


def timed_run(model, tokenizer, prompts: list[str], config: GenerationConfig) -> tuple[float, int]:
    """(seconds, generated tokens) for one pass over `prompts`."""
    started = time.perf_counter()
    n_tokens = sum(n for _, _, n in generate_texts(model, tokenizer, prompts, config))
    return time.perf_counter() - started, n_tokens


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run (fewer prompts and tokens)")
    parser.add_argument("--model", help="model path or hub id (default: the demo model)")
    parser.add_argument("--prompts", type=int, help="number of prompts (default 32; quick: 16)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens generated per prompt (default 64; quick: 8)")
    parser.add_argument("--post-chars", type=int, default=600, help="posts are cut to this many characters")
    parser.add_argument("--repeats", type=int, help="timed runs per mode, the best counts (default 3; quick: 1)")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    n_prompts = args.prompts or (16 if args.quick else 32)
    max_new = args.max_new_tokens or (8 if args.quick else 64)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    def progress(fraction: float, message: str) -> None:
        print(f"[demo model {100 * fraction:3.0f}%] {message}", file=sys.stderr, flush=True)

    model_path = args.model or str(ensure_demo_model(progress=progress))
    model, tokenizer = load_model_and_tokenizer(model_path)
    prompts = load_prompts(n_prompts, args.post_chars)
    lengths = [len(ids) for ids in tokenizer(prompts)["input_ids"]]
    import torch

    print(f"model: {model_path} on {next(model.parameters()).device} ({torch.get_num_threads()} CPU threads)")
    print(f"prompts: {len(prompts)} ({min(lengths)}-{max(lengths)} tokens), {max_new} new tokens each, EOS ignored")

    common = dict(temperature=1.0, max_new_tokens=max_new, seed=0, ignore_eos=True)
    # Warm-up: the first calls pay for lazy initialisation (kernels, allocator) in both modes.
    for batch_size in (1, BATCH):
        warm = GenerationConfig(**{**common, "max_new_tokens": 2}, batch_size=batch_size)
        timed_run(model, tokenizer, prompts[:batch_size], warm)

    # Best of `repeats` per mode, the modes interleaved: other load on a small shared
    # machine slows single runs (badly so for multi-threaded batched kernels), not the best.
    modes = {"one-at-a-time": 1, f"batched (b{BATCH})": BATCH}
    best = {name: math.inf for name in modes}
    for _ in range(repeats):
        for name, batch_size in modes.items():
            seconds, n_tokens = timed_run(model, tokenizer, prompts, GenerationConfig(**common, batch_size=batch_size))
            assert n_tokens == len(prompts) * max_new, (n_tokens, len(prompts) * max_new)
            best[name] = min(best[name], seconds)
    rate = {name: len(prompts) * max_new / seconds for name, seconds in best.items()}
    for name in modes:
        print(f"{name:>16}: {len(prompts) * max_new} tokens in {best[name]:6.2f} s = {rate[name]:8.1f} tokens/s")
    speedup = rate[f"batched (b{BATCH})"] / rate["one-at-a-time"]
    print(f"batched_speedup_b{BATCH}: {speedup:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
