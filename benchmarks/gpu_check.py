"""GPU check: the nccl + bf16 + FSDP2 path, the log-prob matrix's speed, generation speed.

One run, nothing downloaded (the model is random-initialised from a config, the
tokenizer is trained offline on the shipped posts by sami_core.demo_model):

1. Build a ~1.1B Llama (hidden 2048, 22 layers, GQA 32/4 heads, vocab 32000, 2048
   positions) with random weights; save it in HF format with the demo tokenizer.
2. Write SAMI training data for it (a generate-stage data.jsonl from shipped posts) and
   run the real train stage: ``torchrun --nproc_per_node=<gpus> -m sami_core train``
   with ``fsdp: yes`` (FSDP2, nccl) and ``mixed_precision: bf16``. Check every step's
   loss in metrics.jsonl is finite and that the final checkpoint loads with
   ``from_pretrained`` and gives finite logits.
3. Time forward + backward of the log-prob matrix L, both paths of sami_core/logprobs.py
   (prefix-shared and naive N^2), at N = 2 and 4 (bf16 autocast over fp32 weights, as
   training computes): tokens/s through the transformer body, model FLOPs utilisation
   MFU = 6 * params * tokens/s / peak dense bf16 FLOP/s (peak from the GPU's name), and
   peak memory (torch.cuda.max_memory_allocated) of one call.
4. Generation tokens/s with sami_core.generation (transformers, batched; EOS ignored),
   and with vLLM when it imports here (or through ``--vllm-python``, a venv that has it).

    benchmarks/gpu_check.sh                         # the GPU run (sets up a venv first)
    python benchmarks/gpu_check.py --cpu-smoke      # same code path: tiny model, gloo, fp32, seconds

Prints a table; the last line is ``mfu_prefix_n4: X`` (the prefix path's MFU at N = 4, a
fraction of the peak; ``nan`` on a device without a known peak, e.g. the CPU smoke).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Run as a script, this folder is sys.path[0]: its modules (queue.py) would shadow the
# standard library's for torch. Import from the checkout instead.
_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from sami_core.contract import CHECKPOINTS_DIR, FINAL_CHECKPOINT, METRICS_FILE  # noqa: E402
from sami_core.demo_model import DATA_DIR, build_tokenizer  # noqa: E402
from sami_core.generation import (  # noqa: E402
    GenerationConfig, generate_texts, generate_texts_vllm, load_model_and_tokenizer,
)
from sami_core.logprobs import MatrixBatch, logprob_matrix_naive, logprob_matrix_prefix  # noqa: E402
from sami_core.prompts import build_prompt  # noqa: E402

# Dense bf16 peak FLOP/s by GPU name (no sparsity). H200 has H100's compute.
PEAK_BF16 = [("H200", 989e12), ("H100", 989e12), ("GH200", 989e12), ("A100", 312e12), ("L40S", 362e12),
             ("A10G", 70e12), ("L4", 121e12)]

GPU = dict(
    model=dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    train_queries=16, train_steps=4, post_chars=2000, dtype="bf16",
    lp_queries=2, prompt_len=1024, response_len=128, rounds=3,
    gen_prompts=64, gen_batch=64, gen_new_tokens=128, vllm_batch=256,
)
CPU_SMOKE = dict(
    model=dict(vocab_size=4096, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024),
    train_queries=4, train_steps=2, post_chars=300, dtype="no",
    lp_queries=1, prompt_len=48, response_len=10, rounds=1,
    gen_prompts=4, gen_batch=4, gen_new_tokens=4, vllm_batch=4,
)


def log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


def peak_flops(device: str) -> tuple[str, float]:
    """(device name, dense bf16 peak FLOP/s); nan where the name is not in PEAK_BF16."""
    if device != "cuda":
        return "cpu", math.nan
    name = torch.cuda.get_device_name(0)
    return name, next((f for key, f in PEAK_BF16 if key in name), math.nan)


# ---- 1. model ---------------------------------------------------------------------------
def posts() -> list[str]:
    return [json.loads(line)["post"] for line in (DATA_DIR / "posts.jsonl").read_text().splitlines() if line]


def build_model_dir(cfg: dict, out: Path, tokenizer_dir: str | None = None) -> tuple[Path, int]:
    """Random-init Llama + the demo tokenizer (trained offline on the shipped posts, or read
    from ``tokenizer_dir``), saved in HF format. Returns (dir, parameter count)."""
    from transformers import AutoTokenizer
    from transformers import GenerationConfig as HFGenerationConfig
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir) if tokenizer_dir else build_tokenizer(posts())
    tokenizer.model_max_length = cfg["model"]["max_position_embeddings"]
    config = LlamaConfig(**cfg["model"], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    if len(tokenizer) > config.vocab_size:
        raise SystemExit(f"model vocab {config.vocab_size} < tokenizer's {len(tokenizer)}")
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):  # random init is slow on the CPU
        model = LlamaForCausalLM(config)
    model.generation_config = HFGenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id,
                                                 pad_token_id=tokenizer.pad_token_id)
    n_params = sum(p.numel() for p in model.parameters())
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)  # float32 safetensors: the trainer's master weights
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the train stage's processes need the memory
    return out, n_params


# ---- 2. train ---------------------------------------------------------------------------
def write_training_data(cfg: dict, out: Path, n: int = 2) -> Path:
    """A generate-stage-shaped data.jsonl from shipped posts (responses: other posts' openings)."""
    ps = posts()
    rows = []
    for k in range(cfg["train_queries"]):
        query = ps[k][: cfg["post_chars"]]
        cons = [f"1. Summaries should be {'brief' if i == 0 else 'long'} (variant {i})." for i in range(n)]
        rows.append({
            "query_id": f"q{k}", "query": query,
            "prompts": [build_prompt("summarization", c, query) for c in cons],
            "constitutions": cons, "flips": [[i > 0] for i in range(n)],
            "responses": [ps[100 + k * n + i][: 60 + 40 * i] for i in range(n)],
        })
    out.mkdir(parents=True, exist_ok=True)
    (out / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return out


def run_train(cfg: dict, model_dir: Path, data_dir: Path, run_dir: Path, nproc: int) -> dict:
    """The real train stage under torchrun (FSDP2 even on one process). Returns its results."""
    spec = {
        "model": {"path": str(model_dir), "prompt_format": "plain"},
        "data": {"path": str(data_dir)},
        "training": {"optimizer": "adamw", "lr": 1e-5, "grad_accum": 1, "queries_per_microbatch": 1,
                     "max_steps": cfg["train_steps"], "save_every": cfg["train_steps"], "seed": 0,
                     "fsdp": "yes", "mixed_precision": cfg["dtype"], "activation_checkpointing": True},
    }
    spec_path = run_dir.parent / "train-spec.json"
    spec_path.write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sami_core", "train", "--spec", str(spec_path), "--run-dir", str(run_dir)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    if not torch.cuda.is_available():
        env["OMP_NUM_THREADS"] = "1"
    log(" ".join(cmd))
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    stderr = proc.stderr
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + stderr[-8000:])
        raise SystemExit(f"train stage failed (exit {proc.returncode}); its output is above")
    backend = "nccl" if "device=cuda" in stderr else "gloo"
    line = next((ln for ln in stderr.splitlines() if "fsdp=" in ln), "")
    metrics = [json.loads(ln) for ln in (run_dir / METRICS_FILE).read_text().splitlines() if ln.strip()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    ok_loss = len(losses) == cfg["train_steps"] and all(math.isfinite(x) for x in losses)

    from transformers import AutoModelForCausalLM

    final = run_dir / CHECKPOINTS_DIR / FINAL_CHECKPOINT
    model = AutoModelForCausalLM.from_pretrained(final)
    with torch.no_grad():
        logits = model(torch.tensor([[0, 5, 6, 7]])).logits
    ok_ckpt = bool(torch.isfinite(logits).all())
    del model
    return {"seconds": seconds, "losses": losses, "ok_loss": ok_loss, "ok_ckpt": ok_ckpt, "checkpoint": final,
            "backend": backend, "fsdp": "fsdp=True" in line, "bf16": "bf16=True" in line}


# ---- 3. log-prob matrix -----------------------------------------------------------------
def lp_batch(cfg: dict, n: int) -> MatrixBatch:
    """Ragged prompts (+-10%) and responses (+-25%) of random ids, seeded by N."""
    rng = random.Random(1000 + n)
    vocab = cfg["model"]["vocab_size"]

    def toks(mean: int, spread: float) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(int(mean * (1 - spread)), int(mean * (1 + spread))))]

    q = cfg["lp_queries"]
    return MatrixBatch(prompt_ids=[[toks(cfg["prompt_len"], 0.1) for _ in range(n)] for _ in range(q)],
                       response_ids=[[toks(cfg["response_len"], 0.25) for _ in range(n)] for _ in range(q)])


