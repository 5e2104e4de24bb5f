"""LoRA adapters for the training recipe, through peft.

A LoRA layer computes ``W x + (alpha / r) · B A x`` with the base weight ``W`` (out, in)
frozen and only ``A`` (r, in) and ``B`` (out, r) trained; ``B`` starts at zero, so step 0
is the base model. The recipe (:mod:`sami_core.train`) wraps the model here before it
shards it, so the adapters train under FSDP2 like the full model; the KL reference is the
same model with its adapters switched off (:class:`WithoutAdapters`).

A checkpoint holds two things: the adapter in peft format (``adapter/``: its config, with
the base model it was trained on, and its weights) and the merged model in Hugging Face
format, ``W' = W + (alpha / r) · B A`` per adapted layer (:func:`merged_state_dict`),
which the sample, evaluate and generate stages load as any other checkpoint.

peft is an optional dependency (``pip install 'sami-workbench[lora]'``); it is imported
only when ``training.lora`` is set.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sami_core.contract import ADAPTER_DIR
from sami_core.errors import ModelLoadError, SpecError
from sami_core.spec import LoraSpec

ADAPTER_NAME = "default"  # peft's name for a model's one adapter
_PEFT_PREFIX = "base_model.model."  # what peft puts before the wrapped model's parameter names


def _field_error(path: str, reason: str) -> SpecError:
    """Bad input found while building the model: the message names the field, as a spec error does."""
    return SpecError(errors=[(path, reason)])


def _require_peft():
    try:
        import peft
    except ImportError:
        raise SpecError("training.lora needs the peft package, which is not installed; install it with "
                        "`pip install 'sami-workbench[lora]'` (or `pip install peft`), or set training.lora: null "
                        "for full fine-tuning", path="training.lora") from None
    return peft


def linear_names(model: torch.nn.Module) -> list[str]:
    """The last name parts of the model's linear layers (what target_modules names), sorted."""
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})


