"""sami_core.logprobs: the prefix-shared and naive log-prob matrices against a direct oracle.

The oracle runs the model on one unpadded sequence prompt_i + y_j at a time and adds up
the log-probs of the response tokens: no padding, no masks, no position-id tricks.
"""

from __future__ import annotations

import logging
import random

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
)

from sami_core import logprobs as lp
from sami_core.logprobs import (
    MatrixBatch,
    logprob_matrix,
    logprob_matrix_naive,
    logprob_matrix_prefix,
    supports_prefix_sharing,
)

VOCAB = 97
TOL = 1e-5  # nats, absolute
# ... plus this much relative to |L|: the implementations compute in different layouts, so
# float32 rounding differs by some ulps, and an ulp grows with |L| (sums over a response
# reach ~40 nats here, where 1e-5 alone is ~3 ulps). Bugs (a wrong mask or positions) move
# L by > 1e-2, far beyond either.
RTOL = 2e-6


def tiny_config(cls=LlamaConfig, attn: str = "sdpa", **overrides):
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        # a larger init than the default 0.02 so that log-probs depend clearly on the
        # context: a wrong mask or wrong positions then moves L by far more than TOL
        initializer_range=0.2, attn_implementation=attn,
    )
    kwargs.update(overrides)
    return cls(**kwargs)


def tiny_model(attn: str = "sdpa", cls=LlamaForCausalLM, config_cls=LlamaConfig, **overrides):
    torch.manual_seed(0)
    return cls(tiny_config(config_cls, attn, **overrides)).float().eval()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("sdpa")


def random_batch(seed: int, B: int, N: int, prompt_len=(1, 12), response_len=(1, 7)) -> MatrixBatch:
    rng = random.Random(seed)

    def toks(lo: int, hi: int) -> list[int]:
        return [rng.randrange(1, VOCAB) for _ in range(rng.randint(lo, hi))]

    batch = MatrixBatch(
        prompt_ids=[[toks(*prompt_len) for _ in range(N)] for _ in range(B)],
        response_ids=[[toks(*response_len) for _ in range(N)] for _ in range(B)],
    )
    batch.response_ids[0][0] = batch.response_ids[0][0][:1]  # a one-token response
    return batch


@torch.no_grad()
def direct(model, batch: MatrixBatch, reduction: str) -> torch.Tensor:
    """The true oracle: one unpadded sequence per (b, i, j)."""
    out = torch.zeros(batch.B, batch.N, batch.N)
    for b in range(batch.B):
        for i, prompt in enumerate(batch.prompt_ids[b]):
            for j, y in enumerate(batch.response_ids[b]):
                logits = model(input_ids=torch.tensor([prompt + y])).logits[0]  # (P+R, V)
                logp = logits.float().log_softmax(-1)
                total = sum(logp[len(prompt) - 1 + k, tok] for k, tok in enumerate(y))
                out[b, i, j] = total / len(y) if reduction == "mean" else total
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def close(a: torch.Tensor, b: torch.Tensor, atol: float = TOL) -> bool:
    """a == b up to float32 rounding: within ``atol + RTOL * max|b|``."""
    return max_diff(a, b) <= atol + RTOL * b.abs().max().item()


# ---------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("N", [2, 3, 4])
def test_prefix_equals_naive_equals_direct(llama, N, reduction):
    batch = random_batch(seed=N, B=2, N=N)
    with torch.no_grad():
        prefix = logprob_matrix_prefix(llama, batch, reduction=reduction)
        naive = logprob_matrix_naive(llama, batch, reduction=reduction)
    oracle = direct(llama, batch, reduction)
    assert prefix.shape == naive.shape == (2, N, N)
    assert prefix.dtype == naive.dtype == torch.float32
    assert close(prefix, naive)
    assert close(prefix, oracle)
    assert close(naive, oracle)
    # the check has teeth: rows (constitutions) and columns (responses) really differ
    assert (oracle[:, :, None, :] - oracle[:, None, :, :]).abs().amax(dim=(1, 2, 3)).min() > 1e-2


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_implementations(attn):
    model = tiny_model(attn)
    batch = random_batch(seed=7, B=2, N=3)
    with torch.no_grad():
        prefix = logprob_matrix_prefix(model, batch)
        naive = logprob_matrix_naive(model, batch)
        full = logprob_matrix_naive(model, batch, full_logits=True)
    oracle = direct(model, batch, "mean")
    assert close(prefix, oracle)
    assert close(naive, oracle)
    assert close(full, oracle)


