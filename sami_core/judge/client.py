"""LLM clients for judging and principle writing, with retries.

- :class:`OpenAIChat`: any OpenAI-compatible endpoint (``AsyncOpenAI`` with ``base_url``)
  or Azure OpenAI (``AsyncAzureOpenAI`` with endpoint and api_version), called through the
  client's typed ``chat.completions.create`` (an optional system message; the answer's
  ``usage`` tokens are returned for cost reports). The key is read from the environment
  variable the spec names; it is never written anywhere, and it is masked in every error
  message.
- :class:`sami_core.judge.rules.RuleJudge` (provider ``rule``): a deterministic rule on
  the two responses, e.g. concision (the demo's judge); no model, no request.
- :class:`HFJudge`: a local Hugging Face causal LM that answers A or B by comparing the
  log-likelihood of "A" and "B" as the final answer after the prompt (torch is imported
  only when one is built, so this module stays cheap to import).

:func:`complete_with_retries` retries 429, 408/409, 5xx, timeouts and connection errors
with exponential backoff (jitter) and honours ``Retry-After`` / ``retry-after-ms``. Other
HTTP errors are not retried: 401/403/404 stop the job (wrong key, model or endpoint),
other 4xx end that request.
"""

from __future__ import annotations

import asyncio
import email.utils
import os
import random
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sami_core.errors import SamiError, TransientError


class JudgeError(SamiError):
    """A judge or writer job cannot go on (bad key, unknown model, endpoint unreachable)."""


class JudgeUnreachable(JudgeError, TransientError):
    """The endpoint could not be reached (no connection, timeouts) after every attempt:
    may pass, so the job is retried later (exit 75); judgments made so far are kept."""


