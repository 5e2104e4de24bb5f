"""sami_core.stats: each function against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sami_core.stats import (
    bootstrap_interval, count_tokens_approx, count_words, flip_rate, length_controlled_win_rate, length_stats,
    summarize, wilson_interval, win_rate, winrate_table,
)


def test_win_rate_counts_ties_as_half():
    assert win_rate(6, 3, 1) == pytest.approx(6.5 / 10)
    assert math.isnan(win_rate(0, 0, 0))


def test_wilson_interval_hand_values():
    # 7 of 10, z = 1.959964: z² = 3.841459, denom = 1 + 0.3841459 = 1.3841459,
    # centre = (0.7 + 0.1920729) / denom = 0.6444934,
    # half = z * sqrt(0.021 + 0.0096036) / denom = 1.959964 * 0.1749389 / 1.3841459 = 0.2477153
    lo, hi = wilson_interval(7, 10)
    assert lo == pytest.approx(0.6444934 - 0.2477153, abs=1e-6)
    assert hi == pytest.approx(0.6444934 + 0.2477153, abs=1e-6)
    assert (lo, hi) == pytest.approx((0.3967781, 0.8922087), abs=1e-6)
    # 0 of 10: lower bound 0, upper = z²/n / (1 + z²/n) = 0.3841459 / 1.3841459
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.3841459 / 1.3841459, abs=1e-6)
    # fractional successes (ties): 5.5 of 10 -> p = 0.55, symmetric about the Wilson centre
    lo, hi = wilson_interval(5.5, 10)
    centre = (0.55 + 0.1920729) / 1.3841459
    assert (lo + hi) / 2 == pytest.approx(centre, abs=1e-6)
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_bootstrap_interval_brackets_the_mean_and_is_seeded():
    scores = [1, 0, 1, 1, 0.5] * 20  # mean 0.7
    lo, hi = bootstrap_interval(scores, seed=3)
    assert lo < 0.7 < hi and hi - lo < 0.25
    assert bootstrap_interval(scores, seed=3) == (lo, hi)
    assert bootstrap_interval([1.0] * 10) == (1.0, 1.0)


def test_lc_win_rate_equals_raw_when_lengths_are_equal():
    y = [1, 1, 1, 0, 0.5, 1, 0]
    assert length_controlled_win_rate(y, [40] * 7, [40] * 7) == pytest.approx(win_rate(4, 2, 1), abs=1e-9)
    # equal per pair but varying across pairs: still no length difference
    assert length_controlled_win_rate(y, range(7), range(7)) == pytest.approx(4.5 / 7, abs=1e-9)


def test_lc_win_rate_removes_a_pure_length_bias():
    # The judge prefers longer responses and nothing else: P(win) = sigmoid(2 z).
    # The candidate is usually longer, so its raw win rate is high; at equal length, 1/2.
    rng = np.random.default_rng(0)
    z = rng.normal(0.8, 1.0, 4000)
    len_c, len_b = 100 + 30 * z, np.full(4000, 100.0)
    y = (rng.random(4000) < 1 / (1 + np.exp(-2 * z))).astype(float)
    assert y.mean() > 0.68
    assert length_controlled_win_rate(y, len_c, len_b) == pytest.approx(0.5, abs=0.03)


def test_lc_win_rate_keeps_a_quality_effect():
    # A judge with no length preference and a true 70% win rate: LC stays near 0.7.
    rng = np.random.default_rng(1)
    len_c, len_b = rng.normal(120, 30, 3000), rng.normal(100, 30, 3000)
    y = (rng.random(3000) < 0.7).astype(float)
    assert length_controlled_win_rate(y, len_c, len_b) == pytest.approx(0.7, abs=0.03)


def test_lc_win_rate_under_separation_is_finite():
    # "The longer always wins": perfectly separated; the ridge keeps the fit finite.
    d = np.linspace(-3, 3, 60)
    y = (d > 0).astype(float)
    with np.errstate(all="raise"):
        lc = length_controlled_win_rate(y, 100 + d, np.full(60, 100.0))
    assert lc == pytest.approx(0.5, abs=1e-6)  # symmetric design
    assert length_controlled_win_rate([1, 1, 1], [3, 4, 5], [1, 1, 1]) == 1.0
    assert length_controlled_win_rate([0, 0], [3, 4], [1, 1]) == 0.0
    assert math.isnan(length_controlled_win_rate([], [], []))


def test_length_counts():
    assert count_words("The post is  about\na cat.") == 6
    assert count_tokens_approx("The cat's hat.") == 6  # The cat ' s hat .
    s = length_stats(["a b c", "d e"], [None, 10])
    assert s == {"n": 2, "mean_words": 2.5, "mean_tokens": (3 + 10) / 2}


def _j(verdict, pair="p", order="candidate_first", cand="c", base="b", model="m", temp=0.0, wc=10, wb=10):
    return {"verdict": verdict, "pair_id": pair, "order": order, "candidate": cand, "baseline": base,
            "judge_model": model, "temperature": temp, "words_candidate": wc, "words_baseline": wb,
            "tokens_candidate": wc + 1, "tokens_baseline": wb + 1}


def test_flip_rate_counts_pairs_judged_in_both_orders():
    js = [_j("win", "1"), _j("win", "1", "baseline_first"),  # same
          _j("win", "2"), _j("loss", "2", "baseline_first"),  # flip
          _j("tie", "3"), _j("win", "3", "baseline_first"),  # flip
          _j("win", "4"), _j("error", "4", "baseline_first"),  # not decided in both
          _j("loss", "5")]  # one order only
    assert flip_rate(js) == (pytest.approx(2 / 3), 3)
    assert math.isnan(flip_rate([_j("win")])[0])


def test_summarize_counts_errors_and_invalid_apart():
    js = [_j("win"), _j("win"), _j("loss"), _j("tie"), _j("invalid"), _j("error"), _j("error")]
    s = summarize(js)
    assert (s["n"], s["wins"], s["losses"], s["ties"], s["invalid"], s["errors"]) == (4, 2, 1, 1, 1, 2)
    assert s["win_rate"] == pytest.approx(2.5 / 4)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(wilson_interval(2.5, 4))
    assert s["lc_win_rate"] == pytest.approx(2.5 / 4, abs=1e-9)  # equal lengths
    assert s["mean_len_candidate"] == 10 and s["mean_tokens_baseline"] == 11


def test_winrate_table_groups_and_columns():
    js = [_j("win", cand="it1"), _j("loss", cand="it1"), _j("win", cand="it2"), _j("win", cand="it2", temp=1.0),
          _j("win", cand="it2", model="other", wc=20)]
    rows = winrate_table(js)
    keys = [(r["candidate"], r["judge_model"], r["temperature"]) for r in rows]
    assert keys == [("it1", "m", 0.0), ("it2", "m", 0.0), ("it2", "m", 1.0), ("it2", "other", 0.0)]
    need = {"candidate", "baseline", "judge_model", "n", "wins", "losses", "ties", "errors", "win_rate", "ci_low",
            "ci_high", "lc_win_rate", "mean_len_candidate", "mean_len_baseline"}
    assert all(need <= set(r) for r in rows)
    assert rows[0]["n"] == 2 and rows[0]["win_rate"] == 0.5
    assert rows[3]["mean_len_candidate"] == 20
    boot = winrate_table(js, ci="bootstrap")
    assert boot[0]["ci_low"] <= 0.5 <= boot[0]["ci_high"]