def test_mean_is_sum_over_length(llama):
    batch = random_batch(seed=3, B=1, N=3)
    with torch.no_grad():
        mean = logprob_matrix_prefix(llama, batch, reduction="mean")
        total = logprob_matrix_prefix(llama, batch, reduction="sum")
    lengths = torch.tensor([float(len(y)) for y in batch.response_ids[0]])
    torch.testing.assert_close(mean[0] * lengths[None, :], total[0], rtol=RTOL, atol=TOL)


@pytest.mark.parametrize("impl", ["prefix", "naive"])
def test_padding_safe(llama, impl):
    """Adding a query with longer prompts and responses leaves a query's rows unchanged."""
    small = random_batch(seed=11, B=1, N=3, prompt_len=(2, 5), response_len=(1, 3))
    big = random_batch(seed=12, B=1, N=3, prompt_len=(15, 25), response_len=(8, 12))
    both = MatrixBatch(small.prompt_ids + big.prompt_ids, small.response_ids + big.response_ids)
    flipped = MatrixBatch(big.prompt_ids + small.prompt_ids, big.response_ids + small.response_ids)
    with torch.no_grad():
        alone = logprob_matrix(llama, small, impl=impl)
        padded = logprob_matrix(llama, both, impl=impl)
        padded_second = logprob_matrix(llama, flipped, impl=impl)
        pad_id_changed = logprob_matrix(llama, both, impl=impl, pad_token_id=VOCAB - 1)
    assert close(alone[0], padded[0])
    assert close(alone[0], padded_second[1])
    assert close(padded, pad_id_changed)


def test_prefix_layout_by_hand(llama):
    """Mask, position ids and tail for prompts [11 12 13], [21] and responses [31 32], [41 42 43]."""
    batch = MatrixBatch(prompt_ids=[[[11, 12, 13], [21]]], response_ids=[[[31, 32], [41, 42, 43]]])
    seen = {}
    handle = llama.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    try:
        with torch.no_grad():
            logprob_matrix_prefix(llama, batch, pad_token_id=0)
    finally:
        handle.remove()
    # y_j[-1] is never an input; responses are packed after the prompt, prompts left-padded
    assert seen["input_ids"].tolist() == [[11, 12, 13, 31, 41, 42], [0, 0, 21, 31, 41, 42]]
    assert seen["position_ids"].tolist() == [[0, 1, 2, 3, 3, 4], [0, 0, 0, 1, 1, 2]]
    assert seen["logits_to_keep"] == 4  # the last prompt column + 3 response columns
    allowed = torch.tensor(
        [
            [  # row (b=0, i=0): prompt 11 12 13 | y_1: 31 | y_2: 41 42
                [1, 0, 0, 0, 0, 0],
                [1, 1, 0, 0, 0, 0],
                [1, 1, 1, 0, 0, 0],
                [1, 1, 1, 1, 0, 0],
                [1, 1, 1, 0, 1, 0],
                [1, 1, 1, 0, 1, 1],
            ],
            [  # row (b=0, i=1): pad pad 21 | 31 | 41 42; padding sees itself only
                [1, 0, 0, 0, 0, 0],
                [0, 1, 0, 0, 0, 0],
                [0, 0, 1, 0, 0, 0],
                [0, 0, 1, 1, 0, 0],
                [0, 0, 1, 0, 1, 0],
                [0, 0, 1, 0, 1, 1],
            ],
        ],
        dtype=torch.bool,
    )[:, None]  # (B*N, 1, L, L)
    expected = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    assert seen["attention_mask"].dtype == torch.float32
    assert torch.equal(seen["attention_mask"], expected)


def test_absolute_position_embeddings():
    """GPT-2 learns absolute positions: wrong position ids in either path would show."""
    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
        bos_token_id=0, eos_token_id=0, attn_implementation="sdpa",
    )
    model = GPT2LMHeadModel(config).eval()
    batch = random_batch(seed=8, B=2, N=3)
    with torch.no_grad():
        prefix = logprob_matrix_prefix(model, batch)
        naive = logprob_matrix_naive(model, batch)
    oracle = direct(model, batch, "mean")
    assert close(naive, oracle)
    assert close(prefix, oracle)
    assert supports_prefix_sharing(model)


def test_prefix_token_count(llama):
    """Prefix sharing runs B*N rows of max(P) + max_b sum_j (R_bj - 1) tokens."""
    batch = random_batch(seed=5, B=2, N=4)
    seen = []
    handle = llama.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape), with_kwargs=True
    )
    try:
        with torch.no_grad():
            logprob_matrix_prefix(llama, batch)
            logprob_matrix_naive(llama, batch)
    finally:
        handle.remove()
    P = max(len(p) for q in batch.prompt_ids for p in q)
    R = max(len(y) for q in batch.response_ids for y in q)
    S = max(sum(len(y) - 1 for y in q) for q in batch.response_ids)
    assert seen == [(2 * 4, P + S), (2 * 4 * 4, P + R - 1)]


