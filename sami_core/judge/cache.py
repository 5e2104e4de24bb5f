"""The judgment cache: plain JSONL files, keyed by what decides a judge's answer.

A cache key hashes the provider (and endpoint), the judge model, TEMPLATE_VERSION, the
prompt options (task, seed, principle shuffle, tie option), the query, the constitution
and the two responses *in the order shown*. A judgment found under its key is reused
without a request. Cached: answers with a choice (``ok``) and answers that named none
after their retries (``invalid``); errors (no answer) are never cached, so a re-run
retries them.

Files are append-only JSONL; each record is written with one ``write`` on an
``O_APPEND`` descriptor, so several judge runs can share a cache file. A line cut by a
crash is skipped on reading. (The workers mirror judgments into the database; this
interface stays file-based.)
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

CACHEABLE = ("ok", "invalid")


def cache_key(*, provider: str, model: str, template_version: str, options: dict, query: str,
              constitution: str, response_a: str, response_b: str) -> str:
    """sha256 over the canonical JSON of everything that decides the judge's answer."""
    payload = json.dumps(
        {"provider": provider, "model": model, "template": template_version, "options": options, "query": query,
         "constitution": constitution, "a": response_a, "b": response_b},
        sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


class JsonlFile:
    """An append-only JSONL file (created with its folder on first append)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def records(self) -> Iterator[dict]:
        if not self.path.exists():
            return
        with open(self.path, "rb") as f:
            for raw in f:
                try:
                    rec = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    continue  # a line cut by a crash (or being written by another process)
                if isinstance(rec, dict):
                    yield rec

    def append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        data = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            if size:  # a previous writer died mid-line: start on a fresh line
                with open(self.path, "rb") as f:
                    f.seek(size - 1)
                    if f.read(1) != b"\n":
                        data = b"\n" + data
            os.write(fd, data)
        finally:
            os.close(fd)


class JudgmentCache:
    """Cached judgments by key, read from ``files``; ``put`` appends to ``write_to``.

    Any record with ``cache_key`` and a cacheable ``status`` counts, so a judge run's own
    ``judgments.jsonl`` can be read as a cache (that is how a run resumes).
    """

    def __init__(self, files: Iterable[str | Path] = (), write_to: str | Path | None = None):
        self._write = JsonlFile(write_to) if write_to is not None else None
        self._index: dict[str, dict] = {}
        paths = [Path(p) for p in files] + ([self._write.path] if self._write else [])
        for p in dict.fromkeys(paths):
            for rec in JsonlFile(p).records():
                self._remember(rec)

    def _remember(self, rec: dict) -> None:
        if rec.get("cache_key") and rec.get("status") in CACHEABLE:
            self._index[rec["cache_key"]] = rec

    def get(self, key: str) -> dict | None:
        return self._index.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self._index)

    def put(self, rec: dict) -> None:
        """Remember a judgment (and append it to the shared file); non-cacheable ones are ignored."""
        if rec.get("status") not in CACHEABLE:
            return
        self._remember(rec)
        if self._write is not None:
            self._write.append(rec)


@dataclass(frozen=True)
class RequestEstimate:
    pairs: int
    judgments: int  # pairs x orders judged
    cached: int
    to_send: int  # judgments without a cached answer: at least one request each
    prompt_tokens: int = 0  # approximate prompt tokens of one request per judgment to send
    max_completion_tokens: int | None = None  # the judge's max_tokens per request, times to_send
    max_cost_usd: float | None = None  # of those tokens, when the judge spec gives prices

    def __str__(self) -> str:
        return (f"{self.pairs} pairs, {self.judgments} judgments: {self.cached} cached, "
                f"{self.to_send} to send (at least {self.to_send} requests; retries may add more)")

    def tokens_text(self) -> str:
        """``~41,200 prompt tokens + at most 51,200 completion tokens (estimated cost at most
        $0.61)``: what one request per judgment to send would use."""
        text = f"~{self.prompt_tokens:,} prompt tokens"
        if self.max_completion_tokens is not None:
            text += f" + at most {self.max_completion_tokens:,} completion tokens"
        if self.max_cost_usd is not None:
            from sami_core.judge.usage import format_usd

            text += f" (estimated cost at most {format_usd(self.max_cost_usd)})"
        return text


def estimate_requests(tasks: Iterable, cache: JudgmentCache) -> RequestEstimate:
    """How many of a job's judgments are cached and how many need requests, and the
    prompt tokens of those requests (approximate: sami_core.stats.count_tokens_approx of
    the system and user messages).

    ``tasks`` are :class:`sami_core.judge.runner.JudgeTask` (anything with ``pair.pair_id``,
    ``cache_key``, ``prompt`` and ``system``)."""
    from sami_core.stats import count_tokens_approx

    tasks = list(tasks)
    todo = [t for t in tasks if t.cache_key not in cache]
    tokens = sum(count_tokens_approx(t.prompt) + count_tokens_approx(getattr(t, "system", None) or "") for t in todo)
    return RequestEstimate(len({t.pair.pair_id for t in tasks}), len(tasks), len(tasks) - len(todo), len(todo),
                           tokens)
