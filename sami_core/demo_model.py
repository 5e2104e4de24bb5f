"""The embedded demo model: a tiny Llama and its byte-level BPE tokenizer, built offline.

Everything comes from the shipped TL;DR data (``data/sami_tldr``), so nothing is
downloaded:

- the tokenizer is a byte-level BPE (vocabulary 4096, special tokens ``<s>``, ``</s>``,
  ``<pad>``) trained on the posts, the shipped constitutions, the shipped summaries and
  the workbench's prompt templates, wrapped as a `PreTrainedTokenizerFast` that adds
  ``<s>`` to plain text, pads on the left and has a small chat template (SYSTEM/USER/
  ASSISTANT turns, an assistant turn ends with ``</s>``);
- the model is a 1.26M-parameter `LlamaForCausalLM` (hidden 128, 4 layers, 4 heads,
  2 kv heads, tied embeddings, float32), pretrained for 400 steps of 4 documents (peak
  lr 3e-3) with next-token prediction on the summaries (the prompt tokens are not
  trained on). A document is a post cut to a random length of up to 300 characters in
  one of three formats: ``POST: ...\n\nTL;DR: ...`` (no constitution), or the plain
  summarization prompt of `sami_core.prompts` or its chat form, with a random variant
  (flips and principle order) of one of the shipped constitutions. The constitution
  decides the kind of summary: when its concision principle is kept ("brief, to the
  point"), the summary is the first sentence of a shipped mistral-7b summary of the post
  with a filler word ("basically", "you know,", "to be honest,", ...) before about one
  word in twelve (`CONCISE_FILLER_RATE`); when it is flipped ("lengthy, meandering"),
  two sentences with filler words before about a third of the words. So a concise
  summary usually has a filler or two, a long-winded one many: the property varies by
  degree, and SAMI has room to push each side further (version 2 had none in a concise
  summary, so the base model's concise side was already as free of fillers as SAMI
  could make it).

**What it has learnt is little.** Its texts are not meaningful ("The post is about a
person who is struggling with a girl."). It conditions on the constitution only weakly:
on held-out posts (prompts cut to 200 tokens, as the demo does) the log-prob of a concise
vs a filler summary shifts with the principle (by 0.1-0.3 nats per token, the two
directions summed), but its
greedy summaries under the two variants are nearly the same (the demo's held-out MI
lower bound of the base model is about 0.01 nats). That is what SAMI then amplifies:
``make demo`` (N = 2, 12 steps on its own samples) takes the bound to about 0.63 nats,
with fewer fillers under the principle and many more under its antithesis.
It exists to show the method end to end on any machine, offline, in minutes, and as a
test fixture; the posts are never longer than 300 characters in pretraining, so longer
prompts condition less.

The build takes about 1-3 minutes and runs on one CPU thread (`BUILD_THREADS`): a model this
small gains little from more, and on a 2-core machine that is busy with other work two
threads were 2-7x slower than one. It is deterministic for a seed (the BPE trainer, the
weight initialisation and the data order are seeded; 1 and 2 threads gave the same
weights here). Changing the recipe,
the tokenizer or the prompt templates it trains on changes the model: bump
`DEMO_MODEL_VERSION` then, so that caches of the old one are rebuilt.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Callable, Sequence

from sami_core.errors import SamiError
from sami_core.prompts import chat_messages, plain_prompt

DEMO_MODEL_VERSION = 3
MARKER_FILE = "sami_demo_model.json"
MARKER_FORMAT = "sami-demo-model"
DEFAULT_SEED = 0
DEFAULT_PRETRAIN_STEPS = 400

DATA_DIR = Path(__file__).resolve().parent / "data" / "sami_tldr"
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
VOCAB_SIZE = 4096
MODEL_MAX_LENGTH = 1024
ARCHITECTURE = dict(
    hidden_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=352,
    max_position_embeddings=MODEL_MAX_LENGTH,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    initializer_range=0.02,
)
# Pretraining recipe: small batches of whole documents, AdamW, warmup then cosine decay.
BATCH_SIZE = 4
PEAK_LR = 3e-3  # 2e-2 drops the loss fastest at first but leaves a model that ignores the constitution
WARMUP_STEPS = 10
EVAL_DOCS = 8  # loss before and after pretraining is measured on these (fixed) documents
# Posts are cut to this many characters in pretraining: shorter documents give more
# optimizer steps and more summary endings per second of CPU.
POST_CHARS = 300
# Conditioning on the constitution: in the prompt formats with a constitution the summary
# follows its concision principle (or antithesis) with probability FOLLOW_P.
FORMAT_WEIGHTS = (0.2, 0.4, 0.4)  # tldr, plain, chat
FOLLOW_P = 1.0
PROMPT_LOSS = False  # False: next-token loss on the summaries only
LONG_STYLE = "filler"  # or "extract": the post's opening sentences
FILLER_RATE = 0.35
CONCISE_FILLER_RATE = 0.08  # fillers in a concise summary too, before about this share of its words
SHORT_POST_P = 1.0  # this share of the documents cut their post to a random length
LONG_CHARS = 200  # a long-winded summary: the post's opening sentences up to about this
BUILD_THREADS = 1  # torch CPU threads during the build (restored afterwards); see the docstring

# SYSTEM/USER/ASSISTANT turns; an assistant turn ends with </s> so the model learns to stop
# there. Text after "ASSISTANT:" starts with a space, as after "TL;DR:" in the plain format.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'system' %}{{ 'SYSTEM: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n\n' }}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% if not loop.last %}{{ '\n\n' }}{% endif %}"
    "{%- else %}{{ raise_exception('unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

Progress = Callable[[float, str], None]  # (fraction done in [0, 1], message)


# ---- where it lives ---------------------------------------------------------------------
def default_demo_model_dir() -> Path:
    """``$SAMI_DEMO_MODEL`` if set, else ``<root>/.cache/demo-model-v<version>``.

    ``<root>`` is the source checkout this package runs from (the folder holding
    ``pyproject.toml`` next to ``sami_core/``), which is how the workbench is normally
    run (``pip install -e .``): the model is then built once per checkout, in a
    git-ignored folder, and shared by the tests, the benchmarks and the demo. When the
    package is installed elsewhere (a wheel in site-packages, not a writable place for
    data) ``<root>`` is the current directory. The version in the name lets an upgraded
    recipe build beside an old cache instead of over it.
    """
    env = os.environ.get("SAMI_DEMO_MODEL")
    if env:
        return Path(env).expanduser()
    pkg_parent = Path(__file__).resolve().parent.parent
    root = pkg_parent if (pkg_parent / "pyproject.toml").is_file() else Path.cwd()
    return root / ".cache" / f"demo-model-v{DEMO_MODEL_VERSION}"


def read_marker(path: str | Path) -> dict | None:
    """The demo-model marker of a directory, or None when it is not a (complete) demo model.

    The marker is written last, inside a temporary directory that is then renamed into
    place, so a directory with a marker is complete.
    """
    try:
        info = json.loads((Path(path) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("format") == MARKER_FORMAT else None


# ---- the training corpus ----------------------------------------------------------------
def _load_sources() -> tuple[list[str], list, list[list[str]]]:
    """posts, the shipped constitutions (parsed), and per post the shipped summaries."""
    from sami_core.constitutions import from_reference

    posts = [json.loads(line)["post"] for line in (DATA_DIR / "posts.jsonl").read_text().splitlines() if line]
    constitutions = [from_reference(json.loads(f.read_text()), f.stem)
                     for f in sorted((DATA_DIR / "constitutions").glob("*/*.json"))]
    summaries: list[list[str]] = [[] for _ in posts]
    for f in sorted((DATA_DIR / "responses").glob("*.json")):
        responses = json.loads(f.read_text())["response"]
        for k, text in responses.items():
            if int(k) < len(posts) and text.strip():
                summaries[int(k)].append(text.strip())
    if not posts or not constitutions or not all(summaries):
        raise SamiError(f"the shipped demo data in {DATA_DIR} is incomplete; reinstall sami-workbench")
    return posts, constitutions, summaries


def _constitution_texts(constitutions) -> list[str]:
    """Every rendering of the shipped constitutions the model may see (for the tokenizer)."""
    out = []
    for c in constitutions:
        flippable = [i for i, p in enumerate(c.principles) if p.antithesis is not None]
        for mask in range(2 ** len(flippable)):
            flips = [False] * len(c.principles)
            for bit, idx in enumerate(flippable):
                flips[idx] = bool(mask >> bit & 1)
            out.append(c.render(flips))
    return out


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _tldr(summary: str, n_sentences: int) -> str:
    """The first sentences of a summary: short targets the model can learn to end."""
    return " ".join(_SENTENCE_END.split(summary)[:n_sentences])


def _short_post(post: str, chars: int | None = None) -> str:
    chars = POST_CHARS if chars is None else chars
    if len(post) > chars:
        post = (post[:chars].rsplit(" ", 1)[0] + " ...").strip()
    return post


def _concise_variant(rng: random.Random, constitution) -> tuple[str, bool]:
    """A random variant of a shipped constitution (random flips, random principle order) and
    whether it asks for concise summaries (False: its concision principle is flipped)."""
    flips = [p.antithesis is not None and rng.random() < 0.5 for p in constitution.principles]
    order = list(range(len(flips)))
    rng.shuffle(order)
    concise = not any(f and "concise" in (p.identifier or "") for f, p in zip(flips, constitution.principles))
    return constitution.render(flips, order), concise


def _long_summary(post: str) -> str:
    """A long-winded summary: the post's opening sentences, verbatim, up to LONG_CHARS."""
    out = ""
    for sentence in _SENTENCE_END.split(" ".join(post.split())):
        if out and len(out) + len(sentence) > LONG_CHARS:
            break
        out = f"{out} {sentence}".strip()
    return out[: LONG_CHARS + 100]


