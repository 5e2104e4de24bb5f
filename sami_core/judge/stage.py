"""Stage entry points: `judge` and `write_constitution`.

judge run directory:
    judgments.jsonl  one judgment per line, appended as they are made (errors included;
                     the latest line per (pair_id, order) counts); compacted to one line
                     per judgment, in pair order, when the stage ends
    winrates.json    sami_core.stats.winrate_table rows
    outputs.json     counts, win rate, interval, LC win rate, flip rate, requests sent,
                     prompt and completion tokens (and their cost when the judge spec
                     gives prices)
A re-run on the same directory reuses every cached judgment (this run's and the shared
cache's) and sends only the rest; the job's tokens count every request it sent, over all
its runs (each new judgment's tokens are in its judgments.jsonl line until compaction).
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from sami_core import constitutions
from sami_core.contract import CONSTITUTION_FILE, JUDGMENTS_FILE, WINRATES_FILE
from sami_core.errors import ConstitutionError
from sami_core.judge.cache import JsonlFile, JudgmentCache, RequestEstimate, estimate_requests
from sami_core.judge.client import JudgeError, RequestFailed, complete_with_retries, make_client, provider_id
from sami_core.judge.pairs import load_responses, make_pairs
from sami_core.judge.runner import JudgeSettings, JudgeTask, RetryPolicy, judge_tasks, plan_tasks
from sami_core.judge.usage import cost_usd, usage_text
from sami_core.rundir import RunDir, atomic_write_json, atomic_write_text
from sami_core.spec import JudgeSpec, WriteConstitutionSpec
from sami_core.stats import flip_rate, winrate_table

SHARED_CACHE_NAME = "judge-cache.jsonl"


def _log(msg: str) -> None:
    print(f"[sami] {msg}", file=sys.stderr, flush=True)


def winrate_summary(table: list[dict]) -> str:
    """The win rates a judge job computed (sami_core.stats.winrate_table rows), as the
    Win rates page shows them: ``0.625 [0.306, 0.863] (n=8)`` for one group; for several
    (e.g. responses sampled at two temperatures) one such figure per group, named by the
    keys that differ (``T=0.0: 0.500 [...] (n=64); T=1.0: ...``); ``n/a`` for a group with
    no decided judgment."""
    def one(r: dict) -> str:
        wr = r.get("win_rate")
        if wr is None or wr != wr:
            return "n/a"
        return f"{wr:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] (n={r['n']})"

    if not table:
        return "n/a"
    if len(table) == 1:
        return one(table[0])
    varying = [k for k in ("candidate", "baseline", "judge_model", "temperature")
               if len({str(r.get(k)) for r in table}) > 1]
    names = {"temperature": "T", "judge_model": "judge"}
    return "; ".join(", ".join(f"{names.get(k, k)}={r.get(k)}" for k in varying) + f": {one(r)}" for r in table)


def shared_cache_path(spec: JudgeSpec) -> Path | None:
    if spec.shared_cache is None:
        return None
    p = Path(spec.shared_cache).expanduser()
    return p if p.suffix == ".jsonl" else p / SHARED_CACHE_NAME


def judge_settings(spec: JudgeSpec) -> JudgeSettings:
    return JudgeSettings(provider=provider_id(spec.judge), model=spec.judge.model, task=spec.task, seed=spec.seed,
                         shuffle_principles=spec.shuffle_principles, allow_tie=spec.allow_tie, order=spec.order,
                         template=spec.template, unparseable=spec.unparseable)


def plan_judge_job(spec: JudgeSpec, run_dir: str | Path | None = None) -> tuple[list[JudgeTask], JudgmentCache]:
    """The job's tasks and the cache it would read (its run dir's judgments and the shared cache)."""
    cand = load_responses(spec.candidate.path, spec.candidate.name, spec.candidate.temperature)
    base = load_responses(spec.baseline.path, spec.baseline.name, spec.baseline.temperature)
    explicit = spec.candidate.temperature is not None or spec.baseline.temperature is not None
    pairs = make_pairs(cand, base, join_on_temperature=not explicit)[: spec.limit]
    files = [Path(run_dir) / JUDGMENTS_FILE] if run_dir is not None else []
    cache = JudgmentCache(files, write_to=shared_cache_path(spec))
    return plan_tasks(pairs, judge_settings(spec)), cache


def estimate_judge_job(spec: JudgeSpec, run_dir: str | Path | None = None) -> RequestEstimate:
    """How many judgments a job has, how many are cached, how many it will send, and the
    tokens (and cost, with prices) of one request each (what the CLI shows before queueing
    a judge job)."""
    tasks, cache = plan_judge_job(spec, run_dir)
    est = estimate_requests(tasks, cache)
    if spec.judge.provider == "hf":
        return est  # local: no tokens billed
    completion = est.to_send * spec.judge.max_tokens
    return replace(est, max_completion_tokens=completion,
                   max_cost_usd=cost_usd(est.prompt_tokens, completion, spec.judge))


def _usage_of_lines(path: Path) -> tuple[int | None, int | None]:
    """Prompt and completion tokens over every judgment this run directory's log holds
    (None, None when no line reported usage)."""
    totals: list[int | None] = [None, None]
    for rec in JsonlFile(path).records():
        for i, k in enumerate(("prompt_tokens", "completion_tokens")):
            if rec.get(k) is not None and not rec.get("cached"):
                totals[i] = (totals[i] or 0) + int(rec[k])
    return totals[0], totals[1]


def run_judge(spec: JudgeSpec, run_dir: str | Path) -> dict:
    rd = RunDir(run_dir)
    if (done := rd.open_or_done("judge", spec)) is not None:
        return done
    tasks, cache = plan_judge_job(spec, rd.path)
    est = estimate_requests(tasks, cache)
    settings = judge_settings(spec)
    _log(f"judge: {spec.judge.provider} {spec.judge.model}: {est}")
    log = JsonlFile(rd / JUDGMENTS_FILE)
    total = len(tasks)
    state = {"done": 0, "last": 0.0}
    rd.progress("judge", 0, total, "judgments", "judging")

    def on_record(rec: dict) -> None:
        if not rec["cached"]:
            log.append(rec)
        state["done"] += 1
        now = time.monotonic()
        if now - state["last"] > 0.5 or state["done"] == total:
            state["last"] = now
            rd.progress("judge", state["done"], total, "judgments", f"{est.cached} cached")

    policy = RetryPolicy(spec.judge.max_attempts, spec.judge.backoff_initial_s, spec.judge.backoff_max_s,
                         spec.parse_retries)

    async def run():
        client = make_client(spec.judge) if est.to_send else None
        try:
            return await judge_tasks(tasks, client, cache, settings, concurrency=spec.judge.concurrency,
                                     policy=policy, on_record=on_record)
        finally:
            if client is not None:
                await client.aclose()

    report = asyncio.run(run())
    judgments = report.judgments
    prompt_tokens, completion_tokens = _usage_of_lines(rd / JUDGMENTS_FILE)  # before compaction drops them
    atomic_write_text(rd / JUDGMENTS_FILE, "".join(json.dumps(j, ensure_ascii=False) + "\n" for j in judgments))
    table = winrate_table(judgments, ci=spec.ci, seed=spec.seed)
    atomic_write_json(rd / WINRATES_FILE, table)
    fr, n_fr = flip_rate(judgments)
    row = table[0] if len(table) == 1 else {}
    counts = {v: sum(j["verdict"] == v for j in judgments) for v in ("win", "loss", "tie", "invalid", "error")}
    unparseable = sum(j["status"] == "invalid" for j in judgments)
    cost = cost_usd(prompt_tokens, completion_tokens, spec.judge)
    outputs = {
        "judgments": JUDGMENTS_FILE, "winrates": WINRATES_FILE, "n_pairs": est.pairs, "n_judgments": total,
        "wins": counts["win"], "losses": counts["loss"], "ties": counts["tie"], "invalid": counts["invalid"],
        "errors": counts["error"], "win_rate": row.get("win_rate"), "ci_low": row.get("ci_low"),
        "ci_high": row.get("ci_high"), "lc_win_rate": row.get("lc_win_rate"),
        "flip_rate": None if n_fr == 0 else fr, "n_flip_pairs": n_fr, "cached": report.cached,
        "requests_sent": report.sent, "judge_model": spec.judge.model, "provider": settings.provider,
        "template_version": settings.template_version,
        "template": "built-in" if spec.template is None else spec.template.name,
        "unparseable": unparseable, "unparseable_as": spec.unparseable,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "cost_usd": None if cost is None else round(cost, 6),
        "seconds": round(report.seconds, 2),
    }
    outputs = {k: (None if isinstance(v, float) and v != v else v) for k, v in outputs.items()}  # nan -> null
    status_msg = (f"{counts['win']} wins, {counts['loss']} losses, {counts['tie']} ties"
                  f"{f' ({unparseable} unparseable)' if spec.unparseable == 'tie' else ''}, "
                  f"{counts['invalid']} invalid, {counts['error']} errors")
    rd.progress("judge", total, total, "judgments", status_msg, "succeeded")
    rd.write_outputs(outputs)
    _log(f"judge: {status_msg}; win rate {winrate_summary(table)}; "
         f"{report.sent} requests sent, {report.cached} cached -> {rd / 'judgments.jsonl'}")
    _log(f"judge: {usage_text(prompt_tokens, completion_tokens, cost)}")
    if counts["error"]:
        _log(f"judge: {counts['error']} judgments failed after their retries (see `error` in judgments.jsonl); "
             "run again on the same directory to retry them")
    return outputs


# ---- write_constitution ---------------------------------------------------------------------
WRITER_TEMPLATE = """\
You are writing a constitution for an AI assistant whose task is: {task}