def body_tokens(batch: MatrixBatch, method: str) -> int:
    """Tokens through the transformer body, padding not counted (as benchmarks/logprob_matrix.py)."""
    if method == "prefix":  # N P + N^2 (R - 1) per query
        return sum(len(p) + sum(len(y) - 1 for y in batch.response_ids[b])
                   for b in range(batch.B) for p in batch.prompt_ids[b])
    return sum(len(p) + len(y) - 1  # N^2 (P + R - 1) per query
               for b in range(batch.B) for p in batch.prompt_ids[b] for y in batch.response_ids[b])


def time_logprobs(cfg: dict, model_dir: Path, device: str, n_params: int, peak: float) -> list[dict]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa").to(device)
    model.train()
    model.config.use_cache = False
    cuda = device == "cuda"
    fns = {"prefix": logprob_matrix_prefix, "naive": logprob_matrix_naive}
    rows = []
    for n in (2, 4):
        batch = lp_batch(cfg, n)
        times: dict[str, list[float]] = {m: [] for m in fns}
        peaks: dict[str, float] = {m: 0.0 for m in fns}
        failed: dict[str, str] = {}
        for rnd in range(1 + cfg["rounds"]):  # round 0 warms up (kernels, allocator)
            for method, fn in fns.items():
                if method in failed:
                    continue
                model.zero_grad(set_to_none=True)
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t0 = time.perf_counter()
                try:
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                        L = fn(model, batch)  # (B, N, N)
                    L.sum().backward()
                    if cuda:
                        torch.cuda.synchronize()
                except torch.OutOfMemoryError:  # reported in the table, not fatal
                    failed[method] = "OOM"
                    L = None
                    model.zero_grad(set_to_none=True)
                    torch.cuda.empty_cache()
                    continue
                if not bool(torch.isfinite(L.detach()).all()):
                    failed[method] = "non-finite L"
                if rnd > 0:
                    times[method].append(time.perf_counter() - t0)
                if cuda:
                    peaks[method] = max(peaks[method], torch.cuda.max_memory_allocated() / 2**30)
                del L
        for method in fns:
            tokens = body_tokens(batch, method)
            seconds = statistics.median(times[method]) if times[method] else math.nan
            tps = tokens / seconds
            rows.append({"n": n, "method": method, "tokens": tokens, "seconds": seconds, "tokens_per_s": tps,
                         "mfu": 6 * n_params * tps / peak, "peak_gib": peaks[method] if cuda else math.nan,
                         "error": failed.get(method)})
    del model
    if cuda:
        torch.cuda.empty_cache()
    return rows