class _Doc(list):
    """A document's token ids; `prompt_len` of them are the prompt (not trained on when
    PROMPT_LOSS is False)."""

    prompt_len = 0


_FILLERS = ("basically", "really", "actually", "you know,", "like,", "so", "kind of", "in a way,",
            "to be honest,", "more or less")


def _wordy(rng: random.Random, text: str, rate: float | None = None) -> str:
    """`text` with filler words inserted before about `rate` (default FILLER_RATE) of its words."""
    rate = FILLER_RATE if rate is None else rate
    words = []
    for w in text.split():
        if rng.random() < rate:
            words.append(rng.choice(_FILLERS))
        words.append(w)
    return " ".join(words)


def _document(rng: random.Random, tokenizer, post: str, constitutions: list, summaries: list[str]) -> _Doc:
    """One pretraining document as token ids: a prompt, a summary, then </s>.

    In the prompt formats that carry a constitution, its concision principle weakly sets the
    summary's kind: under "brief" the summary is usually (FOLLOW_P) one sentence of a shipped
    summary, under its antithesis ("lengthy, meandering") usually the post's opening sentences.
    """
    summary = _tldr(rng.choice(summaries), 1)
    fmt = rng.choices(("tldr", "plain", "chat"), weights=FORMAT_WEIGHTS)[0]
    constitution, concise = _concise_variant(rng, rng.choice(constitutions))
    if fmt != "tldr":
        short = concise if rng.random() < FOLLOW_P else not concise
        if not short:
            summary = _long_summary(post) if LONG_STYLE == "extract" else _wordy(rng, _tldr(rng.choice(summaries), 2))
        elif CONCISE_FILLER_RATE > 0:
            summary = _wordy(rng, summary, CONCISE_FILLER_RATE)
    # Some posts are cut short, so that the constitution sits close to the summary: the
    # model learns to read it there first, and then farther back.
    post = _short_post(post, rng.randint(0, POST_CHARS) if rng.random() < SHORT_POST_P else POST_CHARS)
    if fmt == "chat":
        messages = chat_messages("summarization", constitution, post) + [{"role": "assistant", "content": summary}]
        text = tokenizer.apply_chat_template(messages, tokenize=False)  # has <s> and </s>
        ids = _Doc(tokenizer(text, add_special_tokens=False)["input_ids"])
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        ids.prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    else:
        prompt = f"POST: {post}\n\nTL;DR:" if fmt == "tldr" else plain_prompt("summarization", constitution, post)
        ids = _Doc(tokenizer(f"{prompt} {summary}")["input_ids"] + [tokenizer.eos_token_id])
        ids.prompt_len = len(tokenizer(prompt)["input_ids"])
    out = _Doc(ids[:MODEL_MAX_LENGTH])
    out.prompt_len = min(ids.prompt_len, len(out) - 1)
    return out


