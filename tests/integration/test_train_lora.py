"""LoRA training (``training.lora``) on the real distributed path: torchrun, 2 gloo
processes, FSDP2, the demo model.

- One uninterrupted run (the module's fixture) trains adapters only: its loss falls; in
  the merged checkpoint every weight without an adapter equals the base model's exactly
  and every adapted one moved; the merged model's logits equal the base model plus the
  saved adapter (peft's own model) to 1e-4; the resumable state holds the adapters only.
- A run killed with SIGKILL once it has a resumable state, then restarted, matches the
  uninterrupted run step by step and in its final adapter (tolerances, not bitwise).
- The next iteration, from the final checkpoint, either continues its adapter on the
  original base or trains a fresh adapter on the merged model: both start from the same
  function (same first loss), and the KL reference (adapters off) is the original base in
  the first case (KL != 0 at the first step) and the merged model in the second (KL = 0).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.integration.test_train_torchrun import complete_states, finish, kill_at_first_state, metrics, torchrun
from tests.training_data import make_training_data

pytestmark = pytest.mark.integration

MAX_STEPS = 4
LORA = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]}


def lora_spec(tmp: Path, model: str, data: Path, lora: dict | None = None, **training) -> Path:
    spec = {"model": {"path": model, "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 5e-3, "warmup_steps": 2, "lr_schedule": "cosine",
                         "grad_accum": 1, "max_steps": MAX_STEPS, "save_every": 2, "seed": 0,
                         "lora": {**LORA, **(lora or {})}, **training}}
    p = tmp / f"lora-{len(list(tmp.glob('lora-*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> SimpleNamespace:
    """One uninterrupted 2-rank LoRA run of MAX_STEPS steps on the same 2 queries (one per
    rank each step), with the KL term on."""
    tmp = tmp_path_factory.mktemp("lora")
    data = make_training_data(tmp / "gen", n_queries=2)
    spec = lora_spec(tmp, str(demo_model_dir), data, beta=0.1)
    run_dir = tmp / "reference"
    log = finish(torchrun(spec, run_dir))
    return SimpleNamespace(tmp=tmp, data=data, spec=spec, run_dir=run_dir, log=log)


def test_lora_trains_only_the_adapters_and_merges_exactly(lora_run: SimpleNamespace, demo_model_dir: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    assert "fsdp=True" in lora_run.log and "LoRA r=4" in lora_run.log
    ms = metrics(lora_run.run_dir)
    assert [m["step"] for m in ms] == list(range(1, MAX_STEPS + 1))
    assert ms[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # B = 0 at the start: the policy is the reference
    assert ms[-1]["loss"] < ms[0]["loss"] - 0.01, [m["loss"] for m in ms]

    final = lora_run.run_dir / "checkpoints" / "final"
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    merged = AutoModelForCausalLM.from_pretrained(final)  # what sample / evaluate / generate load
    merged_sd = merged.state_dict()
    assert merged_sd.keys() == base_sd.keys()
    adapted = {k for k in base_sd if k.endswith(("q_proj.weight", "v_proj.weight", "up_proj.weight"))}
    assert len(adapted) == 3 * base.config.num_hidden_layers
    for k in base_sd:
        if k in adapted:
            assert not torch.allclose(merged_sd[k], base_sd[k], rtol=0, atol=1e-6), k
        else:
            assert torch.equal(merged_sd[k], base_sd[k]), k  # frozen: never updated

    config = json.loads((final / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["base_model_name_or_path"] == os.path.abspath(demo_model_dir)
    peft_model = PeftModel.from_pretrained(base, final / "adapter")
    ids = torch.randint(3, 4000, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = peft_model(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        with peft_model.disable_adapter():
            plain = peft_model(input_ids=ids).logits
    assert torch.allclose(got, want, rtol=0, atol=1e-4), (got - want).abs().max()
    assert (want - plain).abs().max() > 1e-2  # the adapter does change the model

    # The resumable state: the adapters and their optimizer state, no frozen weight.
    import torch.distributed.checkpoint as dcp

    state = next((lora_run.run_dir / "state").glob("step-*"))
    keys = [k for k in dcp.FileSystemReader(str(state)).read_metadata().state_dict_metadata if k.startswith("model.")]
    assert keys and all(".lora_A." in k or ".lora_B." in k for k in keys), keys[:5]


def test_lora_kill_resume_matches_an_uninterrupted_run(lora_run: SimpleNamespace):
    ref = metrics(lora_run.run_dir)
    run_dir = lora_run.tmp / "killed"
    kill_at_first_state(lora_run.spec, run_dir)
    resume_step = complete_states(run_dir)[-1]
    assert resume_step < MAX_STEPS and not (run_dir / "outputs.json").exists()

    out = finish(torchrun(lora_run.spec, run_dir))
    assert f"resuming from step-{resume_step:06d}" in out
    ms = metrics(run_dir)
    assert [m["step"] for m in ms] == list(range(1, MAX_STEPS + 1))
    for m, r in zip(ms, ref):
        for key in ("loss", "total_loss", "kl", "grad_norm"):
            assert m[key] == pytest.approx(r[key], rel=1e-5, abs=1e-6), (m["step"], key)
        assert m["lr"] == pytest.approx(r["lr"], rel=1e-9)
    for name in ("adapter/adapter_model.safetensors", "model.safetensors"):
        got = load_file(run_dir / "checkpoints" / "final" / name)
        want = load_file(lora_run.run_dir / "checkpoints" / "final" / name)
        assert got.keys() == want.keys()
        assert [k for k in got if not torch.allclose(got[k], want[k], rtol=1e-5, atol=1e-6)] == []


def train_once(spec: Path, run_dir: Path) -> tuple[str, dict]:
    r = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr, metrics(run_dir)[0]


def test_next_iteration_continues_the_adapter_or_adapts_the_merged_model(lora_run: SimpleNamespace,
                                                                         demo_model_dir: Path):
    final = lora_run.run_dir / "checkpoints" / "final"
    base = os.path.abspath(demo_model_dir)  # how the adapter records a local base model
    one_step = {"max_steps": 1, "save_every": 1, "warmup_steps": 0, "beta": 0.1}
    cont = lora_spec(lora_run.tmp, str(final), lora_run.data, {"continue_adapter": True}, **one_step)
    fresh = lora_spec(lora_run.tmp, str(final), lora_run.data, {"continue_adapter": False}, **one_step)
    log_c, m_c = train_once(cont, lora_run.tmp / "continued")
    log_f, m_f = train_once(fresh, lora_run.tmp / "fresh")

    assert f"continuing the adapter of {final} on its base model {base}" in log_c
    assert f"reading the weights of {base}" in log_c
    assert f"reading the weights of {final}" in log_f
    # the same function at the start: base + adapter = the merged model
    assert m_c["loss"] == pytest.approx(m_f["loss"], abs=1e-4)
    # the reference is the adapted model with its adapters off: the base, or the merged model
    assert abs(m_c["kl"]) > 1e-4 and m_f["kl"] == pytest.approx(0.0, abs=1e-6)
    bases = [json.loads((lora_run.tmp / d / "checkpoints/final/adapter/adapter_config.json").read_text())
             ["base_model_name_or_path"] for d in ("continued", "fresh")]
    assert bases == [base, os.path.abspath(final)]


def test_a_target_module_the_model_lacks_exits_as_bad_input(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "gen", n_queries=2)
    spec = lora_spec(tmp_path, str(demo_model_dir), data, {"target_modules": ["q_proj", "c_attn"]})
    r = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir",
                        str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "training.lora.target_modules" in r.stderr and "'c_attn' is not a linear layer" in r.stderr
    assert "Traceback" not in r.stderr