class AdaptiveLimit:
    """How many requests may be in flight, adapted to the endpoint's rate limit.

    Starts at ``ceiling`` (the spec's concurrency). A rate-limited answer (HTTP 429)
    lowers the limit by a quarter (at most once per wait it asks for, so a burst of 429s
    counts once) and holds every new request until the server's ``Retry-After`` has
    passed; each ``limit`` answers without one raise it by one again, up to ``ceiling``.
    So the judge keeps just under the provider's rate instead of hammering it."""

    def __init__(self, ceiling: int) -> None:
        self.ceiling = max(1, int(ceiling))
        self.limit = self.ceiling
        self.in_flight = 0
        self.rate_limited = 0  # 429 answers seen
        self._resume_at = 0.0
        self._cut_until = 0.0
        self._ok = 0
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # made inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self) -> None:
        cond = self._condition()
        async with cond:
            while True:
                wait = self._resume_at - time.monotonic()
                if wait > 0:
                    try:
                        await asyncio.wait_for(cond.wait(), wait)
                    except asyncio.TimeoutError:
                        pass
                elif self.in_flight < self.limit:
                    self.in_flight += 1
                    return
                else:
                    await cond.wait()

    async def release(self, *, rate_limited: bool = False, retry_after_s: float | None = None) -> None:
        cond = self._condition()
        async with cond:
            self.in_flight -= 1
            now = time.monotonic()
            if rate_limited:
                self.rate_limited += 1
                wait = retry_after_s if retry_after_s is not None else 1.0
                if now >= self._cut_until:
                    self.limit = max(1, (self.limit * 3) // 4)
                    self._cut_until = now + max(wait, 0.05)
                    self._ok = 0
                self._resume_at = max(self._resume_at, now + wait)
            else:
                self._ok += 1
                if self._ok >= self.limit and self.limit < self.ceiling:
                    self.limit += 1
                    self._ok = 0
            cond.notify_all()


class RequestFailed(Exception):
    """One request failed for good (its attempts are used up, or a 4xx that retrying won't fix)."""


@dataclass(frozen=True)
class Completion:
    """One answer: its text and the tokens the endpoint reported (None: not reported)."""

    text: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ChatClient(Protocol):
    provider_id: str  # provider and endpoint: part of the cache key
    model: str
    sent: int  # requests sent (attempts included)

    async def complete(self, prompt: str, system: str | None = None) -> Completion | str: ...

    async def aclose(self) -> None: ...


def read_api_key(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    key = os.environ.get(env_name)
    if not key:
        raise JudgeError(
            f"judge.api_key_env: the environment variable {env_name} is not set; export the API key in it "
            "(keys are read from the environment only, never from a spec)"
        )
    return key


class OpenAIChat:
    def __init__(self, spec: Any):
        """``spec``: a :class:`sami_core.spec.LLMSpec` with provider openai or azure."""
        import openai

        try:  # the transport the installed openai client is built on
            import httpx2 as httpx
        except ImportError:
            import httpx

        self.model = spec.model
        self.spec = spec
        self.sent = 0
        self._key = read_api_key(spec.api_key_env)
        # A pool sized to the concurrency: httpx scans its pool on every request.
        limits = httpx.Limits(max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency)
        common = dict(api_key=self._key or "no-key", timeout=spec.timeout_s, max_retries=0,
                      http_client=openai.DefaultAsyncHttpxClient(limits=limits))
        if spec.provider == "azure":
            self.client = openai.AsyncAzureOpenAI(azure_endpoint=spec.azure_endpoint, api_version=spec.api_version,
                                                  **common)
        else:
            self.client = openai.AsyncOpenAI(base_url=spec.base_url, **common)
        self.provider_id = provider_id(spec)

    @property
    def endpoint(self) -> str:
        return self.spec.azure_endpoint if self.spec.provider == "azure" else (self.spec.base_url or "api.openai.com")

    def redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    async def complete(self, prompt: str, system: str | None = None) -> Completion:
        self.sent += 1
        # The typed call costs ~2-3 ms of CPU per request more than a raw post: nothing beside
        # a GPT-4-class answer's seconds, and it gives the usage a cost report needs.
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        resp = await self.client.chat.completions.create(
            model=self.model, messages=messages, temperature=self.spec.temperature, max_tokens=self.spec.max_tokens)
        choices = getattr(resp, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        usage = getattr(resp, "usage", None)
        return Completion(getattr(message, "content", None) or "",  # no choice: parsed as such (then `invalid`)
                          getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))

    async def aclose(self) -> None:
        await self.client.close()


def _retry_after(err: Exception) -> float | None:
    """Seconds the server asked us to wait (retry-after-ms, Retry-After seconds or date)."""
    response = getattr(err, "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def classify(err: Exception) -> str:
    """"retry", "fatal" (stop the job), "unreachable" (retry; the job stops when attempts
    run out) or "request" (this request fails, the job goes on)."""
    import openai

    if isinstance(err, openai.APITimeoutError):
        return "retry"
    if isinstance(err, openai.APIConnectionError):
        return "unreachable"
    if isinstance(err, openai.APIStatusError):
        code = err.status_code
        if code in (408, 409, 429) or code >= 500:
            return "retry"
        if code in (401, 403, 404):
            return "fatal"
        return "request"
    return "request"


RATE_LIMIT_PATIENCE_S = 900.0  # a request waits out 429s this long in all before it fails


def _is_rate_limited(err: Exception) -> bool:
    return getattr(err, "status_code", None) == 429


async def complete_with_retries(client: ChatClient, prompt: str, *, max_attempts: int, backoff_initial_s: float,
                                backoff_max_s: float, rng: random.Random | None = None,
                                system: str | None = None,
                                limiter: AdaptiveLimit | None = None) -> tuple[Completion, int]:
    """(answer, requests sent). Raises RequestFailed when attempts run out (or on a 4xx),
    and JudgeError for errors that would fail every request (bad key, model, endpoint
    down; JudgeUnreachable, transient, when it could not be reached). A client that
    answers with plain text (no usage) is accepted. With a ``limiter`` (shared by the
    job's requests) a 429 slows every request down (see AdaptiveLimit) and is waited out
    without counting as an attempt, for up to RATE_LIMIT_PATIENCE_S in all."""
    rng = rng or random.Random()
    redact = getattr(client, "redact", lambda s: s)
    attempt = sends = 0
    patience_end = time.monotonic() + RATE_LIMIT_PATIENCE_S
    while attempt < max_attempts:
        attempt += 1
        sends += 1
        if limiter is not None:
            await limiter.acquire()
        try:
            out = await (client.complete(prompt, system=system) if system else client.complete(prompt))
        except Exception as err:  # noqa: BLE001 - classified below
            limited = _is_rate_limited(err)
            if limiter is not None:
                await limiter.release(rate_limited=limited, retry_after_s=_retry_after(err))
                if limited and time.monotonic() < patience_end:
                    attempt -= 1  # the limiter holds the next send until the server's wait has passed
                    continue
            kind = classify(err)
            what = redact(f"{type(err).__name__}: {err}")
            if kind == "fatal":
                raise JudgeError(
                    f"the judge endpoint refused the request ({what}); check the model name, the endpoint and "
                    f"the key in {getattr(getattr(client, 'spec', None), 'api_key_env', 'the key variable')}"
                ) from None
            if kind == "request":
                raise RequestFailed(what) from None
            if attempt == max_attempts:
                if kind == "unreachable":
                    raise JudgeUnreachable(
                        f"the judge endpoint {getattr(client, 'endpoint', '')} is unreachable after {max_attempts} "
                        f"attempts ({what}); judgments made so far are kept: the job is retried later"
                    ) from None
                raise RequestFailed(f"{what} (after {max_attempts} attempts)") from None
            wait = _retry_after(err)
            if wait is None:
                wait = min(backoff_max_s, backoff_initial_s * 2 ** (attempt - 1)) * rng.uniform(0.5, 1.0)
            await asyncio.sleep(min(wait, backoff_max_s))
            continue
        if limiter is not None:
            await limiter.release()
        return (Completion(out) if isinstance(out, str) else out), sends
    raise RequestFailed(f"rate limited (HTTP 429) for over {RATE_LIMIT_PATIENCE_S:g} s")


class HFJudge:
    """A local causal LM as judge: compares log p("A") and log p("B") as the final answer.

    The text scored is the judge prompt, then ``\\nFinal Response:`` (inside the chat
    template when the tokenizer has one), then `` A`` or `` B``; the answer is the more
    likely letter, written in the paper's format with both log-probabilities, so the
    same parser reads it. Requests run one at a time in a worker thread.
    """

    def __init__(self, spec: Any):
        from sami_core.generation import load_model_and_tokenizer
        from sami_core.stages import resolve_model_path

        self.lm, self.tokenizer = load_model_and_tokenizer(resolve_model_path(spec.model), dtype=spec.dtype)
        self.device = next(self.lm.parameters()).device
        self.model = spec.model
        self.provider_id = "hf"
        self.sent = 0
        self._lock = asyncio.Lock()

    def _context(self, prompt: str, system: str | None = None) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return text + "Final Response:"
        return (f"{system}\n\n" if system else "") + prompt + "\nFinal Response:"

    def letter_logprobs(self, prompt: str, system: str | None = None) -> dict[str, float]:
        """{"A": log p(" A" | context), "B": log p(" B" | context)} (summed over tokens)."""
        import torch

        ctx = self.tokenizer(self._context(prompt, system), add_special_tokens=True)["input_ids"]
        limit = getattr(self.lm.config, "max_position_embeddings", None) or 10**9
        out = {}
        for letter in ("A", "B"):
            cont = self.tokenizer(" " + letter, add_special_tokens=False)["input_ids"]
            if len(ctx) + len(cont) > limit:  # too long for the model: keep the end (the answer's context)
                ctx = ctx[len(ctx) + len(cont) - limit:]
            ids = torch.tensor([ctx + cont], device=self.device)  # (1, T)
            with torch.no_grad():
                logits = self.lm(ids).logits[0, len(ctx) - 1: -1].float()  # (len(cont), V)
            lp = torch.log_softmax(logits, dim=-1).gather(1, torch.tensor(cont, device=self.device)[:, None])
            out[letter] = float(lp.sum())
        return out

    async def complete(self, prompt: str, system: str | None = None) -> Completion:
        async with self._lock:
            self.sent += 1
            lp = await asyncio.to_thread(self.letter_logprobs, prompt, system)
        choice = "A" if lp["A"] >= lp["B"] else "B"
        return Completion(f"Comparison: log p(A) = {lp['A']:.4f}, log p(B) = {lp['B']:.4f}.\nFinal Response: {choice}")

    async def aclose(self) -> None:
        return None


def make_client(spec: Any) -> ChatClient:
    """A client for an :class:`sami_core.spec.LLMSpec`."""
    if spec.provider == "hf":
        return HFJudge(spec)
    if spec.provider == "rule":  # offline, no model (sami_core.judge.rules)
        from sami_core.judge.rules import RuleJudge

        return RuleJudge(spec)
    return OpenAIChat(spec)


def provider_id(spec: Any) -> str:
    """The provider part of cache keys, without building a client (no key needed)."""
    if spec.provider == "azure":
        return f"azure:{spec.azure_endpoint.rstrip('/')}"
    if spec.provider == "hf":
        return "hf"
    if spec.provider == "rule":
        from sami_core.judge.rules import RULES_VERSION

        return f"rule:{RULES_VERSION}"
    return "openai" if spec.base_url is None else f"openai-compatible:{spec.base_url.rstrip('/')}"