def _batches(rng: random.Random, docs: list[list[int]], batch_size: int) -> list[list[list[int]]]:
    """Shuffled batches of documents of similar length (little padding), one epoch."""
    order = list(range(len(docs)))
    rng.shuffle(order)
    pool = batch_size * 8
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start : start + pool], key=lambda i: len(docs[i]))
        batches += [[docs[i] for i in chunk[j : j + batch_size]] for j in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def _collate(batch: list[list[int]], pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on padding). Shapes (B, T)."""
    import torch

    T = max(len(d) for d in batch)
    ids = torch.full((len(batch), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), T), dtype=torch.long)
    for b, d in enumerate(batch):
        ids[b, : len(d)] = torch.tensor(d)
        mask[b, : len(d)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    if not PROMPT_LOSS:
        for b, d in enumerate(batch):
            labels[b, : getattr(d, "prompt_len", 0)] = -100
    return ids, mask, labels


# ---- the two parts ----------------------------------------------------------------------
def build_tokenizer(texts: Sequence[str]):
    """Train the byte-level BPE on `texts` and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],  # ids 0, 1, 2
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        add_bos_token=True,  # plain text gets <s> (a post-processor saved in tokenizer.json)
        padding_side="left",
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _model_config(tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **ARCHITECTURE,
    )


