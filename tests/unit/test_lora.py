"""LoRA (``training.lora``) and the vLLM engine options: spec validation naming the field,
the merge formula on a hand-computed case, adapters on the demo model's architecture, and
how an experiment passes both into its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sami_core.errors import SpecError
from sami_core.experiment_spec import validate_experiment
from sami_core.pipeline import expand
from sami_core.spec import LoraSpec, ModelSpec, spec_fingerprint, validate_spec
from sami_core.stages import vllm_engine_kwargs


def train(**training) -> dict:
    return {"data": {"path": "runs/gen"}, "training": training}


@pytest.mark.parametrize("spec, expected", [
    (train(lora={"r": 0}), "training.lora.r: Input should be greater than or equal to 1"),
    (train(lora={"alpha": 0}), "training.lora.alpha: Input should be greater than 0"),
    (train(lora={"dropout": 1.0}), "training.lora.dropout: Input should be less than 1"),
    (train(lora={"target_modules": []}), "training.lora.target_modules: is empty"),
    (train(lora={"target_modules": ["q proj"]}), "training.lora.target_modules: 'q proj' is not a module name"),
    (train(lora={"rank": 8}), "training.lora.rank: unknown key"),
    ({**train(lora={}, beta=0.1), "reference_model": {"path": "demo"}},
     "reference_model: with training.lora the KL reference is the model with its adapters disabled"),
])
def test_bad_lora_specs_name_the_field(spec: dict, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec("train", spec)
    assert expected in str(err.value)


def test_lora_defaults_and_old_fingerprints() -> None:
    t = validate_spec("train", train(lora={}))
    assert (t.training.lora.r, t.training.lora.alpha, t.training.lora.target_modules) == (16, 32.0, "all-linear")
    assert not t.training.lora.continue_adapter
    full = validate_spec("train", train())
    assert full.training.lora is None and "lora" not in full.model_dump()["training"]
    # a spec without lora dumps (and so fingerprints) as before the field existed
    assert spec_fingerprint(full) == spec_fingerprint(validate_spec("train", train(lora=None)))


def test_merge_adds_the_scaled_low_rank_update() -> None:
    """W' = W + (alpha / r) · B A, written out for r = 1, a 2×2 weight and alpha / r = 2."""
    W = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    A = torch.tensor([[1.0, -1.0]])  # (r=1, in=2)
    B = torch.tensor([[0.5], [2.0]])  # (out=2, r=1)
    p = "base_model.model.layer"
    full = {f"{p}.base_layer.weight": W, f"{p}.base_layer.bias": torch.tensor([7.0, 8.0]),
            f"{p}.lora_A.default.weight": A, f"{p}.lora_B.default.weight": B,
            "base_model.model.norm.weight": torch.ones(2)}
    from sami_core.lora import merged_state_dict

    out = merged_state_dict(full, {p: 2.0})
    assert sorted(out) == ["layer.bias", "layer.weight", "norm.weight"]
    # B A = [[0.5, -0.5], [2, -2]]; doubled and added to W
    assert torch.equal(out["layer.weight"], torch.tensor([[2.0, 1.0], [7.0, 0.0]]))
    assert torch.equal(out["layer.bias"], torch.tensor([7.0, 8.0]))


@pytest.fixture
def demo_arch(demo_model_dir: Path):
    from transformers import AutoConfig, AutoModelForCausalLM

    pytest.importorskip("peft")
    return lambda: AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(demo_model_dir))


