"""Greedy decodings checked up to near-ties, for tests that compare generations.

Greedy texts are not bitwise reproducible across batch layouts, padding, KV-cache use,
thread counts or CPUs: two logits that are tied to within float32 rounding can swap
places, and from there the texts differ. What greedy decoding does promise is that each
token was the most likely one given the prompt and the tokens before it. This module
checks exactly that, by replaying a completion in this process with full forward passes
(one unpadded sequence, no cache): every token must have a logit within ``tol`` of the
largest, and a completion that stopped before ``max_new_tokens`` must have had EOS
among the near-best next tokens. Two completions of one prompt that both pass agree
token for token up to a near-tie, which is all that greedy decoding guarantees.

The completion's tokens are recovered from its text: at each step the near-best tokens
(usually one) are tried, keeping those whose decoding continues the text, so a text
that a tokenizer would split differently from the way the model produced it still
replays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Logit gap within which two next tokens count as tied. float32 differences between
# batchings are ~1e-5 here; a wrong mask or wrong positions moves logits by far more. A
# model in 16-bit weights (bfloat16 on CUDA) rounds far more coarsely: there the gap is
# widened to ULPS of its dtype at the logits' scale.
NEAR_TIE = 1e-3
ULPS = 8


@dataclass
class Replay:
    tokens: list[int]  # the completion's tokens, as replayed
    near_ties: int  # steps at which more than one token was within `tol` of the best


def _encode(tokenizer: Any, prompt: str) -> list[int]:
    from sami_core.generation import _encode  # the stages' own prompt encoding (BOS handling)

    return _encode(tokenizer, [prompt])[0]


def replay_greedy(model: Any, tokenizer: Any, prompt: str, text: str, n_tokens: int, max_new_tokens: int,
                  *, tol: float = NEAR_TIE, eos_ids: list[int] | None = None) -> Replay:
    """Replay ``text`` (``n_tokens`` generated tokens, decoded without special tokens) as a
    greedy continuation of ``prompt``; raise AssertionError, saying where, if it is not one."""
    import torch

    if eos_ids is None:
        from sami_core.generation import _eos_ids

        eos_ids = _eos_ids(model, tokenizer)
    prompt_ids = _encode(tokenizer, prompt)
    param = next(model.parameters())
    device = param.device
    if param.dtype != torch.float32:
        with torch.no_grad():
            scale = model(input_ids=torch.tensor([prompt_ids], device=device)).logits[0, -1].float().abs().max()
        tol = max(tol, ULPS * torch.finfo(param.dtype).eps * float(scale))
    cache: dict[tuple[int, ...], torch.Tensor] = {}

    def near_best(generated: tuple[int, ...]) -> list[int]:
        if generated not in cache:
            ids = torch.tensor([prompt_ids + list(generated)], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, -1].float()
            cache[generated] = logits
        logits = cache[generated]
        return torch.nonzero(logits >= logits.max() - tol).flatten().tolist()

    # Fast path: the text's own tokenization, checked at every position with one forward
    # pass. Usually the model produced exactly these tokens; when it did not (or a token
    # is not near-best), the step-by-step search below decides.
    canonical = tokenizer(text, add_special_tokens=False)["input_ids"]
    if canonical and len(canonical) == n_tokens and tokenizer.decode(canonical, skip_special_tokens=True) == text:
        ids = torch.tensor([prompt_ids + canonical], device=device)
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(prompt_ids) - 1:].float()  # (n_tokens + 1, V)
        best = logits.max(dim=-1).values
        picked = logits[torch.arange(n_tokens, device=device), torch.tensor(canonical, device=device)]
        stop_ok = n_tokens == max_new_tokens or bool((logits[-1, eos_ids] >= best[-1] - tol).any())
        if bool((picked >= best[:-1] - tol).all()) and stop_ok:
            runner_up = logits[:-1].topk(2, dim=-1).values
            return Replay(canonical, int((runner_up[:, 1] >= runner_up[:, 0] - tol).sum()))

    ties = 0
    failure = ""

    def walk(generated: tuple[int, ...]) -> list[int] | None:
        nonlocal ties, failure
        cands = near_best(generated)
        ties += len(cands) > 1
        done = tokenizer.decode(list(generated), skip_special_tokens=True)
        if len(generated) == n_tokens:
            if done != text:
                failure = f"after {n_tokens} tokens the replay reads {done!r}, not {text!r}"
                return None
            if n_tokens < max_new_tokens and not set(cands) & set(eos_ids):
                failure = (f"the completion stopped after {n_tokens} < {max_new_tokens} tokens, but EOS is not "
                           f"among the near-best next tokens {cands}")
                return None
            return list(generated)
        for c in cands:
            if c in eos_ids:
                continue  # generation would have stopped here
            nxt = generated + (c,)
            if text.startswith(tokenizer.decode(list(nxt), skip_special_tokens=True)):
                found = walk(nxt)
                if found is not None:
                    return found
        if not failure:
            failure = (f"token {len(generated) + 1}: no near-best token {cands} "
                       f"({[tokenizer.decode([c]) for c in cands]}) continues {done!r} towards {text!r}")
        return None

    tokens = walk(())
    assert tokens is not None, f"not a greedy completion of its prompt (logit tolerance {tol}): {failure}"
    return Replay(tokens, ties)


def assert_greedy(model: Any, tokenizer: Any, prompts: list[str], completions: list[tuple[str, int]],
                  max_new_tokens: int, *, tol: float = NEAR_TIE) -> int:
    """Each (text, n_tokens) is a greedy completion of its prompt; returns the near-ties met."""
    assert len(prompts) == len(completions)
    return sum(replay_greedy(model, tokenizer, p, text, n, max_new_tokens, tol=tol).near_ties
               for p, (text, n) in zip(prompts, completions))
