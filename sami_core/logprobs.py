"""The SAMI log-prob matrix L[b, i, j] = log p(y_j | x_b, c_i).

For every query x_b of a batch we have N prompts (prompt_i = constitution c_i + query
x_b, already tokenized) and N responses y_1..y_N (tokenized; the caller appends EOS when
wanted). The matrix holds, for every pair (i, j),

    L[b, i, j] = (1 / Z_bj) * sum_{k=0}^{R_bj - 1} log p(y_bj[k] | prompt_bi, y_bj[:k])

with Z_bj = R_bj = len(y_bj) for reduction="mean" (the default, as in the paper) and
Z_bj = 1 for reduction="sum". The SAMI loss (sami_core/loss.py) is a symmetric InfoNCE
over this matrix with the diagonal as labels.

Two exact ways to compute it:

* naive (`logprob_matrix_naive`): N^2 sequences prompt_i + y_j per query. Every prompt
  is recomputed N times: N^2 * (P + R) tokens per query for prompts of ~P tokens and
  responses of ~R tokens. Kept as the test oracle and as the fallback for models that
  reject a 4D attention mask.
* prefix-shared (`logprob_matrix_prefix`): one sequence per (b, i),
  [prompt_i, y_1, ..., y_N], with a 4D attention mask in which every y_j token sees
  prompt_i and its own earlier tokens only, and position ids that restart at
  len(prompt_i) for every y_j. Each y_j then sees exactly what it sees in the naive
  sequence prompt_i + y_j, so the log-probs are the same, but the prompt is computed
  once: N * P + N^2 * R tokens per query. With P ~ 400 and R ~ 80 that is 2.7x fewer
  tokens at N = 4 (and 1.7x at N = 2). Only the model's own forward is called (with
  input_ids, attention_mask, position_ids, logits_to_keep), so it runs unchanged under
  FSDP2 (`fully_shard`) and activation checkpointing.

Layout shared by both paths (why `logits_to_keep` is enough): prompts are left-padded
so that every prompt ends in the same column P - 1; response tokens follow from column
P. The last token of a response is only ever a target, never an input, so it is dropped
from the input. The positions that score response tokens are then a contiguous tail of
every row, and `logits_to_keep=tail` projects only those positions onto the vocabulary.
In the prefix layout the last prompt position predicts y_j[0] for all j (one vocab
projection instead of N), and y_j[k - 1]'s position predicts y_j[k].

Log-probs are computed in float32 as logit[target] - logsumexp(logits) by a small
autograd function that keeps one (rows, T, V) tensor alive instead of a log_softmax
copy plus gradient temporaries (see _TargetLogprobs and benchmarks/logprob_matrix.py).
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

REDUCTIONS = ("mean", "sum")
IMPLS = ("auto", "prefix", "naive")
# Attention implementations that apply a user-supplied additive 4D float mask as is.
# flash_attention_* only understand 2D padding masks; flex_attention wants a BlockMask.
_MASK_4D_ATTN_IMPLS = ("eager", "sdpa")


@dataclass
class MatrixBatch:
    """B queries, each with N tokenized prompts and N tokenized responses (ragged lengths).

    prompt_ids[b][i] = tokens of prompt_i (constitution c_i + query x_b),
    response_ids[b][j] = tokens of y_j (non-empty). Validated on construction.
    """

    prompt_ids: list[list[list[int]]]  # (B, N, P_bi) token ids, ragged
    response_ids: list[list[list[int]]]  # (B, N, R_bj) token ids, ragged, each non-empty

    def __post_init__(self) -> None:
        if len(self.prompt_ids) == 0:
            raise ValueError("prompt_ids: the batch is empty (need at least one query)")
        if len(self.response_ids) != len(self.prompt_ids):
            raise ValueError(
                f"response_ids has {len(self.response_ids)} queries but prompt_ids has "
                f"{len(self.prompt_ids)}"
            )
        n = len(self.prompt_ids[0])
        if n == 0:
            raise ValueError("prompt_ids[0]: a query needs at least one prompt (N >= 1)")
        for name, field in (("prompt_ids", self.prompt_ids), ("response_ids", self.response_ids)):
            for b, seqs in enumerate(field):
                if len(seqs) != n:
                    raise ValueError(
                        f"{name}[{b}] has {len(seqs)} sequences, expected N={n} "
                        "(ragged N: every query needs N prompts and N responses)"
                    )
                for k, seq in enumerate(seqs):
                    if len(seq) == 0:
                        raise ValueError(f"{name}[{b}][{k}] is empty")

    @property
    def B(self) -> int:
        return len(self.prompt_ids)

    @property
    def N(self) -> int:
        return len(self.prompt_ids[0])


# ---------------------------------------------------------------------------------------
# helpers


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def _device(model: torch.nn.Module) -> torch.device:
    # Under FSDP2 parameters are DTensors; .device is the local shard's device.
    return next(model.parameters()).device


def _compute_dtype(model: torch.nn.Module, device: torch.device) -> torch.dtype:
    """dtype the model computes in: autocast's, FSDP2's mixed-precision param_dtype, or the params'.

    Used for the 4D mask (0 / dtype min) and for the tolerance of the one-off check. A
    mask in a wider dtype still works: FSDP2 casts float inputs to param_dtype (float32
    min becomes -inf in bf16, harmless since every row attends at least to itself).
    """
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    get_fsdp_state = getattr(model, "_get_fsdp_state", None)  # FSDP2 root; no public getter
    if callable(get_fsdp_state):
        param_dtype = getattr(getattr(get_fsdp_state(), "_mp_policy", None), "param_dtype", None)
        if param_dtype is not None:
            return param_dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _uniform_sliding_window(model: torch.nn.Module) -> int | None:
    """The sliding window every layer uses (Mistral v0.1 style), None if attention is full.

    Raises ValueError for hybrid models (some layers full, some sliding/chunked), whose
    per-layer masks a single user-supplied 4D mask cannot express.
    """
    config = getattr(model, "config", None)
    layer_types = getattr(config, "layer_types", None)
    window = getattr(config, "sliding_window", None)
    if getattr(config, "use_sliding_window", True) is False:
        window = None
    if getattr(config, "attention_chunk_size", None):
        raise ValueError("chunked attention is not supported by the prefix-shared path")
    if layer_types is not None:
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return None
        if kinds == {"sliding_attention"} and window:
            return int(window)
        raise ValueError(f"mixed attention layer types {sorted(kinds)} are not supported")
    return int(window) if window else None


def _forward_tail(model, input_ids, attention_mask, position_ids, keep: int) -> torch.Tensor:
    """The model's logits at the last `keep` positions of every row (keep=0: all)."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits  # (rows, keep, V)
    if keep and logits.shape[1] != keep:  # a model that ignores logits_to_keep
        logits = logits[:, -keep:]
    return logits


