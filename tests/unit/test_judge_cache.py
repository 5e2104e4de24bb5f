"""The judgment cache (JSONL files), its keys and the request estimate."""

from __future__ import annotations

import json
from pathlib import Path

from sami_core.judge.cache import JsonlFile, JudgmentCache, cache_key, estimate_requests
from sami_core.judge.pairs import Pair
from sami_core.judge.runner import JudgeSettings, plan_tasks

BASE = dict(provider="openai", model="gpt-4", template_version="v1", options={"seed": 0}, query="q",
            constitution="1. c", response_a="a", response_b="b")


def test_cache_key_covers_every_input():
    k = cache_key(**BASE)
    assert k == cache_key(**BASE)
    for field, other in [("provider", "azure:x"), ("model", "gpt-4o"), ("template_version", "v2"),
                         ("options", {"seed": 1}), ("query", "q2"), ("constitution", "1. d")]:
        assert cache_key(**{**BASE, field: other}) != k, field
    assert cache_key(**{**BASE, "response_a": "b", "response_b": "a"}) != k  # the order shown


def test_cache_reads_files_skips_cut_lines_and_errors(tmp_path: Path):
    f = tmp_path / "j.jsonl"
    f.write_text(json.dumps({"cache_key": "k1", "status": "ok", "choice": "A"}) + "\n"
                 + json.dumps({"cache_key": "k2", "status": "error"}) + "\n"
                 + json.dumps({"cache_key": "k3", "status": "invalid", "choice": None}) + "\n"
                 + '{"cache_key": "k4", "sta')  # cut by a crash
    shared = tmp_path / "shared" / "cache.jsonl"
    c = JudgmentCache([f], write_to=shared)
    assert "k1" in c and "k3" in c and "k2" not in c and "k4" not in c and len(c) == 2
    c.put({"cache_key": "k5", "status": "ok", "choice": "B"})
    c.put({"cache_key": "k6", "status": "error"})  # errors are not cached
    assert JudgmentCache([], write_to=shared).get("k5")["choice"] == "B"
    assert "k6" not in JudgmentCache([shared])
    # appending after a cut line starts a fresh line
    JsonlFile(f).append({"cache_key": "k7", "status": "ok", "choice": "A"})
    assert "k7" in JudgmentCache([f]) and "k1" in JudgmentCache([f])


def _pairs(n: int) -> list[Pair]:
    return [Pair(f"{i}@0.0", str(i), f"q{i}", "1. c", 0.0, f"cand {i}", f"base {i}", "c", "b") for i in range(n)]


def test_estimate_counts_cached_and_to_send(tmp_path: Path):
    s = JudgeSettings("openai", "gpt-4", order="both")
    tasks = plan_tasks(_pairs(5), s)
    assert len(tasks) == 10 and {t.order for t in tasks} == {"candidate_first", "baseline_first"}
    cache = JudgmentCache([], write_to=tmp_path / "c.jsonl")
    est = estimate_requests(tasks, cache)
    assert (est.pairs, est.judgments, est.cached, est.to_send) == (5, 10, 0, 10)
    for t in tasks[:3]:
        cache.put({"cache_key": t.cache_key, "status": "ok", "choice": "A"})
    est = estimate_requests(tasks, JudgmentCache([tmp_path / "c.jsonl"]))
    assert (est.cached, est.to_send) == (3, 7)
    assert "3 cached, 7 to send" in str(est)
    # another model: nothing cached
    other = plan_tasks(_pairs(5), JudgeSettings("openai", "gpt-4o", order="both"))
    assert estimate_requests(other, cache).cached == 0


def test_random_order_is_per_pair_and_seeded():
    tasks = plan_tasks(_pairs(200), JudgeSettings("openai", "m", order="random"))
    firsts = [t.order == "candidate_first" for t in tasks]
    assert len(tasks) == 200 and 70 < sum(firsts) < 130
    for t in tasks[:20]:
        a, b = t.shown
        assert t.prompt.index(a) < t.prompt.index(b)
    fixed = plan_tasks(_pairs(3), JudgeSettings("openai", "m", order="baseline_first"))
    assert all(t.shown == (t.pair.baseline, t.pair.candidate) for t in fixed)


def test_judge_api_path_imports_no_ml_stack_or_openai():
    import subprocess
    import sys

    code = ("import sys, sami_core.judge, sami_core.stats, sami_core.results\n"
            "print(' '.join(m for m in ('torch', 'transformers', 'openai') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[2], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == ""