def test_sliding_window_model():
    """A uniform sliding window (Mistral v0.1 style) shorter than the sequences is honoured."""
    model = tiny_model("sdpa", cls=MistralForCausalLM, config_cls=MistralConfig, sliding_window=5)
    batch = random_batch(seed=9, B=2, N=3, prompt_len=(4, 10), response_len=(3, 8))
    with torch.no_grad():
        prefix = logprob_matrix_prefix(model, batch)
        naive = logprob_matrix_naive(model, batch)
    oracle = direct(model, batch, "mean")
    assert close(naive, oracle)
    assert close(prefix, oracle)
    # and the window matters here: without it the values differ
    model.config.sliding_window = None
    with torch.no_grad():
        unwindowed = logprob_matrix_naive(model, batch)
    assert max_diff(unwindowed, oracle) > 1e-3


# ---------------------------------------------------------------------------------------
# gradients


def test_gradients_flow_and_match():
    model = tiny_model("sdpa")
    batch = random_batch(seed=21, B=2, N=3)
    weights = torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(0))  # every cell counts differently
    grads = {}
    for impl in ("prefix", "naive"):
        model.zero_grad(set_to_none=True)
        L = logprob_matrix(model, batch, impl=impl)
        assert L.requires_grad
        (L * weights).sum().backward()
        grads[impl] = {name: p.grad.clone() for name, p in model.named_parameters()}
    for name, g in grads["prefix"].items():
        assert torch.isfinite(g).all(), name
        assert g.abs().max() > 0, name
        torch.testing.assert_close(g, grads["naive"][name], rtol=1e-4, atol=TOL, msg=name)


def test_second_backward_fails_loudly(llama):
    """The backward reuses the logits' memory; a retained second pass must not be silently wrong."""
    batch = random_batch(seed=2, B=1, N=2)
    L = logprob_matrix_prefix(llama, batch)
    L.sum().backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace"):
        L.sum().backward()
    llama.zero_grad(set_to_none=True)


@pytest.mark.parametrize("chunk_rows", [None, 4])  # one chunk, or chunks that split the positions
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("producer", ["matmul", "tanh"])  # in-place buffer reuse vs a fresh one
def test_target_logprobs_against_log_softmax(dtype, producer, chunk_rows, monkeypatch):
    if chunk_rows is not None:
        monkeypatch.setattr(lp, "_chunk_rows", lambda flat: chunk_rows)
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 8, generator=g, requires_grad=True)
    weight = torch.randn(8, 4000, generator=g)
    pos = torch.tensor([0, 0, 0, 4, 7, 14, 14, 2])  # repeated positions, as for y_j[0] in prefix
    targets = torch.tensor([1, 2, 1, 3999, 0, 5, 6, 7])
    upstream = torch.randn(len(pos), generator=g)

    def logits_of(h):
        z = h.to(dtype) @ weight.to(dtype)  # (3, 5, V)
        return z if producer == "matmul" else 3 * torch.tanh(z / 3)

    out = lp._target_logprobs(logits_of(hidden), pos, targets)
    (out * upstream).sum().backward()
    grad, hidden.grad = hidden.grad, None
    ref = logits_of(hidden).float().log_softmax(-1).reshape(-1, 4000)[pos, targets]
    (ref * upstream).sum().backward()
    assert out.dtype == torch.float32
    tol = TOL if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(out, ref, rtol=RTOL if dtype == torch.float32 else 0, atol=tol)
    torch.testing.assert_close(grad, hidden.grad, rtol=1e-3 if dtype == torch.float32 else 5e-2, atol=tol)