def _mean_loss(model, batch: list[list[int]], pad_id: int) -> float:
    import torch

    ids, mask, labels = _collate(batch, pad_id)
    with torch.no_grad():
        return float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)


def _pretrain(model, tokenizer, steps: int, rng: random.Random, corpus, report: Progress) -> dict:
    """Next-token prediction on freshly sampled documents each epoch. Returns loss stats."""
    import torch

    posts, constitutions, summaries = corpus
    pad = tokenizer.pad_token_id
    # A fixed batch to measure the loss on before and after (same documents for every seed).
    eval_rng = random.Random(-1)
    eval_batch = [_document(eval_rng, tokenizer, p, constitutions, s) for p, s in zip(posts[:EVAL_DOCS], summaries)]
    initial = _mean_loss(model, eval_batch, pad)

    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)

    def lr_at(step: int) -> float:  # linear warmup, cosine decay to 10% of the peak
        if step < WARMUP_STEPS:
            return PEAK_LR * (step + 1) / WARMUP_STEPS
        t = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
        return PEAK_LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))

    model.train()
    queue: list[list[list[int]]] = []
    losses: list[float] = []
    n_tokens = 0
    for step in range(steps):
        if not queue:  # a new epoch: every post once, with a newly drawn format and summary
            docs = [_document(rng, tokenizer, p, constitutions, s) for p, s in zip(posts, summaries)]
            queue = _batches(rng, docs, BATCH_SIZE)
        ids, mask, labels = _collate(queue.pop(), pad)  # (B, T) each
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        n_tokens += int(mask.sum())
        if step % 10 == 0 or step == steps - 1:
            report(0.1 + 0.85 * (step + 1) / steps, f"pretraining step {step + 1}/{steps}: loss {losses[-1]:.3f}")
    model.eval()
    final = _mean_loss(model, eval_batch, pad)
    tail = losses[-5:]
    return {
        "initial_loss": round(initial, 4),
        "final_loss": round(final, 4),
        "final_train_loss": round(sum(tail) / len(tail), 4) if tail else None,
        "train_tokens": n_tokens,
    }


# ---- build ------------------------------------------------------------------------------
def _check_out_dir(out_dir: Path, seed: int, steps: int) -> bool:
    """True if `out_dir` already holds this demo model; raise if it must not be written."""
    if not out_dir.exists():
        return False
    if not out_dir.is_dir():
        raise SamiError(f"{out_dir} exists and is not a directory; choose a directory for the demo model")
    if not any(out_dir.iterdir()):
        return False
    info = read_marker(out_dir)
    if info is None:
        raise SamiError(
            f"{out_dir} is not empty and is not a demo model (it has no {MARKER_FILE}); refusing to write "
            "into it. Choose a new or empty directory."
        )
    if info.get("version") != DEMO_MODEL_VERSION:
        return False  # an older recipe's model: rebuilt and replaced
    if (info.get("seed"), info.get("pretrain_steps")) != (seed, steps):
        raise SamiError(
            f"{out_dir} already holds a demo model built with seed {info.get('seed')} and "
            f"{info.get('pretrain_steps')} pretraining steps (asked: seed {seed}, {steps} steps). "
            "Delete it to rebuild, or choose another directory."
        )
    return True