# Autograd nodes that produce the logits without saving them, so that the backward of
# _TargetLogprobs may overwrite them in place with their own gradient. Anything else (a
# softcapping tanh saves its output, for example) gets a fresh gradient buffer.
_INPLACE_SAFE_PRODUCERS = {"UnsafeViewBackward0", "MmBackward0", "AddmmBackward0", "ViewBackward0"}


class _TargetLogprobs(torch.autograd.Function):
    """out[m] = log_softmax(logits[pos_m])[target_m], in float32, lean on memory.

    Forward: logsumexp in float32, chunk by chunk of positions (no full-size float32
    temporary), and logit[target] - lse. Saves only the logits. Backward:
        d logits[p, v] = sum_{m: pos_m = p} g_m * (1[v = target_m] - softmax(logits[p])[v])
    written into one buffer, which is the saved float32 logits themselves when nothing
    else saved them (a second backward through the graph then fails autograd's version
    check instead of going wrong). Peak (rows, T, V) tensors over forward + backward:
    1 (float32) or 2 (half logits) versus 4-5 for logsumexp + indexing with autograd.
    """

    @staticmethod
    def forward(ctx, logits, pos, targets, inplace_ok):
        flat = logits.reshape(-1, logits.shape[-1])  # (rows*T, V)
        chunk = _chunk_rows(flat)
        lse = torch.empty(flat.shape[0], dtype=torch.float32, device=flat.device)  # (rows*T,)
        for s in range(0, flat.shape[0], chunk):
            lse[s : s + chunk] = torch.logsumexp(flat[s : s + chunk].float(), dim=-1)
        ctx.save_for_backward(logits, pos, targets)
        ctx.inplace_ok = inplace_ok
        return flat[pos, targets].float() - lse[pos]  # (M,)

    @staticmethod
    def backward(ctx, grad_out):
        logits, pos, targets = ctx.saved_tensors
        flat = logits.reshape(-1, logits.shape[-1])  # (rows*T, V)
        weight = torch.zeros(flat.shape[0], dtype=torch.float32, device=flat.device)
        weight.index_add_(0, pos, grad_out.float())  # (rows*T,) sum of the g_m at each position
        chunk = _chunk_rows(flat)
        if ctx.inplace_ok and flat.dtype == torch.float32:
            grad = flat  # overwrite the saved logits: their last use
            for s in range(0, flat.shape[0], chunk):
                block = grad[s : s + chunk]  # (chunk, V)
                torch.mul(torch.softmax(block, dim=-1), -weight[s : s + chunk, None], out=block)
            grad.index_put_((pos, targets), grad_out.float(), accumulate=True)
        else:
            # The one-hot term is added in float32 before rounding to the logits' dtype:
            # g * (1 - p) rounds badly when computed as bf16(-g * p) + g for p near 1.
            grad = torch.empty_like(flat)  # (rows*T, V) in the logits' dtype
            order = torch.argsort(pos)
            pos_s, targets_s, g_s = pos[order], targets[order], grad_out[order].float()  # (M,)
            starts = torch.arange(0, flat.shape[0] + chunk, chunk, device=pos.device)
            bounds = torch.searchsorted(pos_s, starts).tolist()  # pairs of chunk k: bounds[k]:bounds[k+1]
            for k, s in enumerate(range(0, flat.shape[0], chunk)):
                block = torch.softmax(flat[s : s + chunk].float(), dim=-1)  # (chunk, V)
                block.mul_(-weight[s : s + chunk, None])
                a, b = bounds[k], bounds[k + 1]
                block.index_put_((pos_s[a:b] - s, targets_s[a:b]), g_s[a:b], accumulate=True)
                grad[s : s + chunk] = block
        return grad.view(logits.shape), None, None, None