# ---- 4. generation ----------------------------------------------------------------------
def gen_prompts(cfg: dict) -> list[str]:
    ps = posts()
    return [f"POST: {p[:1500]}\n\nTL;DR:" for p in (ps * 4)[: cfg["gen_prompts"]]]


def time_generation(cfg: dict, model_dir: Path) -> dict:
    model, tokenizer = load_model_and_tokenizer(str(model_dir))  # bf16 on CUDA, fp32 on the CPU
    prompts = gen_prompts(cfg)
    config = GenerationConfig(temperature=1.0, max_new_tokens=cfg["gen_new_tokens"], batch_size=cfg["gen_batch"],
                              seed=0, ignore_eos=True)
    warm = GenerationConfig(temperature=1.0, max_new_tokens=2, batch_size=cfg["gen_batch"], ignore_eos=True)
    list(generate_texts(model, tokenizer, prompts[: cfg["gen_batch"]], warm))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    n_tokens = sum(k for _, _, k in generate_texts(model, tokenizer, prompts, config))
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds, "peak_gib": peak}


def time_vllm(cfg: dict, model_dir: Path) -> dict:
    """vLLM's tokens/s on the same prompts; EOS ignored. Runs where vllm imports."""
    prompts = gen_prompts(cfg)
    config = GenerationConfig(temperature=1.0, max_new_tokens=cfg["gen_new_tokens"], batch_size=cfg["vllm_batch"],
                              seed=0, ignore_eos=True)
    from vllm import LLM

    llm = LLM(model=str(model_dir), dtype="bfloat16", gpu_memory_utilization=0.5, seed=0)
    list(generate_texts_vllm(llm, prompts[:8], GenerationConfig(max_new_tokens=2, ignore_eos=True)))
    t0 = time.perf_counter()
    n_tokens = sum(k for _, _, k in generate_texts_vllm(llm, prompts, config))
    seconds = time.perf_counter() - t0
    return {"tokens": n_tokens, "seconds": seconds, "tokens_per_s": n_tokens / seconds}


