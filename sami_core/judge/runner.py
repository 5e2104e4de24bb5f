"""Judging pairs: plan the judgments, reuse cached ones, send the rest concurrently.

Policy for answers (documented in the README of the judge stage):
- a request that fails transiently (429, 5xx, timeout, connection) is retried with
  backoff (Retry-After honoured) up to ``max_attempts``; after that the judgment is
  recorded with status ``error`` (never a tie) and is not cached, so a re-run retries it;
- an endpoint that cannot be reached at all, or that refuses the key/model (401, 403,
  404), stops the job with a JudgeError; judgments made so far are kept;
- an answer naming no choice is asked again up to ``parse_retries`` times; then it is
  recorded with status ``invalid`` (cached: the judge did answer) and verdict ``invalid``
  (counted apart), or ``tie`` when the settings say ``unparseable="tie"`` (the paper's rule).
Verdicts are from the candidate's side: win, loss, tie, invalid, error. Each judgment
records the prompt and completion tokens its requests used (None when the endpoint
reported none; 0 for a cached one).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sami_core.judge.cache import JudgmentCache, cache_key
from sami_core.judge.client import AdaptiveLimit, ChatClient, RequestFailed, complete_with_retries
from sami_core.judge.pairs import Pair
from sami_core.judge.prompt import (TEMPLATE_VERSION, ParsedAnswer, build_messages, build_prompt, candidate_first,
                                    parse_answer)
from sami_core.judge.template import parse_choice, template_version
from sami_core.stats import count_tokens_approx, count_words

ORDERS = ("candidate_first", "baseline_first")


@dataclass(frozen=True)
class JudgeSettings:
    """What shapes a judgment besides the pair: the judge and the prompt options."""

    provider: str  # provider and endpoint, e.g. "openai" or "openai-compatible:http://host/v1"
    model: str
    task: str = "summarization"
    seed: int = 0
    shuffle_principles: bool = True
    allow_tie: bool = False
    order: str = "random"  # random | both | candidate_first | baseline_first
    template: Any = None  # a sami_core.spec.JudgeTemplateSpec; None = the built-in template
    unparseable: str = "apart"  # apart | tie: the verdict of an answer with no readable choice

    def prompt_options(self) -> dict:
        return {"task": self.task, "seed": self.seed, "shuffle": self.shuffle_principles, "tie": self.allow_tie}

    @property
    def template_version(self) -> str:
        t = self.template
        return TEMPLATE_VERSION if t is None else template_version(t.system, t.user, t.answer_pattern)

    def parse(self, text: str) -> ParsedAnswer:
        if self.template is None:
            return parse_answer(text)
        return ParsedAnswer(*parse_choice(text, self.template.answer_pattern))


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    parse_retries: int = 2


@dataclass(frozen=True)
class JudgeTask:
    pair: Pair
    order: str  # candidate_first | baseline_first
    prompt: str  # the user message
    cache_key: str
    system: str | None = None  # the system message (template files only)

    @property
    def key(self) -> tuple[str, str]:
        return (self.pair.pair_id, self.order)

    @property
    def shown(self) -> tuple[str, str]:
        """(response A, response B) as shown."""
        p = self.pair
        return (p.candidate, p.baseline) if self.order == "candidate_first" else (p.baseline, p.candidate)


def orders_for(pair: Pair, settings: JudgeSettings) -> list[str]:
    if settings.order == "both":
        return list(ORDERS)
    if settings.order == "random":
        first = candidate_first(settings.seed, pair.query_id, pair.query, pair.candidate, pair.baseline)
        return ["candidate_first" if first else "baseline_first"]
    return [settings.order]


def plan_tasks(pairs: Iterable[Pair], settings: JudgeSettings) -> list[JudgeTask]:
    """One task per (pair, order shown), with its prompt and cache key."""
    tasks = []
    for pair in pairs:
        for order in orders_for(pair, settings):
            a, b = (pair.candidate, pair.baseline) if order == "candidate_first" else (pair.baseline, pair.candidate)
            system = None
            if settings.template is None:
                prompt = build_prompt(pair.query, pair.constitution, a, b, task=settings.task, seed=settings.seed,
                                      shuffle=settings.shuffle_principles, allow_tie=settings.allow_tie)
            else:
                system, prompt = build_messages(settings.template, pair.query, pair.constitution, a, b,
                                                task=settings.task, seed=settings.seed,
                                                shuffle=settings.shuffle_principles)
            key = cache_key(provider=settings.provider, model=settings.model,
                            template_version=settings.template_version, options=settings.prompt_options(),
                            query=pair.query, constitution=pair.constitution, response_a=a, response_b=b)
            tasks.append(JudgeTask(pair, order, prompt, key, system or None))
    return tasks


def verdict_of(choice: str | None, order: str, unparseable: str = "apart") -> str:
    """The candidate's verdict for the judge's choice ("A", "B", "tie", None = unparseable)."""
    if choice is None:
        return "tie" if unparseable == "tie" else "invalid"
    if choice == "tie":
        return "tie"
    return "win" if (choice == "A") == (order == "candidate_first") else "loss"


def make_record(task: JudgeTask, settings: JudgeSettings, *, status: str, choice: str | None = None,
                raw: str = "", rationale: str = "", error: str | None = None, attempts: int = 0,
                cached: bool = False, prompt_tokens: int | None = 0, completion_tokens: int | None = 0) -> dict:
    """A judgment as stored in judgments.jsonl (and in caches)."""
    p = task.pair
    return {
        "key": list(task.key), "pair_id": p.pair_id, "query_id": p.query_id, "temperature": p.temperature,
        "candidate": p.candidate_source, "baseline": p.baseline_source,
        "constitution": p.constitution, "constitution_name": p.constitution_name,
        "provider": settings.provider, "judge_model": settings.model, "template_version": settings.template_version,
        "order": task.order, "shown_first": "candidate" if task.order == "candidate_first" else "baseline",
        "cache_key": task.cache_key, "status": status, "choice": choice,
        "verdict": "error" if status == "error" else verdict_of(choice, task.order, settings.unparseable),
        "rationale": rationale, "raw": raw, "error": error, "attempts": attempts, "cached": cached,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "words_candidate": count_words(p.candidate), "words_baseline": count_words(p.baseline),
        "tokens_candidate": p.candidate_tokens if p.candidate_tokens is not None else count_tokens_approx(p.candidate),
        "tokens_baseline": p.baseline_tokens if p.baseline_tokens is not None else count_tokens_approx(p.baseline),
        "created_at": time.time(),
    }


def from_cache(task: JudgeTask, settings: JudgeSettings, hit: dict) -> dict:
    return make_record(task, settings, status=hit["status"], choice=hit.get("choice"), raw=hit.get("raw", ""),
                       rationale=hit.get("rationale", ""), attempts=0, cached=True)


@dataclass
class RunReport:
    judgments: list[dict] = field(default_factory=list)  # in task order
    cached: int = 0
    sent: int = 0  # requests sent (retries included)
    seconds: float = 0.0
    prompt_tokens: int = 0  # reported by the endpoint, over this run's requests
    completion_tokens: int = 0
    without_usage: int = 0  # new judgments whose answers reported no usage (a local judge, some servers)
    limiter: AdaptiveLimit | None = None  # the in-flight limit as it ended (rate_limited: 429s seen)


async def _judge_one(task: JudgeTask, client: ChatClient, settings: JudgeSettings, policy: RetryPolicy,
                     rng: random.Random, limiter: AdaptiveLimit | None = None) -> dict:
    judge_shown = getattr(client, "judge_shown", None)
    if judge_shown is not None:  # a rule judge (sami_core.judge.rules): decides from the responses shown
        text = judge_shown(*task.shown)
        parsed = parse_answer(text)
        return make_record(task, settings, status="ok" if parsed.choice else "invalid", choice=parsed.choice,
                           raw=text, rationale=parsed.rationale, attempts=1)
    attempts = 0
    text = ""
    usage: dict[str, int | None] = {"prompt_tokens": None, "completion_tokens": None}  # summed over answers
    for _ in range(policy.parse_retries + 1):
        try:
            done, n = await complete_with_retries(client, task.prompt, system=task.system,
                                                  max_attempts=policy.max_attempts,
                                                  backoff_initial_s=policy.backoff_initial_s,
                                                  backoff_max_s=policy.backoff_max_s, rng=rng,
                                                  limiter=limiter)
        except RequestFailed as err:
            return make_record(task, settings, status="error", error=str(err), raw=text,
                               attempts=attempts + policy.max_attempts, **usage)
        attempts += n
        text = done.text
        for k in usage:
            if (v := getattr(done, k)) is not None:
                usage[k] = (usage[k] or 0) + v
        parsed = settings.parse(text)
        if parsed.choice is not None:
            return make_record(task, settings, status="ok", choice=parsed.choice, raw=text,
                               rationale=parsed.rationale, attempts=attempts, **usage)
    return make_record(task, settings, status="invalid", raw=text, rationale=settings.parse(text).rationale,
                       attempts=attempts, **usage)


async def judge_tasks(tasks: Sequence[JudgeTask], client: ChatClient | None, cache: JudgmentCache,
                      settings: JudgeSettings, *, concurrency: int = 16, policy: RetryPolicy = RetryPolicy(),
                      on_record: Callable[[dict], None] | None = None) -> RunReport:
    """Judge every task: cached ones without a request, the others with at most
    ``concurrency`` requests in flight. ``on_record`` sees each new judgment as it is made
    (cache hits included), in completion order; the report lists them in task order.
    New cacheable judgments are put in ``cache``. Raises JudgeError (see module doc)."""
    t0 = time.monotonic()
    report = RunReport()
    results: dict[tuple, dict] = {}

    def emit(task: JudgeTask, rec: dict) -> None:
        results[task.key] = rec
        if not rec["cached"]:
            cache.put(rec)
            report.prompt_tokens += rec["prompt_tokens"] or 0
            report.completion_tokens += rec["completion_tokens"] or 0
            report.without_usage += rec["prompt_tokens"] is None and rec["status"] != "error"
        if on_record is not None:
            on_record(rec)

    todo = []
    for task in tasks:
        hit = cache.get(task.cache_key)
        if hit is not None:
            report.cached += 1
            emit(task, from_cache(task, settings, hit))
        else:
            todo.append(task)
    if todo:
        if client is None:
            raise ValueError(f"{len(todo)} judgments are not cached and no client was given")
        sent0 = client.sent
        queue: asyncio.Queue[JudgeTask] = asyncio.Queue()
        for task in todo:
            queue.put_nowait(task)

        limiter = AdaptiveLimit(concurrency)  # the endpoint's 429s lower it (see client.AdaptiveLimit)
        report.limiter = limiter

        async def worker(seed: int) -> None:
            rng = random.Random(seed)
            while True:
                try:
                    task = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                hit = cache.get(task.cache_key)  # the same pair content judged by another worker meanwhile
                rec = from_cache(task, settings, hit) if hit else await _judge_one(task, client, settings, policy, rng, limiter)
                emit(task, rec)

        workers = [asyncio.create_task(worker(i)) for i in range(min(concurrency, len(todo)))]
        try:
            done, pending = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for w in done:
                if w.exception() is not None:
                    raise w.exception()
        finally:
            for w in workers:
                w.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            report.sent = client.sent - sent0
    report.judgments = [results[t.key] for t in tasks if t.key in results]
    report.seconds = time.monotonic() - t0
    return report


def judge_pairs(pairs: Iterable[Pair], client_factory: Callable[[], ChatClient] | None, cache: JudgmentCache,
                settings: JudgeSettings, *, concurrency: int = 16, policy: RetryPolicy = RetryPolicy(),
                on_record: Callable[[dict], None] | None = None) -> RunReport:
    """Plan and judge ``pairs`` in one event loop. The client is built (by
    ``client_factory``, e.g. ``lambda: make_client(llm_spec)``) only when some judgment
    is not cached, so a fully cached job needs neither key nor endpoint."""
    tasks = plan_tasks(pairs, settings)

    async def run() -> RunReport:
        client = client_factory() if client_factory and any(t.cache_key not in cache for t in tasks) else None
        try:
            return await judge_tasks(tasks, client, cache, settings, concurrency=concurrency, policy=policy,
                                     on_record=on_record)
        finally:
            if client is not None:
                await client.aclose()

    return asyncio.run(run())