def _chunk_rows(flat: torch.Tensor) -> int:
    """Rows per chunk of the elementwise passes over (rows*T, V).

    CPU: ~2 MiB of float32, so that the several passes of logsumexp / softmax run from
    cache (3x faster than one pass over the whole tensor at V = 32k). GPU: ~64 MiB,
    few kernel launches.
    """
    budget = 2**24 if flat.is_cuda else 2**19  # float32 elements
    return max(1, budget // flat.shape[-1])


def _target_logprobs(logits: torch.Tensor, flat_pos: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[pos, target] in float32 for M (position, target) pairs.

    logits (rows, T, V); flat_pos (M,) indexes rows*T; targets (M,). See _TargetLogprobs.
    """
    producer = type(logits.grad_fn).__name__ if logits.grad_fn is not None else None
    inplace_ok = logits._base is None and producer in _INPLACE_SAFE_PRODUCERS
    return _TargetLogprobs.apply(logits, flat_pos, targets, inplace_ok)  # (M,)


def _reduce(token_lp: torch.Tensor, owner: torch.Tensor, lengths: torch.Tensor, reduction: str, shape) -> torch.Tensor:
    """Sum token log-probs per (b, i, j) cell; divide by the response length for "mean"."""
    total = token_lp.new_zeros(lengths.numel()).index_add(0, owner, token_lp)  # (B*N*N,)
    if reduction == "mean":
        total = total / lengths
    return total.view(shape)  # (B, N, N)


# ---------------------------------------------------------------------------------------
# naive: N^2 sequences per query


def logprob_matrix_naive(
    model,
    batch: MatrixBatch,
    *,
    reduction: str = "mean",
    pad_token_id: int = 0,
    full_logits: bool = False,
) -> torch.Tensor:
    """L (B, N, N) float32 from N^2 padded sequences prompt_i + y_j per query.

    Row r = (b, i, j): [pad..., prompt_bi, y_bj[:-1], pad...] with a 2D attention mask
    and position ids counting from 0 at the first prompt token. Vocab logits are
    computed at the response-scoring tail only (`logits_to_keep`), unless
    full_logits=True: logits and a full log_softmax at every position, the textbook
    method, kept as the benchmark's reference.
    """
    _check_reduction(reduction)
    B, N = batch.B, batch.N
    device = _device(model)
    P = max(len(p) for q in batch.prompt_ids for p in q)
    R = max(len(y) for q in batch.response_ids for y in q)
    L = P + R - 1  # the last response token is a target only
    keep = 0 if full_logits else R  # columns P-1 .. P+R-2 score y[0] .. y[R-1]
    T = L if full_logits else R  # logits positions per row
    offset = P - 1 if full_logits else 0  # tail column of y[0]'s prediction

    ids, attn, pos = [], [], []
    flat_pos, targets, owner, lengths = [], [], [], []
    for b in range(B):
        for i in range(N):
            prompt = batch.prompt_ids[b][i]
            left = P - len(prompt)
            for j in range(N):
                y = batch.response_ids[b][j]
                right = R - len(y)
                r = (b * N + i) * N + j
                ids.append([pad_token_id] * left + list(prompt) + list(y[:-1]) + [pad_token_id] * right)
                attn.append([0] * left + [1] * (len(prompt) + len(y) - 1) + [0] * right)
                pos.append([0] * left + list(range(len(prompt) + len(y) - 1)) + [0] * right)
                flat_pos.extend(r * T + offset + k for k in range(len(y)))
                targets.extend(y)
                owner.extend([r] * len(y))
                lengths.append(len(y))

    input_ids = torch.tensor(ids, dtype=torch.long, device=device)  # (B*N*N, L)
    attention_mask = torch.tensor(attn, dtype=torch.long, device=device)  # (B*N*N, L)
    position_ids = torch.tensor(pos, dtype=torch.long, device=device)  # (B*N*N, L)
    flat_pos_t = torch.tensor(flat_pos, dtype=torch.long, device=device)  # (M,)
    targets_t = torch.tensor(targets, dtype=torch.long, device=device)  # (M,)
    owner_t = torch.tensor(owner, dtype=torch.long, device=device)  # (M,)
    lengths_t = torch.tensor(lengths, dtype=torch.float32, device=device)  # (B*N*N,)

    logits = _forward_tail(model, input_ids, attention_mask, position_ids, keep)  # (B*N*N, T, V)
    if full_logits:
        logprobs = logits.float().log_softmax(dim=-1)  # (B*N*N, L, V)
        token_lp = logprobs.reshape(-1, logprobs.shape[-1])[flat_pos_t, targets_t]  # (M,)
    else:
        token_lp = _target_logprobs(logits, flat_pos_t, targets_t)  # (M,)
    return _reduce(token_lp, owner_t, lengths_t, reduction, (B, N, N))


# ---------------------------------------------------------------------------------------
# prefix-shared: one sequence per (query, prompt)


def logprob_matrix_prefix(
    model,
    batch: MatrixBatch,
    *,
    reduction: str = "mean",
    pad_token_id: int = 0,
) -> torch.Tensor:
    """L (B, N, N) float32 from B*N sequences [prompt_i, y_1[:-1], ..., y_N[:-1]].

    Columns: prompts left-padded to end at column P - 1, then the N response blocks
    packed back to back, right-padded to the longest row (S columns). A 4D additive
    mask (0 = may attend, dtype min = may not) lets a prompt token see earlier prompt
    tokens, and a y_j token see the prompt and earlier tokens of y_j only; every token
    sees itself, so padding rows stay finite. Position ids of y_j restart at
    len(prompt_i). `logits_to_keep = S + 1` projects only columns P - 1 .. P + S - 1.
    Must equal `logprob_matrix_naive` (tests/unit/test_logprobs.py).
    """
    _check_reduction(reduction)
    window = _uniform_sliding_window(model)
    B, N = batch.B, batch.N
    device = _device(model)
    dtype = _compute_dtype(model, device)
    P = max(len(p) for q in batch.prompt_ids for p in q)
    S = max(sum(len(y) - 1 for y in q) for q in batch.response_ids)  # response columns
    L = P + S
    T = S + 1  # scoring tail: the last prompt column, then the response columns

    ids, pos, seg = [], [], []  # seg: -1 padding, 0 prompt, j + 1 response block j
    flat_pos, targets, owner, lengths = [], [], [], []
    for b in range(B):
        responses = batch.response_ids[b]
        for i in range(N):
            prompt = batch.prompt_ids[b][i]
            left = P - len(prompt)
            row_ids = [pad_token_id] * left + list(prompt)
            row_pos = [0] * left + list(range(len(prompt)))
            row_seg = [-1] * left + [0] * len(prompt)
            r = b * N + i
            t = 1  # tail index of the next response column
            for j, y in enumerate(responses):
                n = len(y) - 1
                row_ids += list(y[:-1])
                row_pos += list(range(len(prompt), len(prompt) + n))
                row_seg += [j + 1] * n
                # y[0] is scored at the last prompt column (tail index 0), y[k] at y[k-1]'s.
                flat_pos.append(r * T)
                flat_pos.extend(r * T + t + k for k in range(n))
                targets.extend(y)
                owner.extend([r * N + j] * len(y))
                t += n
            right = L - len(row_ids)
            ids.append(row_ids + [pad_token_id] * right)
            pos.append(row_pos + [0] * right)
            seg.append(row_seg + [-1] * right)
        lengths.extend(float(len(y)) for _ in range(N) for y in responses)

    input_ids = torch.tensor(ids, dtype=torch.long, device=device)  # (B*N, L)
    position_ids = torch.tensor(pos, dtype=torch.long, device=device)  # (B*N, L)
    seg_t = torch.tensor(seg, dtype=torch.long, device=device)  # (B*N, L)
    flat_pos_t = torch.tensor(flat_pos, dtype=torch.long, device=device)  # (M,)
    targets_t = torch.tensor(targets, dtype=torch.long, device=device)  # (M,)
    owner_t = torch.tensor(owner, dtype=torch.long, device=device)  # (M,)
    lengths_t = torch.tensor(lengths, dtype=torch.float32, device=device)  # (B*N*N,)

    col = torch.arange(L, device=device)
    seg_q, seg_k = seg_t[:, :, None], seg_t[:, None, :]  # (B*N, L, 1), (B*N, 1, L)
    allowed = (col[None, :] <= col[:, None])[None]  # (1, L, L) causal
    allowed = allowed & (seg_q >= 0) & (seg_k >= 0) & ((seg_k == 0) | (seg_k == seg_q))  # (B*N, L, L)
    if window is not None:  # HF's sliding window, in (virtual) positions: q - k < window
        allowed = allowed & (position_ids[:, :, None] - position_ids[:, None, :] < window)
    allowed = allowed | torch.eye(L, dtype=torch.bool, device=device)  # every row sees itself
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)  # (B*N, L, L)
    mask = mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]  # (B*N, 1, L, L)

    logits = _forward_tail(model, input_ids, mask, position_ids, T)  # (B*N, T, V)
    token_lp = _target_logprobs(logits, flat_pos_t, targets_t)  # (M,)
    return _reduce(token_lp, owner_t, lengths_t, reduction, (B, N, N))


# ---------------------------------------------------------------------------------------
# dispatch

# model -> {attn implementation: result of the one-off check}
_PREFIX_CHECKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_warned_fallback = False


def supports_prefix_sharing(model) -> bool:
    """Whether `logprob_matrix_prefix` is exact for this model (cached per model).

    Choice: a static gate, then a tiny one-off numeric check, rather than a list of
    architectures, so that any causal LM that honours a 4D mask and position ids works.
    - static gate: the attention implementation must apply an additive 4D mask as is
      ("eager" or "sdpa"; flash/flex do not), and attention must be full or the same
      sliding window in every layer (hybrid sliding/full or chunked models build
      per-layer masks that one 4D mask cannot replace);
    - numeric check: prefix vs naive on a 2-prompt, 2-response batch of a few tokens, in
      eval mode, no grad. A model that raises on a 4D mask, reads positions from the
      mask, or drops position_ids fails it. Tolerance: 1e-4 (float32), 5e-2 (half).
    Under FSDP every rank must call this at the same point (it runs a forward), which
    `logprob_matrix` does since all ranks compute L for their batch each step.
    """
    return _prefix_check(model)[0]


def _prefix_check(model) -> tuple[bool, str]:
    """(supported, reason if not), cached per model and attention implementation."""
    attn = getattr(getattr(model, "config", None), "_attn_implementation", None)
    cache = _PREFIX_CHECKS.setdefault(model, {})
    if attn not in cache:
        cache[attn] = _run_prefix_check(model, attn)
        if not cache[attn][0]:
            logger.info("prefix sharing off for %s: %s", type(model).__name__, cache[attn][1])
    return cache[attn]


def _run_prefix_check(model, attn) -> tuple[bool, str]:
    if attn not in _MASK_4D_ATTN_IMPLS:
        return False, f"attention implementation {attn!r} does not take an additive 4D mask"
    try:
        _uniform_sliding_window(model)
    except ValueError as err:
        return False, str(err)
    vocab = getattr(model.config, "vocab_size", None) or model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)

    def toks(n: int) -> list[int]:
        return torch.randint(1, min(vocab, 1000), (n,), generator=g).tolist()

    batch = MatrixBatch(prompt_ids=[[toks(6), toks(3)]], response_ids=[[toks(4), toks(2)]])
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no dropout: the two paths must agree
    try:
        with torch.no_grad():
            fast = logprob_matrix_prefix(model, batch)
            slow = logprob_matrix_naive(model, batch)
    except Exception as err:  # a model that rejects the 4D mask or position ids
        return False, f"the model rejected the prefix layout: {err!r}"
    finally:
        for m, training in modes.items():
            m.training = training
    dtype = _compute_dtype(model, _device(model))
    tol = 1e-4 if dtype in (torch.float32, torch.float64) else 5e-2
    diff = (fast - slow).abs().max().item()
    if not diff <= tol:  # also catches NaN
        return False, f"prefix and naive differ by {diff:.3g} > {tol:g} on a tiny batch"
    return True, ""


def logprob_matrix(
    model,
    batch: MatrixBatch,
    *,
    impl: str = "auto",
    reduction: str = "mean",
    pad_token_id: int = 0,
) -> torch.Tensor:
    """L (B, N, N) float32, differentiable: L[b, i, j] = log p(y_j | x_b, c_i).

    impl="prefix" or "naive" forces a path; "auto" uses prefix sharing when
    `supports_prefix_sharing(model)` and otherwise falls back to naive (logging a
    warning once per process).
    """
    global _warned_fallback
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _check_reduction(reduction)
    if impl == "auto":
        supported, reason = _prefix_check(model)
        impl = "prefix" if supported else "naive"
        if not supported and not _warned_fallback:
            _warned_fallback = True
            logger.warning(
                "%s: no prefix-shared log-prob matrix (%s); falling back to the naive "
                "N^2 computation, about N times slower on long prompts",
                type(model).__name__,
                reason,
            )
    if impl == "prefix":
        return logprob_matrix_prefix(model, batch, reduction=reduction, pad_token_id=pad_token_id)
    return logprob_matrix_naive(model, batch, reduction=reduction, pad_token_id=pad_token_id)