@pytest.fixture
def gloo_world_of_one(tmp_path):
    """A one-process gloo group, so that fully_shard runs in this process."""
    import torch.distributed as dist

    if not dist.is_available() or dist.is_initialized():
        pytest.skip("torch.distributed unavailable or already initialised")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_fsdp2_fully_shard(gloo_world_of_one, mixed_precision):
    """Only the model's own forward is called, so FSDP2 (per layer, then root) just works."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    reference = tiny_model("sdpa")
    model = tiny_model("sdpa")
    kwargs = {"mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16)} if mixed_precision else {}
    for layer in model.model.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)
    # the mask and the check's tolerance follow the dtype FSDP2 computes in
    expected_dtype = torch.bfloat16 if mixed_precision else torch.float32
    assert lp._compute_dtype(model, torch.device("cpu")) == expected_dtype
    batch = random_batch(seed=13, B=2, N=3)
    L = logprob_matrix(model, batch)  # auto: the one-off check runs through FSDP too
    assert supports_prefix_sharing(model)
    with torch.no_grad():
        expected = logprob_matrix_naive(reference, batch)
    assert L.dtype == torch.float32
    assert close(L, expected, atol=5e-2 if mixed_precision else TOL)
    L.sum().backward()
    for name, p in model.named_parameters():
        grad = p.grad.full_tensor()
        assert torch.isfinite(grad).all() and grad.abs().max() > 0, name


# ---------------------------------------------------------------------------------------
# dispatch


class RejectsMask4D(LlamaForCausalLM):
    """A causal LM that only takes 2D padding masks, like many older architectures."""

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        if attention_mask is not None and attention_mask.ndim == 4:
            raise ValueError("4D attention masks are not supported")
        return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


class IgnoresPositionIds(LlamaForCausalLM):
    """A causal LM that numbers positions by column, whatever position_ids say."""

    def forward(self, input_ids=None, position_ids=None, **kwargs):
        return super().forward(input_ids=input_ids, **kwargs)


def test_supports_prefix_sharing(llama):
    assert supports_prefix_sharing(llama)
    assert supports_prefix_sharing(tiny_model("eager"))
    assert not supports_prefix_sharing(tiny_model(cls=RejectsMask4D))
    assert not supports_prefix_sharing(tiny_model(cls=IgnoresPositionIds))
    # hybrid sliding/full attention cannot be expressed by one 4D mask
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hybrid = tiny_model(
        cls=Qwen2ForCausalLM, config_cls=Qwen2Config, use_sliding_window=True, sliding_window=4,
        max_window_layers=1,
    )
    assert set(hybrid.config.layer_types) == {"full_attention", "sliding_attention"}
    assert not supports_prefix_sharing(hybrid)
    with pytest.raises(ValueError, match="mixed attention layer types"):
        logprob_matrix_prefix(hybrid, random_batch(seed=0, B=1, N=2))


def test_auto_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(lp, "_warned_fallback", False)
    model = tiny_model(cls=RejectsMask4D)
    batch = random_batch(seed=4, B=1, N=2)
    with caplog.at_level(logging.WARNING, logger="sami_core.logprobs"):
        with torch.no_grad():
            first = logprob_matrix(model, batch)
            second = logprob_matrix(model, batch)
            naive = logprob_matrix_naive(model, batch)
    warnings = [r for r in caplog.records if "falling back" in r.getMessage()]
    assert len(warnings) == 1
    assert "4D attention masks are not supported" in warnings[0].getMessage()  # says why
    assert max_diff(first, naive) == 0 and max_diff(second, naive) == 0
    with pytest.raises(ValueError, match="4D"):
        logprob_matrix(model, batch, impl="prefix")


def test_auto_uses_prefix_when_supported(llama):
    batch = random_batch(seed=6, B=2, N=3)
    with torch.no_grad():
        auto = logprob_matrix(llama, batch)
        prefix = logprob_matrix_prefix(llama, batch)
    assert max_diff(auto, prefix) == 0


def test_check_restores_training_mode():
    model = tiny_model("sdpa").train()
    model.model.layers[0].eval()  # mixed modes survive the check unchanged
    assert supports_prefix_sharing(model)
    assert model.training and model.model.layers[1].training and not model.model.layers[0].training


# ---------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    "prompts, responses, match",
    [
        ([], [], "prompt_ids"),
        ([[[1], [2]]], [[[3], [4]], [[5], [6]]], "response_ids has 2 queries"),
        ([[[1], [2]], [[3]]], [[[4], [5]], [[6], [7]]], r"prompt_ids\[1\] has 1 sequences, expected N=2"),
        ([[[1], [2]]], [[[3], [4], [5]]], r"response_ids\[0\] has 3 sequences"),
        ([[[1], [2]]], [[[3], []]], r"response_ids\[0\]\[1\] is empty"),
        ([[[1], []]], [[[3], [4]]], r"prompt_ids\[0\]\[1\] is empty"),
        ([[]], [[]], "at least one prompt"),
    ],
)
def test_bad_batches(prompts, responses, match):
    with pytest.raises(ValueError, match=match):
        MatrixBatch(prompts, responses)


def test_bad_reduction_and_impl(llama):
    batch = random_batch(seed=1, B=1, N=2)
    for fn in (logprob_matrix_prefix, logprob_matrix_naive, logprob_matrix):
        with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum'\), got 'avg'"):
            fn(llama, batch, reduction="avg")
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'prefix', 'naive'\), got 'fast'"):
        logprob_matrix(llama, batch, impl="fast")


def test_batch_properties():
    batch = random_batch(seed=0, B=3, N=2)
    assert (batch.B, batch.N) == (3, 2)
