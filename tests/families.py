"""Tiny random-weight models of every family the workbench claims, built offline.

Each family is its transformers config class at a tiny size (hidden 32, 2 layers, 4 heads,
2 key/value heads), with the demo model's tokenizer (byte-level BPE, vocabulary 4096) so
that nothing is downloaded. The shapes are the family's own (Mixtral's routed experts,
Qwen2's attention biases, Gemma's scaled embeddings and tied head, Mistral's sliding
window), so what breaks for a family breaks here too. `instruct_tokenizer` gives the
tokenizer a chat template in the style of the family's instruct models (written for
these tests: the turn markers of each format, with the same rules about a system turn),
for the checks of chat prompts.

Used by tests/unit/test_families.py (log-prob matrix, chat prompts, checkpoints) and
tests/integration/test_families_fsdp.py (one torchrun launch that trains every family
under FSDP2; its ranks run tests/families_fsdp.py).
"""

from __future__ import annotations

from pathlib import Path

FAMILIES = ("llama", "mistral", "mixtral", "qwen2", "gemma")

_SIZES = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    # a larger init than the default 0.02 so that log-probs depend clearly on the
    # context: a wrong mask or wrong positions moves L far beyond the tolerances
    initializer_range=0.2,
)
# Per family: the config class and what differs from the shared sizes.
_FAMILY_CONFIGS = {
    "llama": ("LlamaConfig", {}),
    # a window shorter than the test sequences, so that the sliding-window mask is exercised
    "mistral": ("MistralConfig", {"sliding_window": 16}),
    "mixtral": ("MixtralConfig", {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "gemma": ("GemmaConfig", {"head_dim": 8}),
}

# Chat templates in the style of each family's instruct models. Mistral/Mixtral and Gemma
# instruct templates refuse a system turn (the workbench then folds the constitution into
# the user turn); Llama 3 and Qwen2 (ChatML) take it.
_RAISE_ON_SYSTEM = "{%- if message['role'] == 'system' %}{{ raise_exception('no system role') }}{%- endif %}"
CHAT_TEMPLATES = {
    "llama": (
        "{{- bos_token }}{%- for message in messages %}"
        "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
    ),
    "mistral": (
        "{{- bos_token }}{%- for message in messages %}" + _RAISE_ON_SYSTEM +
        "{%- if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{%- else %}{{ ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
    ),
    "qwen2": (
        "{%- for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    ),
    "gemma": (
        "{{- bos_token }}{%- for message in messages %}" + _RAISE_ON_SYSTEM +
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\n' + message['content'] + '<end_of_turn>\n' }}"
        "{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
    ),
}
CHAT_TEMPLATES["mixtral"] = CHAT_TEMPLATES["mistral"]
# What the prompt for the next assistant turn ends with, per family.
GENERATION_PROMPT_ENDS = {"llama": "<|start_header_id|>assistant<|end_header_id|>\n\n", "mistral": "[/INST]",
                          "mixtral": "[/INST]", "qwen2": "<|im_start|>assistant\n", "gemma": "<start_of_turn>model\n"}


def tiny_config(family: str, tokenizer, **overrides):
    """The family's config at the tiny size, with the tokenizer's vocabulary and special ids."""
    import transformers

    cls_name, extra = _FAMILY_CONFIGS[family]
    kwargs = dict(_SIZES, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)
    kwargs.update(overrides)
    return getattr(transformers, cls_name)(**kwargs)


def tiny_model(family: str, tokenizer, seed: int = 0, attn: str = "sdpa", **overrides):
    """A random-weight float32 model of the family, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, tokenizer, **overrides)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=torch.float32).eval()


def instruct_tokenizer(tokenizer, family: str):
    """A copy of `tokenizer` with the family's chat template (an instruct variant)."""
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = CHAT_TEMPLATES[family]
    return tok


def save_tiny_model(family: str, tokenizer, out_dir: Path, seed: int = 0) -> Path:
    """A Hugging Face model directory (weights, config, tokenizer) of the tiny model."""
    model = tiny_model(family, tokenizer, seed=seed)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return Path(out_dir)