def vllm_result(cfg: dict, model_dir: Path, vllm_python: str | None, smoke: bool) -> dict | str:
    """A result dict, or why there is none."""
    if vllm_python:  # another venv (vLLM pins its own torch): a subprocess of this file there
        cmd = [vllm_python, __file__, "--vllm-worker", str(model_dir)] + (["--cpu-smoke"] if smoke else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        last = proc.stdout.strip().splitlines()[-1:] or [""]
        if proc.returncode != 0 or not last[0].startswith("{"):
            sys.stderr.write(proc.stderr[-3000:])
            return f"vLLM run failed (exit {proc.returncode})"
        return json.loads(last[0])
    if importlib.util.find_spec("vllm") is None:
        return "vLLM not installed"
    if not torch.cuda.is_available():
        return "vLLM needs CUDA"
    try:
        return time_vllm(cfg, model_dir)
    except Exception as err:  # optional: a broken vLLM install must not sink the check
        return f"vLLM failed: {type(err).__name__}: {str(err)[:80]}"


# ---- report -----------------------------------------------------------------------------
def report(info: dict, train: dict, lp_rows: list[dict], gen: dict, vllm: dict | str) -> float:
    """Print the table; return the prefix path's MFU at N = 4."""
    def fmt(x: float, spec: str) -> str:
        return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)

    print(f"GPU check | {info['device']} x{info['nproc']} | torch {torch.__version__} | "
          f"Llama {info['params'] / 1e9:.3f}B params (hidden {info['hidden']}, {info['layers']} layers, "
          f"vocab {info['vocab']}) | peak bf16 {fmt(info['peak'] / 1e12, '.0f')} TFLOP/s")
    print(f"train: torchrun --nproc_per_node={info['nproc']} -m sami_core train | backend {train['backend']} | "
          f"fsdp {train['fsdp']} | bf16 {train['bf16']} | {len(train['losses'])} steps in {train['seconds']:.1f} s | "
          f"losses {', '.join(f'{x:.4f}' for x in train['losses'])} | "
          f"loss finite: {'OK' if train['ok_loss'] else 'FAILED'} | "
          f"checkpoint loads: {'OK' if train['ok_ckpt'] else 'FAILED'}")
    header = f"{'what':<34} {'N':>2} {'tokens':>8} {'s/call':>8} {'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}"
    print(header)
    print("-" * len(header))
    for r in lp_rows:
        label = f"log-prob matrix fwd+bwd, {r['method']}"
        if r["error"]:
            print(f"{label:<34} {r['n']:>2} {r['tokens']:>8} {r['error']:>8}")
            continue
        print(f"{label:<34} {r['n']:>2} {r['tokens']:>8} {r['seconds']:>8.3f} {r['tokens_per_s']:>10.0f} "
              f"{fmt(r['mfu'], '6.1%'):>6} {fmt(r['peak_gib'], '9.2f'):>9}")
    print(f"{'generate, transformers batched':<34} {'':>2} {gen['tokens']:>8} {gen['seconds']:>8.3f} "
          f"{gen['tokens_per_s']:>10.0f} {'-':>6} {fmt(gen['peak_gib'], '9.2f'):>9}")
    if isinstance(vllm, dict):
        print(f"{'generate, vLLM':<34} {'':>2} {vllm['tokens']:>8} {vllm['seconds']:>8.3f} "
              f"{vllm['tokens_per_s']:>10.0f} {'-':>6} {'-':>9}")
    else:
        print(f"{'generate, vLLM':<34} {'':>2} {vllm}")
    print("-" * len(header))
    # Out of memory is a figure of this GPU (the naive path at N = 4 on an 80 GB card may not
    # fit); a non-finite matrix, loss or checkpoint is a failure of the path under test.
    if not (train["ok_loss"] and train["ok_ckpt"]) or any(r["error"] not in (None, "OOM") for r in lp_rows):
        raise SystemExit("GPU check FAILED (see the table)")
    row = next(r for r in lp_rows if r["n"] == 4 and r["method"] == "prefix")
    return math.nan if row["error"] else row["mfu"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="tiny model, gloo, float32 on the CPU: the same code path in seconds (for the tests)")
    parser.add_argument("--nproc", type=int, default=0, help="training processes (default: the GPU count; smoke: 1)")
    parser.add_argument("--work-dir", help="where the model, data and run go (default: a temporary directory, removed)")
    parser.add_argument("--tokenizer", help="a saved tokenizer to use (e.g. the demo model's directory) "
                        "instead of training the demo tokenizer on the shipped posts")
    parser.add_argument("--vllm-python", help="python of a venv with vllm installed, for the vLLM row")
    parser.add_argument("--vllm-worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    cfg = CPU_SMOKE if args.cpu_smoke else GPU
    if args.vllm_worker:  # child process in the vLLM venv: one JSON line
        print(json.dumps(time_vllm(cfg, Path(args.vllm_worker))))
        return 0
    cuda = torch.cuda.is_available()
    if not args.cpu_smoke and not cuda:
        raise SystemExit("no CUDA device here: run this on a GPU machine, or use --cpu-smoke")
    device = "cpu" if args.cpu_smoke else "cuda"
    if args.cpu_smoke:
        torch.set_num_threads(1)
    nproc = args.nproc or (1 if args.cpu_smoke else torch.cuda.device_count())
    name, peak = peak_flops(device)

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(args.work_dir) if args.work_dir else Path(tmp)
        log(f"building the model in {work / 'model'}")
        model_dir, n_params = build_model_dir(cfg, work / "model", args.tokenizer)
        data_dir = write_training_data(cfg, work / "data")
        log("training under torchrun")
        train = run_train(cfg, model_dir, data_dir, work / "run", nproc)
        log("timing the log-prob matrix")
        lp_rows = time_logprobs(cfg, model_dir, device, n_params, peak)
        log("timing generation")
        gen = time_generation(cfg, train["checkpoint"])
        vllm = vllm_result(cfg, train["checkpoint"], args.vllm_python, args.cpu_smoke)
        info = {"device": name, "nproc": nproc, "params": n_params, "peak": peak,
                "hidden": cfg["model"]["hidden_size"], "layers": cfg["model"]["num_hidden_layers"],
                "vocab": cfg["model"]["vocab_size"]}
        mfu = report(info, train, lp_rows, gen, vllm)
    print(f"mfu_prefix_n4: {mfu:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
