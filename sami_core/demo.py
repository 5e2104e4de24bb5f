"""`python -m sami_core demo`: the whole method once, on the embedded default.

generate (demo model, shipped posts, a shipped constitution, N = 2)
  -> train (torchrun, 2 processes, FSDP2 with gloo on CPU)
  -> sample the base model and the final checkpoint on held-out posts
  -> evaluate: the held-out MI lower bound of the base model and of the final checkpoint
     (printed last: ``mi_lower_bound_base`` and ``mi_lower_bound_final``, with intervals).

The demo model is tiny and trained for seconds: its texts are not meaningful. The demo
shows the mechanics end to end; point the same specs at a real model for real results.
Specs are written into the run directory so each stage can be re-run by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from sami_core.contract import METRICS_FILE, OUTPUTS_FILE


DEMO_MAX_PROMPT_TOKENS = 200


def demo_specs(run_dir: Path, quick: bool = False) -> dict[str, dict]:
    data = {"source": "demo", "eval_size": 50, "train_size": 16 if quick else 48, "seed": 0}
    constitution = {"path": "demo:opus/0"}
    model = {"path": "demo", "prompt_format": "plain"}
    gen = {"temperature": 1.0, "top_p": 0.95, "max_new_tokens": 24 if quick else 48, "batch_size": 16, "seed": 0}
    generate = {"model": model, "data": data, "constitution": constitution, "task": "summarization",
                "n_constitutions": 2, "generation": gen, "filters": {"min_chars": 1}}
    train = {"model": model, "data": {"path": str(run_dir / "generate")},
             "training": {"optimizer": "rmsprop", "lr": 1e-4, "grad_accum": 2, "queries_per_microbatch": 1,
                          "epochs": 1.0, "save_every": 2 if quick else 4, "warmup_steps": 1, "seed": 0,
                          "activation_checkpointing": True, "append_eos": True}}
    sample_gen = {**gen, "temperature": 0.0}
    sample = {"data": data, "constitution": constitution, "task": "summarization", "split": "eval",
              "limit": 8 if quick else 16, "temperatures": [0.0], "generation": sample_gen}
    evaluate = {"data": data, "constitution": constitution, "task": "summarization", "split": "eval",
                "limit": 8 if quick else 16, "n_constitutions": 2,
                "generation": {"temperature": 0.0, "max_new_tokens": gen["max_new_tokens"], "batch_size": 16},
                "n_boot": 1000, "append_eos": True}
    # EOS scored after every response (not `auto`): the demo model was pretrained with an EOS
    # after each summary, and its padded summaries often reach max_new_tokens; the demo's
    # figures (README) were measured this way.
    # Posts cut to fit 200 prompt tokens: the demo model was pretrained on posts of up to 300
    # characters, so that it reads the constitution close to the summary.
    for stage in (generate, sample, evaluate):
        stage["max_prompt_tokens"] = DEMO_MAX_PROMPT_TOKENS
    return {"generate": generate, "train": train, "sample": sample, "evaluate": evaluate, "model": model}


def _nats(x: float) -> float:
    return round(x, 4) + 0.0  # + 0.0: no "-0.0"


def _say(msg: str) -> None:
    print(msg, flush=True)


def run_demo(run_dir: str | Path, nproc: int = 2, quick: bool = False) -> dict:
    from sami_core.demo_model import build_demo_model, default_demo_model_dir
    from sami_core.spec import validate_spec
    from sami_core.evaluate import run_evaluate
    from sami_core.stages import run_generate, run_sample

    t_start = time.time()
    run_dir = Path(run_dir).resolve()
    (run_dir / "specs").mkdir(parents=True, exist_ok=True)
    model_dir = default_demo_model_dir()
    if not (model_dir / "config.json").exists():
        _say(f"[1/5] building the demo model at {model_dir}")
        build_demo_model(model_dir)
    else:
        _say(f"[1/5] demo model: {model_dir}")
    specs = demo_specs(run_dir, quick)

    def write_spec(name: str, spec: dict) -> Path:
        p = run_dir / "specs" / f"{name}.yaml"
        p.write_text(yaml.safe_dump(spec, sort_keys=False))
        return p

    _say("[2/5] generate: N=2 responses per training post")
    gen_out = run_generate(validate_spec("generate", specs["generate"]), run_dir / "generate")
    write_spec("generate", specs["generate"])

    _say(f"[3/5] train: torchrun --nproc_per_node={nproc} (FSDP2, gloo on CPU)")
    train_spec = write_spec("train", specs["train"])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sami_core", "train", "--spec", str(train_spec), "--run-dir", str(run_dir / "train")]
    rc = subprocess.call(cmd, env=env)
    if rc != 0:
        raise RuntimeError(f"training failed (exit code {rc}); see the output above and {run_dir / 'train'}")
    train_out = json.loads((run_dir / "train" / OUTPUTS_FILE).read_text())
    final = train_out["final_checkpoint"]

    _say("[4/5] sample: base model and final checkpoint on held-out posts")
    sample_base = {**specs["sample"], "model": specs["model"]}
    sample_final = {**specs["sample"], "model": {**specs["model"], "path": final}}
    write_spec("sample-base", sample_base)
    write_spec("sample-final", sample_final)
    run_sample(validate_spec("sample", sample_base), run_dir / "sample-base")
    run_sample(validate_spec("sample", sample_final), run_dir / "sample-final")

    _say("[5/5] evaluate: held-out MI of the base model and of the final checkpoint")
    evals = {}
    for name, model_spec in (("base", specs["model"]), ("final", {**specs["model"], "path": final})):
        spec = {**specs["evaluate"], "model": model_spec, "label": name}
        write_spec(f"evaluate-{name}", spec)
        evals[name] = run_evaluate(validate_spec("evaluate", spec), run_dir / f"evaluate-{name}")

    metrics = [json.loads(x) for x in (run_dir / "train" / METRICS_FILE).read_text().splitlines()]
    summary = {
        "run_dir": str(run_dir),
        "generated_data": str(run_dir / "generate" / "data.jsonl"),
        "kept_queries": gen_out["n_kept"],
        "train_metrics": str(run_dir / "train" / METRICS_FILE),
        "checkpoints": [c["path"] for c in train_out["checkpoints"]],
        "first_loss": metrics[0]["loss"],
        "last_loss": metrics[-1]["loss"],
        "samples_base": str(run_dir / "sample-base" / "responses.jsonl"),
        "samples_final": str(run_dir / "sample-final" / "responses.jsonl"),
        "seconds": round(time.time() - t_start, 1),
    }
    for name, out in evals.items():  # last: the held-out figures, in nats, with their 95% intervals
        summary[f"mi_lower_bound_{name}_ci"] = [_nats(out["mi_lower_bound_ci_low"]), _nats(out["mi_lower_bound_ci_high"])]
    for name, out in evals.items():
        summary[f"mi_lower_bound_{name}"] = _nats(out["mi_lower_bound"])
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    _say("\nDemo finished (the demo model's texts are not meaningful; it shows the mechanics).")
    for k, v in summary.items():
        if k == "checkpoints":
            _say(f"  {k}:")
            for x in v:
                _say(f"    {x}")
        else:
            _say(f"  {k}: {v}")
    return summary
