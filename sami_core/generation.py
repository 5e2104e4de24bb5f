"""Batched text generation: load a causal LM offline-first, then generate completions.

`generate_texts` is the one generator the stages use (SAMI data generation, evaluation
sampling, the local judge). It yields ``(prompt_index, completion_text,
n_completion_tokens)`` in prompt order, one batch at a time, so a caller can append to a
JSONL file as results arrive and resume later.

Contracts:
- Prompts are left-padded into batches of ``config.batch_size``. A prompt gets the
  tokenizer's special tokens (e.g. ``<s>``) unless it already starts with the BOS text,
  as a chat-template rendering does, so BOS is never doubled.
- ``temperature == 0`` is greedy decoding; otherwise plain sampling with temperature and
  nucleus (top-p) only: top-k, repetition penalties and the like from the model's
  ``generation_config.json`` are switched off, so runs mean the same across models.
- Sampling is reproducible: each batch is seeded from ``config.seed`` and the absolute
  index of its first prompt, in a forked RNG (the caller's RNG state is untouched). The
  random draws of a batch depend on which prompts share it, so a resumed run reproduces
  an uninterrupted one when it restarts at a batch boundary with the same batch size:
  pass the remaining prompts with ``start_index`` set to the first one's index.
- A completion ends at the first EOS (the model's and the tokenizer's EOS ids) or after
  ``max_new_tokens``. The text is decoded without special tokens and is not stripped;
  ``n_completion_tokens`` counts the generated tokens before that EOS.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sami_core.errors import ModelLoadError, ModelUnreachable, is_unreachable

OnBatch = Callable[[int, int], None]  # (prompts done, prompts in total)
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}  # fmt: skip


@dataclass
class GenerationConfig:
    """How to decode. Validated on construction."""

    temperature: float = 1.0  # 0 = greedy; else the softmax temperature
    top_p: float = 1.0  # nucleus sampling mass in (0, 1]; 1 = off
    max_new_tokens: int = 128  # completion length cap
    batch_size: int = 16  # prompts per forward batch
    seed: int = 0  # sampling seed (see the module docstring for what it reproduces)
    ignore_eos: bool = False  # always generate max_new_tokens (benchmarks, fixed-length runs)

    def __post_init__(self) -> None:
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy); got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1]; got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {self.batch_size}")


def available_backends() -> list[str]:
    """Generation backends usable here: always "hf" (transformers); "vllm" if installed."""
    backends = ["hf"]
    if importlib.util.find_spec("vllm") is not None:
        backends.append("vllm")
    return backends


# ---- loading ----------------------------------------------------------------------------
def _how_to_fix(path_or_id: str, is_path: bool) -> str:
    demo = "build the offline demo model with `python -m sami_core make-demo-model DIR` and use DIR"
    if is_path:
        return f"To fix: check the path, or {demo}, or give a Hugging Face model id."
    return (
        f"To fix: download {path_or_id!r} first where the Hugging Face hub is reachable (e.g. "
        f"`hf download {path_or_id}`; it is then read from the local cache offline), or {demo}."
    )


def _looks_like_path(s: str) -> bool:
    """Hub ids are "name" or "org/name"; anything else with a separator is a path."""
    return s.startswith(("/", ".", "~")) or s.endswith("/") or s.count("/") > 1 or "\\" in s


def _resolve_dtype(dtype: str, device: str):
    import torch

    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be 'auto' or one of {', '.join(sorted(_DTYPES))}; got {dtype!r}")
    return getattr(torch, _DTYPES[dtype])


def load_model_and_tokenizer(
    path_or_id: str,
    *,
    dtype: str = "auto",
    device: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer for generation, offline-first.

    A local directory is loaded as is; a hub id comes from the local cache when
    ``HF_HUB_OFFLINE=1`` (or without network). ``device=None`` picks CUDA when present
    (placed by accelerate with ``device_map="auto"``, so a large model may span GPUs)
    and the CPU otherwise; ``dtype="auto"`` is bfloat16 on CUDA and float32 on CPU.
    The model is in eval mode; the tokenizer pads on the left and uses EOS as its pad
    token when it has none. Raises `ModelLoadError` naming `path_or_id` and the fix.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = str(path_or_id)
    local = Path(name).expanduser()
    is_path = local.exists() or _looks_like_path(name)
    if is_path and not local.is_dir():
        what = "is a file, not a model directory" if local.exists() else "does not exist"
        raise ModelLoadError(f"model path {name!r} {what}. {_how_to_fix(name, True)}")
    source = str(local) if is_path else name

    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        device_map = "auto" if device == "cuda" else None
    else:
        device_map = None if device == "cpu" else device
    torch_dtype = _resolve_dtype(dtype, device)

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=torch_dtype, device_map=device_map, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, ImportError) as err:  # hub errors subclass OSError
        reason = str(err).strip().splitlines()[0].rstrip(".") if str(err).strip() else type(err).__name__
        cls = ModelUnreachable if not is_path and is_unreachable(err) else ModelLoadError
        raise cls(f"could not load model {name!r}: {reason}. {_how_to_fix(name, is_path)}") from err
    if device_map is None and device != "cpu":
        model.to(device)
    model.eval()

    tokenizer.padding_side = "left"  # completions start at the same column in a batch
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ModelLoadError(f"the tokenizer of {name!r} has neither a pad nor an EOS token; it cannot batch")
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---- generation -------------------------------------------------------------------------
def batch_seed(seed: int, first_index: int) -> int:
    """The RNG seed of the batch whose first prompt has absolute index `first_index`."""
    digest = hashlib.sha256(f"sami-generation:{seed}:{first_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % (2**63)


def _eos_ids(model, tokenizer) -> list[int]:
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


def _encode(tokenizer, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids per prompt; special tokens are added unless the prompt starts with BOS."""
    bos = tokenizer.bos_token
    return [
        tokenizer(p, add_special_tokens=not (bos and p.startswith(bos)))["input_ids"]
        for p in prompts
    ]


