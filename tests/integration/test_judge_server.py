"""The judge stage against a real HTTP server speaking the OpenAI API (tests/openai_server.py).

Verdicts are deterministic (the server prefers the longer response), faults are chosen
per prompt by a hash, so every test knows the exact counts and request totals to expect.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from sami_core import constitutions
from sami_core.errors import TransientError
from sami_core.judge.client import JudgeError, JudgeUnreachable
from sami_core.judge.runner import verdict_of
from sami_core.judge.stage import estimate_judge_job, plan_judge_job, run_judge, run_write_constitution
from sami_core.results import PUBLISHED_DIR
from sami_core.spec import validate_spec
from tests.openai_server import GARBAGE, OpenAIServer, expected_choice, fault_for, usage_of

ROOT = Path(__file__).resolve().parents[2]
CAND = str(PUBLISHED_DIR / "iteration-3-epoch-0.38-from-epoch-0.25-mistral-opus-constitution-temperature-0.0.json")
BASE = str(PUBLISHED_DIR / "base-mistral-opus-constitution-temperature-0.0.json")
FAST = {"timeout_s": 5.0, "backoff_initial_s": 0.01, "backoff_max_s": 0.5, "max_attempts": 4, "concurrency": 16}


def judge_spec(srv: OpenAIServer, limit: int = 60, **extra):
    judge = {"base_url": srv.base_url, "model": "gpt-test", "api_key_env": None, **FAST, **extra.pop("judge", {})}
    return validate_spec("judge", {"judge": judge, "candidate": {"path": CAND}, "baseline": {"path": BASE},
                                   "limit": limit, **extra})


def expect(spec, srv: OpenAIServer) -> tuple[dict, int]:
    """Exact verdict counts and request total the server's rules imply for this spec."""
    tasks, _ = plan_judge_job(spec)
    assert len({t.prompt for t in tasks}) == len(tasks)  # the server counts attempts per prompt
    counts = {v: 0 for v in ("win", "loss", "tie", "invalid", "error")}
    requests = 0
    for t in tasks:
        fault = fault_for(t.prompt, srv.faults, srv.always_garbage, srv.always_error)
        if fault == "always_garbage":
            counts["invalid"] += 1
            requests += spec.parse_retries + 1
        elif fault == "always_error":
            counts["error"] += 1
            requests += spec.judge.max_attempts
        else:
            choice = expected_choice(t.prompt, srv.prefer)
            counts[verdict_of("tie" if choice == "Tie" else choice, t.order)] += 1
            requests += 1 if fault is None else 1 + srv.fault_attempts
    return counts, requests


def outcome(out: dict) -> dict:
    return {"win": out["wins"], "loss": out["losses"], "tie": out["ties"], "invalid": out["invalid"],
            "error": out["errors"]}


