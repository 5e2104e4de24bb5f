"""Every model family under the real training recipe: ONE torchrun launch, 2 processes,
FSDP2 with gloo on CPU, that trains a tiny Llama, Mistral, Mixtral, Qwen2 and Gemma in turn
(tests/families_fsdp.py: `SamiTrainer` itself, 2 optimizer steps each, activation
checkpointing on) and then, per family:

- FSDP2 wrapped every decoder layer (the family's own block class, as many as the config
  has layers) and the root, and every parameter is a sharded DTensor;
- the final checkpoint loads with `from_pretrained` as the family's class and holds exactly
  the weights gathered from the trained shards (tied embeddings stay tied: Gemma), and
  every parameter moved from the initial weights;
- Mixtral: every expert of every layer (their gate/up and down projections) and the router
  changed in training (AdamW without weight decay leaves a weight whose gradient is zero
  exactly where it was), so the routed experts get gradients through FSDP2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sami_core.rundir import RunDir
from tests.families import FAMILIES, save_tiny_model
from tests.families_fsdp import MAX_STEPS
from tests.integration.test_train_torchrun import finish
from tests.training_data import make_training_data

pytestmark = pytest.mark.integration

MODEL_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "mixtral": "MixtralForCausalLM",
                 "qwen2": "Qwen2ForCausalLM", "gemma": "GemmaForCausalLM"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> Path:
    """ROOT with models/FAMILY (initial), runs/FAMILY (trained by the one torchrun launch)."""
    root = tmp_path_factory.mktemp("families")
    tokenizer = AutoTokenizer.from_pretrained(demo_model_dir)
    for family in FAMILIES:
        save_tiny_model(family, tokenizer, root / "models" / family)
    make_training_data(root / "data")
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tests.families_fsdp", str(root), *FAMILIES]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo)}
    proc = subprocess.Popen(cmd, env=env, cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    finish(proc, timeout=600)  # on a timeout, torchrun and both ranks are killed
    return root


@pytest.mark.parametrize("family", FAMILIES)
def test_fsdp2_wraps_every_decoder_layer(trained: Path, family: str):
    report = json.loads((trained / "runs" / family / "fsdp.json").read_text())
    block = MODEL_CLASSES[family].replace("ForCausalLM", "DecoderLayer")
    assert report["layer_classes"] == [f"FSDP{block}"]  # fully_shard applied to the family's blocks
    assert report["n_layers"] == report["n_config_layers"] == 2
    assert report["layers_sharded"] and report["root_sharded"] and report["all_params_dtensor"]
    # every 2-D weight is split between the 2 ranks along its first dimension
    for name, (full, local) in report["shards"].items():
        if len(full) >= 2:
            assert local[0] * 2 == full[0] and local[1:] == full[1:], name
    metrics = RunDir(trained / "runs" / family).read_metrics()
    assert [m["step"] for m in metrics] == list(range(1, MAX_STEPS + 1))
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in metrics)


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_loads_with_the_trained_weights(trained: Path, family: str):
    run = trained / "runs" / family
    initial = AutoModelForCausalLM.from_pretrained(trained / "models" / family).state_dict()
    model = AutoModelForCausalLM.from_pretrained(run / "checkpoints" / "final")
    assert type(model).__name__ == MODEL_CLASSES[family]
    loaded = model.state_dict()
    gathered = torch.load(run / "trained.pt", weights_only=True)  # the full state dict of the trained shards
    assert loaded.keys() == gathered.keys() == initial.keys()
    for name, value in gathered.items():
        assert torch.allclose(loaded[name], value, rtol=0, atol=1e-7), name
        assert not torch.allclose(value, initial[name], rtol=0, atol=1e-6), f"{name} did not train"
    if model.config.tie_word_embeddings:  # Gemma: the head is still the embedding after FSDP2
        assert torch.equal(gathered["lm_head.weight"], gathered["model.embed_tokens.weight"])


def test_mixtral_every_expert_and_the_router_train(trained: Path):
    initial = AutoModelForCausalLM.from_pretrained(trained / "models" / "mixtral").state_dict()
    trained_sd = torch.load(trained / "runs" / "mixtral" / "trained.pt", weights_only=True)
    n_experts = 4
    expert_params = [n for n in trained_sd if ".mlp.experts." in n]
    assert len(expert_params) == 2 * 2  # gate_up_proj and down_proj in each of the 2 layers
    for name in expert_params:
        assert trained_sd[name].shape[0] == n_experts
        for e in range(n_experts):
            change = (trained_sd[name][e] - initial[name][e]).abs().max().item()
            assert change > 1e-5, f"{name}[{e}]: expert {e} got no gradient"
    for layer in range(2):
        router = f"model.layers.{layer}.mlp.gate.weight"
        assert (trained_sd[router] - initial[router]).abs().max() > 1e-5