def _left_pad(rows: list[list[int]], pad_id: int):
    """Input ids and attention mask, both (B, T), real tokens flush right."""
    import torch

    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        if r:
            ids[b, T - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[b, T - len(r) :] = 1
    return ids, mask


def _hf_generate_kwargs(config: GenerationConfig, eos_ids: list[int], pad_id: int) -> dict:
    kwargs = dict(
        max_new_tokens=config.max_new_tokens,
        eos_token_id=eos_ids or None,
        pad_token_id=pad_id,
        num_beams=1,
        repetition_penalty=1.0,  # neutralise sampling tweaks a checkpoint may ship
        no_repeat_ngram_size=0,
    )
    if config.ignore_eos:
        kwargs["min_new_tokens"] = config.max_new_tokens  # EOS is masked until the cap
    if config.temperature == 0:
        # Greedy. The neutral values keep transformers from warning about sampling flags
        # inherited from the checkpoint's generation_config.
        kwargs.update(do_sample=False, temperature=1.0, top_p=1.0, top_k=50)
    else:
        kwargs.update(do_sample=True, temperature=config.temperature, top_p=config.top_p, top_k=0)
    return kwargs


def _until_eos(row: list[int], eos_ids: list[int]) -> list[int]:
    for i, tok in enumerate(row):
        if tok in eos_ids:
            return row[:i]
    return row


def generate_texts(
    model,
    tokenizer,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    on_batch: OnBatch | None = None,
    start_index: int = 0,
) -> Iterator[tuple[int, str, int]]:
    """Yield ``(start_index + i, completion, n_completion_tokens)`` for each prompt i, in order.

    Batches of ``config.batch_size`` prompts are generated one after another; after each
    batch's results have been consumed, ``on_batch(done, len(prompts))`` is called.
    """
    import torch

    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load it with load_model_and_tokenizer")
    eos_ids = _eos_ids(model, tokenizer)
    kwargs = _hf_generate_kwargs(config, eos_ids, tokenizer.pad_token_id)
    device = next(model.parameters()).device  # with device_map="auto": where the embeddings are
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    total = len(prompts)
    for start in range(0, total, config.batch_size):
        batch = list(prompts[start : start + config.batch_size])
        ids, mask = _left_pad(_encode(tokenizer, batch), tokenizer.pad_token_id)  # (B, T)
        with torch.random.fork_rng(devices=cuda_devices), torch.inference_mode():
            torch.manual_seed(batch_seed(config.seed, start_index + start))
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kwargs)
        new = out[:, ids.shape[1] :].tolist()  # (B, <= max_new_tokens): the completions
        for b, row in enumerate(new):
            tokens = _until_eos(row, eos_ids)
            yield start_index + start + b, tokenizer.decode(tokens, skip_special_tokens=True), len(tokens)
        if on_batch is not None:
            on_batch(start + len(batch), total)


def generate_texts_vllm(
    model: str | Any,
    prompts: Sequence[str],
    config: GenerationConfig,
    *,
    on_batch: OnBatch | None = None,
    start_index: int = 0,
    **llm_kwargs: Any,
) -> Iterator[tuple[int, str, int]]:
    """The same yields as `generate_texts`, from vLLM (a path/id, or a ready `vllm.LLM`).

    Optional and never required: vLLM is not a dependency and needs CUDA, so this is not
    exercised by the test suite here (no GPU, no vllm); check it on a GPU node with vllm
    installed. Differences: each prompt gets its own seed (from ``config.seed`` and its
    absolute index), so samples do not depend on batching; results are yielded in chunks
    of ``config.batch_size`` (set it large, e.g. 256, to let vLLM batch well).
    """
    from vllm import LLM, SamplingParams  # lazy: optional dependency

    llm = LLM(model=str(model), seed=config.seed, **llm_kwargs) if isinstance(model, (str, Path)) else model
    tokenizer = llm.get_tokenizer()
    eos_id = tokenizer.eos_token_id
    greedy = config.temperature == 0
    total = len(prompts)
    for start in range(0, total, config.batch_size):
        batch = list(prompts[start : start + config.batch_size])
        # Token ids rather than text, so BOS is handled exactly as in generate_texts.
        inputs = [{"prompt_token_ids": ids} for ids in _encode(tokenizer, batch)]
        params = [
            SamplingParams(
                temperature=0.0 if greedy else config.temperature,
                top_p=1.0 if greedy else config.top_p,
                max_tokens=config.max_new_tokens,
                ignore_eos=config.ignore_eos,
                seed=batch_seed(config.seed, start_index + start + i),
                skip_special_tokens=True,
            )
            for i in range(len(batch))
        ]
        outputs = llm.generate(inputs, params, use_tqdm=False)
        for i, request in enumerate(outputs):
            completion = request.outputs[0]
            n = len(completion.token_ids)
            if n and completion.finish_reason == "stop" and completion.token_ids[-1] == eos_id:
                n -= 1  # count tokens before EOS, as generate_texts does
            yield start_index + start + i, completion.text, n
        if on_batch is not None:
            on_batch(start + len(batch), total)