Write {n} principles the assistant's outputs should follow. For each principle, also write \
its antithesis: the opposite principle, phrased the same way (for example "Summaries should \
be concise." and "Summaries should be long-winded."). Each principle is one short sentence.

Answer with only a JSON list of {n} objects, each with the keys "principle" and "antithesis":
[{{"principle": "...", "antithesis": "..."}}]"""

_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL)


def parse_constitution_answer(text: str, name: str = "") -> constitutions.Constitution:
    """The JSON list in a writer's answer (fenced or bare), validated. Raises ConstitutionError."""
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    start, end = body.find("["), body.rfind("]")
    if start < 0 or end < start:
        raise ConstitutionError("the answer holds no JSON list of principles")
    try:
        data = json.loads(body[start: end + 1])
    except json.JSONDecodeError as err:
        raise ConstitutionError(f"the answer's JSON list does not parse: {err}") from None
    c = constitutions.from_native(data, name=name).validate()
    missing = [i for i, p in enumerate(c.principles, 1) if p.antithesis is None]
    if missing:
        raise ConstitutionError(f"principle(s) {missing} have no antithesis")
    return c


def run_write_constitution(spec: WriteConstitutionSpec, run_dir: str | Path) -> dict:
    """Ask the writer model for principles and antitheses; write constitution.json (native)."""
    rd = RunDir(run_dir)
    if (done := rd.open_or_done("write_constitution", spec)) is not None:
        return done
    if spec.writer.provider in ("hf", "rule"):
        raise JudgeError(f"writer.provider: {spec.writer.provider!r} can only judge; use an OpenAI-compatible "
                         "endpoint to write principles")
    prompt = WRITER_TEMPLATE.format(task=spec.task_description.strip(), n=spec.n_principles)
    rd.progress("write_constitution", 0, 1, "constitutions", "asking the writer")
    w = spec.writer

    async def ask() -> tuple[constitutions.Constitution, str, int]:
        client = make_client(w)
        problems = []
        try:
            for _ in range(spec.parse_retries + 1):
                try:
                    done, _n = await complete_with_retries(client, prompt, max_attempts=w.max_attempts,
                                                           backoff_initial_s=w.backoff_initial_s,
                                                           backoff_max_s=w.backoff_max_s)
                    text = done.text
                except RequestFailed as err:
                    raise JudgeError(f"the principle writer failed: {err}") from None
                try:
                    return parse_constitution_answer(text, name=spec.name or ""), text, client.sent
                except ConstitutionError as err:
                    problems.append(str(err))
                    atomic_write_text(rd / "writer_answer.txt", text)
            raise JudgeError(f"the writer gave no valid constitution in {spec.parse_retries + 1} answers "
                             f"({'; '.join(problems)}); its last answer is in writer_answer.txt")
        finally:
            await client.aclose()

    c, text, sent = asyncio.run(ask())
    data = c.to_native()
    payload = {"name": spec.name, "principles": data} if spec.name else data
    atomic_write_json(rd / CONSTITUTION_FILE, payload)
    atomic_write_text(rd / "writer_answer.txt", text)
    if len(data) != spec.n_principles:
        _log(f"write_constitution: asked for {spec.n_principles} principles, got {len(data)}")
    outputs = {"constitution": CONSTITUTION_FILE, "n_principles": len(data), "requests_sent": sent,
               "writer_model": w.model}
    rd.progress("write_constitution", 1, 1, "constitutions", f"{len(data)} principles", "succeeded")
    rd.write_outputs(outputs)
    _log(f"write_constitution: {len(data)} principles -> {rd / 'constitution.json'}")
    return outputs