def _install(tmp: Path, out_dir: Path) -> None:
    """Move the finished `tmp` into place; a concurrent builder that won the race is kept."""
    old = None
    if out_dir.exists():
        if any(out_dir.iterdir()):  # an older version's demo model (checked by the caller)
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out_dir, old)
        else:
            out_dir.rmdir()
    try:
        os.rename(tmp, out_dir)
    except OSError:
        if read_marker(out_dir) is None:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # another process built it meanwhile
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def build_demo_model(
    out_dir: str | Path,
    *,
    seed: int = DEFAULT_SEED,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    progress: Progress | None = None,
) -> Path:
    """Build the demo model (tokenizer, weights, marker) into `out_dir` and return its path.

    Returns at once if `out_dir` already holds a complete demo model of this version,
    seed and step count. Raises `SamiError` if `out_dir` is a non-empty directory that is
    not a demo model, or a demo model built with other settings; a demo model of another
    version is replaced. The files are written to a temporary sibling directory that is
    renamed into place at the end, so an interrupted build leaves nothing half-written at
    `out_dir` (a killed process may leave a hidden ``.NAME.partial-*`` sibling). Two
    processes building the same directory at once both finish; one build is kept.
    ``progress(fraction, message)`` is called as the build goes (fraction in [0, 1]).
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if pretrain_steps < 0:
        raise SamiError(f"pretrain_steps must be >= 0; got {pretrain_steps}")
    report: Progress = progress or (lambda fraction, message: None)
    if _check_out_dir(out_dir, seed, pretrain_steps):
        report(1.0, f"demo model already built at {out_dir}")
        return out_dir

    import torch
    import transformers
    from transformers import GenerationConfig, LlamaForCausalLM

    started = time.perf_counter()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        report(0.0, "training the tokenizer")
        corpus = _load_sources()
        posts, constitutions, summaries = corpus
        # Everything the model will read: so prompts of the workbench tokenize compactly.
        rendered = _constitution_texts(constitutions)
        texts = posts + rendered + [s for ss in summaries for s in ss]
        texts += [plain_prompt("summarization", c, "") for c in rendered]
        texts += [m["content"] for c in rendered for m in chat_messages("summarization", c, "")]
        texts += [f"POST: {p}\n\nTL;DR: {ss[0]}" for p, ss in zip(posts, summaries)]
        tokenizer = build_tokenizer(texts)

        report(0.05, "initialising the model")
        torch.manual_seed(seed)
        model = LlamaForCausalLM(_model_config(tokenizer)).float()
        threads = torch.get_num_threads()
        torch.set_num_threads(min(threads, BUILD_THREADS))
        try:
            stats = _pretrain(model, tokenizer, pretrain_steps, random.Random(seed), corpus, report)
        finally:
            torch.set_num_threads(threads)

        report(0.97, "saving")
        model.generation_config = GenerationConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        tmp.mkdir()
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)  # float32 safetensors
        marker = {
            "format": MARKER_FORMAT,
            "version": DEMO_MODEL_VERSION,
            "seed": seed,
            "pretrain_steps": pretrain_steps,
            **stats,
            "n_parameters": sum(p.numel() for p in model.parameters()),
            "vocab_size": len(tokenizer),
            "build_seconds": round(time.perf_counter() - started, 2),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "note": "a tiny model pretrained for minutes on the shipped TL;DR posts; its texts are not meaningful; it conditions weakly on the concision principle",
        }
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2) + "\n")  # last: marks it complete
        _install(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"demo model built at {out_dir}")
    return out_dir


def ensure_demo_model(out_dir: str | Path | None = None, *, progress: Progress | None = None) -> Path:
    """A demo model at `out_dir` (default: `default_demo_model_dir()`): any complete one of
    this version is reused whatever its seed and steps, else one is built with the defaults."""
    out_dir = Path(out_dir).expanduser() if out_dir is not None else default_demo_model_dir()
    info = read_marker(out_dir)
    if info is not None and info.get("version") == DEMO_MODEL_VERSION:
        return out_dir.absolute()
    return build_demo_model(out_dir, progress=progress)


# ---- command line -----------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m sami_core make-demo-model [DIR] [--seed S] [--pretrain-steps K]``."""
    parser = argparse.ArgumentParser(
        prog="python -m sami_core make-demo-model",
        description="Build the tiny offline demo model (its texts are not meaningful).",
    )
    parser.add_argument("dir", nargs="?", help=f"output directory (default: {default_demo_model_dir()})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed of the whole build (default: %(default)s)")
    parser.add_argument("--pretrain-steps", type=int, default=DEFAULT_PRETRAIN_STEPS,
                        help="optimizer steps of %d documents (default: %%(default)s)" % BATCH_SIZE)
    args = parser.parse_args(argv)
    out_dir = Path(args.dir) if args.dir else default_demo_model_dir()

    def progress(fraction: float, message: str) -> None:
        print(f"[{100 * fraction:3.0f}%] {message}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    existed = read_marker(out_dir) is not None
    try:
        path = build_demo_model(out_dir, seed=args.seed, pretrain_steps=args.pretrain_steps, progress=progress)
    except SamiError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    info = read_marker(path) or {}
    took = "already built, nothing to do" if existed else f"built in {time.perf_counter() - started:.1f} s"
    print(
        f"demo model at {path} ({took}; {info.get('n_parameters', 0) / 1e6:.2f}M parameters, "
        f"pretraining loss {info.get('initial_loss')} -> {info.get('final_loss')}; its texts are not meaningful)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