def check_targets(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Every named target is a linear layer of the model: SpecError naming the field otherwise."""
    if spec.target_modules == "all-linear":
        return
    have = linear_names(model)
    missing = [t for t in spec.target_modules if t.rsplit(".", 1)[-1] not in have]
    if missing:
        raise _field_error("training.lora.target_modules", f"{missing[0]!r} is not a linear layer of "
                           f"{type(model).__name__}; its linear layers are {', '.join(have)} (or use all-linear)")


def add_adapter(model: torch.nn.Module, spec: LoraSpec, seed: int):
    """``model`` wrapped as a peft model with a fresh LoRA adapter: only the adapter's
    parameters require grad. A is drawn from an RNG seeded with ``seed`` (forked: the
    caller's RNG is untouched), so runs of one spec start from the same adapter; B is 0.
    Works on a model on the meta device too (the adapter is then on meta as well)."""
    peft = _require_peft()
    check_targets(model, spec)
    config = peft.LoraConfig(
        r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout, bias="none",
        target_modules=spec.target_modules if spec.target_modules == "all-linear" else list(spec.target_modules),
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        wrapped = peft.get_peft_model(model, config)
    lora_layers = [(n, m) for n, m in wrapped.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    if not lora_layers:
        raise _field_error("training.lora.target_modules", f"no layer of {type(model).__name__} matches "
                           f"{spec.target_modules}; its linear layers are {', '.join(linear_names(model))}")
    for name, layer in lora_layers:
        if not isinstance(layer.get_base_layer(), torch.nn.Linear):
            raise _field_error("training.lora.target_modules", f"{name} is a "
                               f"{type(layer.get_base_layer()).__name__}, not a linear layer; only linear layers "
                               "take adapters here: name linear ones")
    return wrapped


def adapter_dir(model_path: str | Path) -> Path | None:
    """The ``adapter/`` folder of a LoRA checkpoint made by this recipe, or None."""
    d = Path(model_path) / ADAPTER_DIR
    return d if (d / "adapter_config.json").is_file() else None


def adapter_base(adapter: Path) -> str:
    """The base model (path or hub id) the adapter in ``adapter`` was trained on."""
    try:
        base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model.path: {adapter} holds no readable peft adapter config ({err}); point "
                             "model.path at a LoRA checkpoint, or set training.lora.continue_adapter: false") from None
    if not base:
        raise ModelLoadError(f"model.path: {adapter}/adapter_config.json does not name its base model; set "
                             "training.lora.continue_adapter: false to train a fresh adapter on the merged model")
    return base


def load_adapter_weights(wrapped, adapter: Path) -> None:
    """Copy the weights saved in ``adapter`` into ``wrapped``'s adapter, which must have
    the same layers and shapes (the spec's r and target_modules): SpecError otherwise."""
    peft = _require_peft()
    from safetensors.torch import load_file

    saved = json.loads((adapter / "adapter_config.json").read_text())
    ours = wrapped.peft_config[ADAPTER_NAME]
    if saved.get("r") != ours.r or float(saved.get("lora_alpha", 0)) != float(ours.lora_alpha):
        raise _field_error("training.lora", f"the adapter to continue ({adapter}) has r={saved.get('r')}, "
                           f"alpha={saved.get('lora_alpha')}; the spec asks r={ours.r}, alpha={ours.lora_alpha}: "
                           "give the same, or set continue_adapter: false")
    if sorted(saved.get("target_modules") or []) != sorted(ours.target_modules or []):
        raise _field_error("training.lora.target_modules", f"the adapter to continue ({adapter}) adapts "
                           f"{sorted(saved.get('target_modules') or [])}, the spec "
                           f"{sorted(ours.target_modules or [])}: give the same, or set continue_adapter: false")
    weights = load_file(adapter / "adapter_model.safetensors")
    result = peft.set_peft_model_state_dict(wrapped, weights, adapter_name=ADAPTER_NAME)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in getattr(result, "missing_keys", []) or [] if "lora_" in k]
    if unexpected or missing:
        raise ModelLoadError(f"model.path: the adapter in {adapter} does not fit the model "
                             f"({(unexpected or missing)[0]}); set training.lora.continue_adapter: false")


def scalings(wrapped) -> dict[str, float]:
    """Per adapted layer (its name in the peft model's state dict), the factor alpha / r."""
    peft = _require_peft()
    return {name: float(m.scaling[ADAPTER_NAME]) for name, m in wrapped.named_modules()
            if isinstance(m, peft.tuners.lora.LoraLayer) and ADAPTER_NAME in m.scaling}


def merged_state_dict(full: dict[str, torch.Tensor], scale: dict[str, float]) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged in, from a peft model's full
    state dict: ``W' = W + scale · B A`` (computed in float32, stored in W's dtype), keys as
    the plain model names them (peft's ``base_model.model.`` prefix and ``.base_layer``
    dropped, adapter weights left out). ``scale`` maps each adapted layer's name (as in
    ``full``) to alpha / r."""
    out: dict[str, torch.Tensor] = {}
    for key, value in full.items():
        if ".lora_" in key:
            continue
        name = key.removeprefix(_PEFT_PREFIX).replace(".base_layer.", ".")
        layer, _, leaf = key.rpartition(".base_layer.")
        if leaf == "weight" and layer in scale:
            A = full[f"{layer}.lora_A.{ADAPTER_NAME}.weight"].float()  # (r, in)
            B = full[f"{layer}.lora_B.{ADAPTER_NAME}.weight"].float()  # (out, r)
            value = (value.float() + scale[layer] * (B @ A)).to(value.dtype)  # (out, in)
        out[name] = value
    return out


class WithoutAdapters:
    """The peft model with its adapters switched off, called like a model: the frozen base,
    i.e. the KL reference, without a second copy of the weights."""

    def __init__(self, wrapped) -> None:
        self.wrapped = wrapped

    def __call__(self, *args, **kwargs):
        with self.wrapped.disable_adapter():
            return self.wrapped(*args, **kwargs)

    def __getattr__(self, name: str):  # config, dtype, ...: the model's own
        return getattr(self.wrapped, name)