def test_adapters_are_the_only_trainable_parameters_and_start_at_the_base(demo_arch) -> None:
    from sami_core.lora import add_adapter, scalings

    spec = LoraSpec(r=2, alpha=6, target_modules=["q_proj", "down_proj"])
    a, b = add_adapter(demo_arch(), spec, seed=3), add_adapter(demo_arch(), spec, seed=3)
    trainable = {n: p for n, p in a.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    assert len(trainable) == 2 * 2 * a.config.num_hidden_layers  # A and B of 2 layers per block
    for n, p in trainable.items():
        if ".lora_B." in n:
            assert not p.any()  # B = 0: the adapted model starts as the base model
        else:  # A is drawn from the seed: the same spec, the same adapter
            assert torch.equal(p, dict(b.named_parameters())[n])
    assert set(scalings(a).values()) == {3.0}


def test_a_target_the_model_lacks_is_refused_naming_the_field(demo_arch) -> None:
    from sami_core.lora import add_adapter

    with pytest.raises(SpecError) as err:
        add_adapter(demo_arch(), LoraSpec(target_modules=["q_proj", "query_key_value"]), seed=0)
    assert err.value.errors[0][0] == "training.lora.target_modules"
    assert "'query_key_value' is not a linear layer" in str(err.value) and "q_proj" in str(err.value)


def test_an_experiment_passes_lora_and_drops_the_separate_reference() -> None:
    exp = validate_experiment({"iterations": 2, "training": {"beta": 0.1, "lora": {"r": 8,
                                                                                  "continue_adapter": True}}})
    trains = [p for p in expand(exp, "runs") if p.kind == "train"]
    assert [t.spec["training"]["lora"]["r"] for t in trains] == [8, 8]
    assert all(t.spec.get("reference_model") is None for t in trains)
    assert trains[1].spec["model"]["path"] == str(Path("runs/train-1/checkpoints/final"))
    with pytest.raises(SpecError, match="training.lora.continue_adapter: every iteration trains from the base"):
        validate_experiment({"train_from": "base", "training": {"lora": {"continue_adapter": True}}})


# ---- vLLM engine options -----------------------------------------------------------------
@pytest.mark.parametrize("gen, expected", [
    ({"tensor_parallel_size": 0}, "generation.tensor_parallel_size: Input should be greater than or equal to 1"),
    ({"gpu_memory_utilization": 1.5}, "generation.gpu_memory_utilization: Input should be less than or equal to 1"),
    ({"gpu_memory_utilization": 0}, "generation.gpu_memory_utilization: Input should be greater than 0"),
    ({"max_model_len": 0}, "generation.max_model_len: Input should be greater than or equal to 1"),
    ({"backend": "transformers", "max_model_len": 4096},
     "max_model_len: a vLLM engine option, but backend is 'transformers'"),
])
def test_bad_vllm_options_name_the_field(gen: dict, expected: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_spec("generate", {"generation": gen})
    assert expected in str(err.value)


def test_vllm_options_reach_the_engine_kwargs() -> None:
    g = validate_spec("sample", {"generation": {"backend": "vllm", "tensor_parallel_size": 8,
                                                "gpu_memory_utilization": 0.85, "max_model_len": 4096}})
    kwargs = vllm_engine_kwargs("/models/llama-70b", ModelSpec(path="x", dtype="bfloat16"), g.generation)
    assert kwargs == {"model": "/models/llama-70b", "dtype": "bfloat16", "trust_remote_code": False,
                      "tensor_parallel_size": 8, "gpu_memory_utilization": 0.85, "max_model_len": 4096}
    # unset options are left to vLLM (and left out of the dumped spec)
    plain = validate_spec("sample", {}).generation
    assert vllm_engine_kwargs("m", ModelSpec(path="m"), plain) == {"model": "m", "dtype": "auto",
                                                                  "trust_remote_code": False}
    assert "tensor_parallel_size" not in plain.model_dump()


def test_an_experiment_gives_its_vllm_options_to_every_generating_job() -> None:
    exp = validate_experiment({"generation": {"tensor_parallel_size": 4, "max_model_len": 2048},
                               "evaluation": {}})
    jobs = [p for p in expand(exp, "runs") if p.kind in ("generate", "sample", "evaluate")]
    assert {p.kind for p in jobs} == {"generate", "sample", "evaluate"}
    for p in jobs:
        gen = p.spec["generation"]
        assert (gen["tensor_parallel_size"], gen["max_model_len"]) == (4, 2048), p.key
        assert "gpu_memory_utilization" not in gen
