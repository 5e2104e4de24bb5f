"""Every model family the workbench claims (tests/families.py: Llama, Mistral, Mixtral,
Qwen2, Gemma), as tiny random-weight models built offline from their transformers configs:

- the prefix-shared log-prob matrix is used (`supports_prefix_sharing`) and equals the
  naive N² one, values and gradients (Mistral with a sliding window shorter than the
  sequences, Mixtral with routed experts);
- FSDP units: `decoder_layers` finds each family's blocks, and still finds them once
  `fully_shard` has renamed their class (FSDP<Name>);
- instruct variants: with the family's chat template (Mistral/Mixtral and Gemma refuse a
  system turn, so the constitution is folded into the user turn) a prompt is built, cut to
  a token budget by the query only, generated from and scored, with one BOS.
The FSDP2 training, checkpoints and Mixtral's experts: tests/integration/test_families_fsdp.py.
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import AutoTokenizer

from sami_core.generation import GenerationConfig, generate_texts, load_model_and_tokenizer
from sami_core.logprobs import MatrixBatch, logprob_matrix_naive, logprob_matrix_prefix, supports_prefix_sharing
from sami_core.prompts import PromptBuilder, build_prompt, use_chat_format
from sami_core.train import decoder_layers, tokenize_rows
from tests.families import FAMILIES, GENERATION_PROMPT_ENDS, instruct_tokenizer, tiny_model

DECODER_LAYERS = {"llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer", "mixtral": "MixtralDecoderLayer",
                  "qwen2": "Qwen2DecoderLayer", "gemma": "GemmaDecoderLayer"}
CONSTITUTION = "1. Summaries should be brief.\n2. Summaries should name the poster's question."
QUERY = "I moved to a new city for work and I have no friends here yet. How do people meet others as adults?"


@pytest.fixture(scope="module")
def tokenizer(demo_model_dir):
    return AutoTokenizer.from_pretrained(demo_model_dir)


def random_batch(vocab: int, seed: int, B: int = 2, N: int = 3) -> MatrixBatch:
    """Prompts of 10-30 tokens (longer than Mistral's test window of 16), responses of 1-8."""
    rng = random.Random(seed)

    def toks(lo: int, hi: int) -> list[int]:
        return [rng.randrange(3, vocab) for _ in range(rng.randint(lo, hi))]

    return MatrixBatch([[toks(10, 30) for _ in range(N)] for _ in range(B)],
                       [[toks(1, 8) for _ in range(N)] for _ in range(B)])


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal up to float32 rounding (the two paths compute in different layouts)."""
    return (a - b).abs().max().item() <= 1e-5 + 2e-6 * b.abs().max().item()


@pytest.mark.parametrize("family", FAMILIES)
def test_prefix_matrix_equals_naive_values_and_gradients(tokenizer, family):
    model = tiny_model(family, tokenizer)
    assert supports_prefix_sharing(model), f"{family}: the prefix-shared path is refused"
    batch = random_batch(len(tokenizer), seed=FAMILIES.index(family))
    model.train()  # the training path: grads through both layouts (no dropout in these configs)
    grads = []
    values = []
    for fn in (logprob_matrix_prefix, logprob_matrix_naive):
        model.zero_grad(set_to_none=True)
        L = fn(model, batch)  # (B, N, N)
        L.sum().backward()
        values.append(L.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    prefix, naive = values
    assert prefix.shape == (2, 3, 3)
    assert close(prefix, naive), f"{family}: prefix and naive differ by {(prefix - naive).abs().max():.3g}"
    # the check has teeth: the constitution (row) changes the log-probs of a response
    assert (naive[:, 0] - naive[:, 1]).abs().max() > 1e-2
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name, g in grads[0].items():
        ref = grads[1][name]
        assert (g - ref).abs().max() <= 1e-4 + 1e-4 * ref.abs().max(), f"{family}: gradient of {name} differs"


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_layers_are_the_family_blocks_before_and_after_sharding(tokenizer, family):
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    model = tiny_model(family, tokenizer)
    layers = decoder_layers(model)
    assert [type(m).__name__ for m in layers] == [DECODER_LAYERS[family]] * model.config.num_hidden_layers
    assert layers == list(model.model.layers)
    # fully_shard renames the class (FSDPLlamaDecoderLayer): the blocks must still be found
    own_group = not dist.is_initialized()
    if own_group:  # a one-process group: fully_shard needs one
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        for layer in layers:
            fully_shard(layer)
        assert decoder_layers(model) == layers
    finally:
        if own_group:
            dist.destroy_process_group()
    assert all(type(m).__name__ == f"FSDP{DECODER_LAYERS[family]}" for m in layers)


def test_decoder_layers_without_no_split_modules_uses_the_block_stack(tokenizer):
    model = tiny_model("llama", tokenizer)
    model._no_split_modules = None  # e.g. remote code that does not name its blocks
    assert decoder_layers(model) == list(model.model.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_instruct_variant_chat_prompt_generates_and_scores(tokenizer, family, tmp_path):
    chat_tok = instruct_tokenizer(tokenizer, family)
    tiny_model(family, tokenizer).save_pretrained(tmp_path)
    chat_tok.save_pretrained(tmp_path)
    model, tok = load_model_and_tokenizer(str(tmp_path), device="cpu")
    assert use_chat_format("auto", tok)  # an instruct variant: the chat template is used

    prompt = build_prompt("summarization", CONSTITUTION, QUERY, tokenizer=tok, chat=True)
    assert CONSTITUTION in prompt and QUERY in prompt
    assert prompt.endswith(GENERATION_PROMPT_ENDS[family])
    if family in ("mistral", "mixtral", "gemma"):  # no system turn: the constitution opens the user turn
        assert "system" not in prompt and prompt.index(CONSTITUTION) < prompt.index(QUERY)

    # a token budget cuts the query, never the constitution or the template
    builder = PromptBuilder("summarization", tok, chat=True, max_prompt_tokens=builder_budget(tok, prompt))
    cut = builder(CONSTITUTION, QUERY)
    assert builder.truncations == 1 and CONSTITUTION in cut and QUERY not in cut
    assert cut.endswith(GENERATION_PROMPT_ENDS[family])
    assert builder.n_tokens(cut) <= builder.max_prompt_tokens

    out = list(generate_texts(model, tok, [prompt, cut], GenerationConfig(temperature=0.0, max_new_tokens=6)))
    assert [i for i, _, _ in out] == [0, 1] and all(0 < n <= 6 for _, _, n in out)

    # training tokenization: one BOS at most (templates that write it are not given a second)
    rows = [{"query_id": "q", "prompts": [prompt, cut], "responses": ["Brief.", "A longer summary."]}]
    [ex] = tokenize_rows(rows, tok, append_eos=True)
    for ids in ex.prompt_ids:
        assert ids[:2] != [tok.bos_token_id] * 2
    with torch.no_grad():
        L = logprob_matrix_prefix(model, MatrixBatch([ex.prompt_ids], [ex.response_ids]), pad_token_id=tok.pad_token_id)
    assert L.shape == (1, 2, 2) and torch.isfinite(L).all()


def builder_budget(tok, prompt: str) -> int:
    """A budget 10 tokens short of the full prompt."""
    return len(tok(prompt, add_special_tokens=False)["input_ids"]) - 10