def test_faulted_job_completes_with_exact_counts(tmp_path: Path):
    faults = {"429": 0.1, "500": 0.1, "timeout": 0.05, "garbage": 0.05}  # 30% of prompts faulted once
    with OpenAIServer(faults=faults, always_garbage=0.05, always_error=0.05, retry_after=0.05, hang_s=2.5) as srv:
        spec = judge_spec(srv, limit=100, judge={"timeout_s": 1.5})
        counts, requests = expect(spec, srv)
        assert counts["invalid"] and counts["error"] and counts["win"] and counts["loss"]
        out = run_judge(spec, tmp_path / "run")
        assert outcome(out) == counts
        assert srv.requests == requests == out["requests_sent"]
        lines = [json.loads(x) for x in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
        assert len(lines) == 100 and sum(j["verdict"] == "error" for j in lines) == counts["error"]
        err = next(j for j in lines if j["verdict"] == "error")
        assert "InternalServerError" in err["error"] and err["choice"] is None  # an error, never a tie
        ok = next(j for j in lines if j["status"] == "ok")
        assert ok["raw"].endswith(f"Final Response: {ok['choice']}") and ok["rationale"].startswith("Summary")
        assert ok["shown_first"] in ("candidate", "baseline") and ok["template_version"]
        table = json.loads((tmp_path / "run" / "winrates.json").read_text())
        assert table[0]["errors"] == counts["error"] and table[0]["invalid"] == counts["invalid"]
        assert out["win_rate"] == pytest.approx((counts["win"] + counts["tie"] / 2)
                                                / (counts["win"] + counts["loss"] + counts["tie"]))

        # a re-run retries only the errors (not cached); the server still fails them
        (tmp_path / "run" / "outputs.json").unlink()
        srv.reset()
        again = run_judge(spec, tmp_path / "run")
        assert outcome(again) == counts and srv.requests == counts["error"] * spec.judge.max_attempts


def test_retry_after_is_honoured(tmp_path: Path):
    with OpenAIServer(faults={"429": 1.0}, retry_after=0.4) as srv:
        spec = judge_spec(srv, limit=4, judge={"backoff_initial_s": 0.0})
        out = run_judge(spec, tmp_path / "run")
        assert out["errors"] == 0 and srv.requests == 8
        for times in srv.attempts.values():
            assert len(times) == 2 and times[1] - times[0] >= 0.38


def test_a_rate_limited_endpoint_slows_the_judge_down_and_every_pair_succeeds(tmp_path: Path):
    """The endpoint allows 20 requests/s and answers 429 with Retry-After beyond (as a
    provider does); 16 requests in flight would be 160/s at this latency. No pair may fail
    (rate limits are waited out, not counted as attempts), the judge must not hammer (429s
    well under one per pair: it lowers its concurrency), and it must keep close to the
    limit (the benchmark measures the efficiency; here a loaded machine's margin)."""
    rate, n = 20.0, 80
    with OpenAIServer(rate_limit=rate, latency_s=0.1) as srv:
        spec = judge_spec(srv, limit=n // 2, order="both", judge={"max_attempts": 2})  # 2 requests per pair
        t0 = time.monotonic()
        out = run_judge(spec, tmp_path / "run")
        seconds = time.monotonic() - t0
    assert out["errors"] == 0 and out["wins"] + out["losses"] + out["ties"] + out["invalid"] == n
    # seen: 37-59 429s for 60-80 requests; a client that ignored Retry-After would send
    # hundreds in these seconds (16 in flight, retrying every few ms)
    assert srv.within_limit == n and srv.limited < 2 * n, (srv.limited, n)
    assert n / seconds >= 0.5 * rate, f"{n / seconds:.1f} judgments/s against a limit of {rate:g}/s"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_fails_clearly(tmp_path: Path):
    spec = validate_spec("judge", {"judge": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key_env": None,
                                             **FAST, "max_attempts": 3},
                                   "candidate": {"path": CAND}, "baseline": {"path": BASE}, "limit": 5})
    t0 = time.monotonic()
    with pytest.raises(JudgeUnreachable, match=r"unreachable after 3 attempts .*retried later") as err:
        run_judge(spec, tmp_path / "run")
    assert isinstance(err.value, TransientError) and isinstance(err.value, JudgeError)  # exit 75: retried
    # Refused connections fail at once: even were every attempt to run into its timeout
    # and the longest backoff, it gives up within this; plus slack for a loaded machine.
    j = spec.judge
    assert time.monotonic() - t0 < j.max_attempts * (j.timeout_s + j.backoff_max_s) + 15
    progress = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert progress["status"] == "running" and progress["done"] == 0  # the CLI marks it failed


def test_endpoint_going_down_keeps_judgments_and_resumes(tmp_path: Path):
    with OpenAIServer(drop_after=20) as srv:
        spec = judge_spec(srv, limit=60, judge={"concurrency": 4, "max_attempts": 3})
        with pytest.raises(JudgeError, match="unreachable"):
            run_judge(spec, tmp_path / "run")
        kept = [json.loads(x) for x in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
        assert len(kept) == 20 and all(j["status"] == "ok" for j in kept)
        assert estimate_judge_job(spec, tmp_path / "run").to_send == 40
        srv.drop_after = None  # back up
        srv.reset()
        out = run_judge(spec, tmp_path / "run")
        assert srv.requests == 40 and out["cached"] == 20 and out["requests_sent"] == 40
        counts, _ = expect(spec, srv)
        assert outcome(out) == counts
        assert len((tmp_path / "run" / "judgments.jsonl").read_text().splitlines()) == 60


def test_cache_second_run_sends_nothing_and_estimate(tmp_path: Path):
    shared = tmp_path / "shared"
    with OpenAIServer() as srv:
        first = judge_spec(srv, limit=10, shared_cache=str(shared))
        run_judge(first, tmp_path / "a")
        assert srv.requests == 10 and (shared / "judge-cache.jsonl").exists()
        bigger = judge_spec(srv, limit=25, shared_cache=str(shared))
        est = estimate_judge_job(bigger)
        assert (est.pairs, est.judgments, est.cached, est.to_send) == (25, 25, 10, 15)
        srv.reset()
        out = run_judge(bigger, tmp_path / "b")
        assert srv.requests == 15 and out["cached"] == 10
        srv.reset()
        again = run_judge(bigger, tmp_path / "c")  # a new run dir, everything in the shared cache
        assert srv.requests == 0 and again["requests_sent"] == 0 and again["cached"] == 25
        assert outcome(again) == outcome(out)
        # another seed changes the A/B order and principle order: new prompts, nothing cached
        assert estimate_judge_job(judge_spec(srv, limit=25, shared_cache=str(shared), seed=7)).cached < 25


@pytest.mark.parametrize("prefer, flip", [("A", 1.0), ("longer", 0.0)])
def test_both_orders_reports_flip_rate(tmp_path: Path, prefer: str, flip: float):
    with OpenAIServer(prefer=prefer) as srv:
        spec = judge_spec(srv, limit=12, order="both")
        out = run_judge(spec, tmp_path / "run")
        assert out["n_judgments"] == 24 and srv.requests == 24
        if prefer == "A":  # a position-biased judge: every verdict flips with the order
            assert out["flip_rate"] == flip and out["wins"] == out["losses"] == 12
        else:  # ties (equal lengths) do not flip either
            assert out["flip_rate"] == flip and out["n_flip_pairs"] == 12


def _run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sami_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_planted_key_never_written(tmp_path: Path):
    key = f"sk-PLANTED-{uuid.uuid4().hex}"
    env = {"SAMI_TEST_JUDGE_KEY": key}
    outputs = []
    with OpenAIServer(expected_key=key, faults={"500": 0.2}) as srv:
        for name, judge in [
            ("openai", {"base_url": srv.base_url}),
            ("azure", {"provider": "azure", "azure_endpoint": srv.url, "api_version": "2024-06-01"}),
        ]:
            spec = {"judge": {**judge, "model": "judge-deploy", "api_key_env": "SAMI_TEST_JUDGE_KEY", **FAST},
                    "candidate": {"path": CAND}, "baseline": {"path": BASE}, "limit": 8,
                    "shared_cache": str(tmp_path / "cache")}
            (tmp_path / f"{name}.json").write_text(json.dumps(spec))
            proc = _run_cli(["judge", "--spec", str(tmp_path / f"{name}.json"), "--run-dir", str(tmp_path / name)],
                            env)
            assert proc.returncode == 0, proc.stderr
            outputs += [proc.stdout, proc.stderr]
        assert srv.auth_headers and set(srv.auth_headers) == {f"Bearer {key}", key}  # OpenAI, Azure
        assert set(srv.deployments) == {"judge-deploy"} and any("api-version=2024-06-01" in p for p in srv.paths)
        # a wrong key: the server refuses it, the job stops with a clear message
        # (without the shared cache, which holds every judgment by now)
        spec.pop("shared_cache")
        (tmp_path / "uncached.json").write_text(json.dumps(spec))
        srv.expected_key = "something-else"
        proc = _run_cli(["judge", "--spec", str(tmp_path / "uncached.json"), "--run-dir", str(tmp_path / "bad")], env)
        assert proc.returncode == 2 and "refused the request" in proc.stderr and "SAMI_TEST_JUDGE_KEY" in proc.stderr
        outputs += [proc.stdout, proc.stderr]
    # the key is missing from the environment: named, not guessed
    proc = _run_cli(["judge", "--spec", str(tmp_path / "uncached.json"), "--run-dir", str(tmp_path / "nokey")],
                    {"SAMI_TEST_JUDGE_KEY": ""})
    assert proc.returncode == 2 and "SAMI_TEST_JUDGE_KEY is not set" in proc.stderr
    for text in outputs:
        assert key not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) > 10
    for p in files:
        assert key.encode() not in p.read_bytes(), p


def test_cli_endpoint_down_exit_code(tmp_path: Path):
    spec = {"judge": {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key_env": None, **FAST,
                      "max_attempts": 2},
            "candidate": {"path": CAND}, "baseline": {"path": BASE}, "limit": 3}
    (tmp_path / "s.json").write_text(json.dumps(spec))
    proc = _run_cli(["judge", "--spec", str(tmp_path / "s.json"), "--run-dir", str(tmp_path / "run")], {})
    # transient: 75 (the queue retries it after a backoff), recorded for the worker under torchrun too
    assert proc.returncode == 75 and "unreachable after 2 attempts" in proc.stderr
    assert json.loads((tmp_path / "run" / "progress.json").read_text())["status"] == "failed"
    assert json.loads((tmp_path / "run" / "exit_status.json").read_text())["code"] == 75


def test_write_constitution_stage(tmp_path: Path):
    reply = "Here it is:\n```json\n" + json.dumps([
        {"principle": "Summaries should be concise.", "antithesis": "Summaries should be long-winded."},
        {"principle": "Summaries should be neutral.", "antithesis": "Summaries should take sides."},
        {"principle": "Summaries should be accurate.", "antithesis": "Summaries should invent details."},
    ]) + "\n```"
    with OpenAIServer(constitution_reply=reply, faults={"429": 1.0}, retry_after=0.01) as srv:
        spec = validate_spec("write_constitution", {
            "writer": {"base_url": srv.base_url, "model": "writer", "api_key_env": None, **FAST},
            "task_description": "summarise Reddit posts", "n_principles": 3, "name": "drafted"})
        out = run_write_constitution(spec, tmp_path / "w")
        assert out["n_principles"] == 3 and srv.requests == 2
        c = constitutions.load(tmp_path / "w" / "constitution.json").validate(2)
        assert c.name == "drafted" and c.principles[1].antithesis == "Summaries should take sides."
        srv.constitution_reply = "I cannot write principles."
        with pytest.raises(JudgeError, match="no valid constitution in 3 answers"):
            run_write_constitution(spec.model_copy(update={"n_principles": 2}), tmp_path / "w2")


def test_template_file_system_message_usage_cost_and_unparseable_as_ties(tmp_path: Path):
    """The paper's template: the client sends its system message; each job sums the usage
    the server reports over every request (parse retries included) and prices it; answers
    with no readable choice count as ties or apart, which moves the win rate as the
    formula says; the second run reuses the first's answers (cached: 0 tokens)."""
    prices = {"price_prompt_per_mtok": 2.5, "price_completion_per_mtok": 10.0}
    shared = str(tmp_path / "shared")
    with OpenAIServer(always_garbage=0.25) as srv:
        spec = judge_spec(srv, limit=24, judge=prices, template="paper", unparseable="tie", parse_retries=1,
                          shared_cache=shared)
        tasks, _ = plan_judge_job(spec)
        est = estimate_judge_job(spec)
        out = run_judge(spec, tmp_path / "tie")

        system = spec.template.system
        assert srv.systems and set(srv.systems.values()) == {system}  # sent with every prompt
        prompt_tokens = completion_tokens = requests = 0
        counts = {"win": 0, "loss": 0, "tie": 0}
        unparseable = 0
        for t in tasks:
            messages = [{"content": system}, {"content": t.prompt}]
            if fault_for(t.prompt, {}, srv.always_garbage) == "always_garbage":
                answers, verdict = [GARBAGE] * (spec.parse_retries + 1), "tie"
                unparseable += 1
            else:
                choice = expected_choice(t.prompt, srv.prefer)
                answers = [f"Comparison: Summary {choice} follows the principles better.\nFinal Response: {choice}"]
                verdict = verdict_of(choice, t.order)
            counts[verdict] += 1
            for a in answers:
                u = usage_of(messages, a)
                prompt_tokens += u["prompt_tokens"]
                completion_tokens += u["completion_tokens"]
                requests += 1
        assert 0 < unparseable < 24 and srv.requests == requests == out["requests_sent"]
        assert (out["prompt_tokens"], out["completion_tokens"]) == (prompt_tokens, completion_tokens)
        assert out["cost_usd"] == pytest.approx(prompt_tokens * 2.5e-6 + completion_tokens * 10e-6, abs=1e-6)
        assert (out["wins"], out["losses"], out["ties"], out["invalid"]) == (
            counts["win"], counts["loss"], counts["tie"], 0)
        assert out["unparseable"] == unparseable and out["unparseable_as"] == "tie" and out["template"] == "paper"
        n = counts["win"] + counts["loss"] + counts["tie"]
        assert out["win_rate"] == pytest.approx((counts["win"] + counts["tie"] / 2) / n)
        lines = [json.loads(x) for x in (tmp_path / "tie" / "judgments.jsonl").read_text().splitlines()]
        assert sum(j["prompt_tokens"] for j in lines) == prompt_tokens  # per judgment, summed per job
        # before sending: one request per judgment, prompts counted approximately
        words = sum(len(system.split()) + len(t.prompt.split()) for t in tasks)
        assert words <= est.prompt_tokens <= 2 * words
        assert est.max_completion_tokens == 24 * spec.judge.max_tokens
        assert est.max_cost_usd == pytest.approx(est.prompt_tokens * 2.5e-6 + est.max_completion_tokens * 10e-6)

        srv.reset()
        apart = run_judge(spec.model_copy(update={"unparseable": "apart"}), tmp_path / "apart")
        assert srv.requests == 0 and apart["cached"] == 24
        assert (apart["prompt_tokens"], apart["completion_tokens"], apart["cost_usd"]) == (None, None, None)
        assert (apart["ties"], apart["invalid"]) == (counts["tie"] - unparseable, unparseable)
        decided = counts["win"] + counts["loss"] + counts["tie"] - unparseable
        assert apart["win_rate"] == pytest.approx((counts["win"] + (counts["tie"] - unparseable) / 2) / decided)


def test_a_server_without_usage_reports_none(tmp_path: Path):
    with OpenAIServer(usage=False) as srv:
        out = run_judge(judge_spec(srv, limit=3), tmp_path / "run")
        assert srv.requests == 3 and out["wins"] + out["losses"] + out["ties"] == 3
        assert out["prompt_tokens"] is None and out["cost_usd"] is None
