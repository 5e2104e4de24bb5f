"""sami_core.stats.mi_per_query / mi_summary: held-out MI figures against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sami_core.stats import mi_per_query, mi_summary


def test_constant_matrix_gives_bound_zero_and_chance_accuracy():
    # Every response equally likely under every constitution: loss = log N, bound = 0;
    # every row and column is an N-way tie, credited 1/N.
    for n in (2, 3, 4):
        s = mi_summary(np.full((5, n, n), -2.5), n_boot=200)
        assert s["loss"] == pytest.approx(math.log(n), abs=1e-12)
        assert s["mi_lower_bound"] == pytest.approx(0.0, abs=1e-12)
        assert s["row_accuracy"] == s["col_accuracy"] == pytest.approx(1 / n)
        assert s["chance_accuracy"] == pytest.approx(1 / n)
        assert (s["n_queries"], s["n_constitutions"]) == (5, n)


def test_hand_computed_two_by_two():
    # diag 0, off-diagonal -ln 3: softmax of each row (and column) puts 3/4 on the diagonal,
    # so loss = -ln(3/4) and bound = ln 2 - ln(4/3) = ln(3/2).
    m = np.array([[[0.0, -math.log(3)], [-math.log(3), 0.0]]])
    per = mi_per_query(m)
    assert per["loss"][0] == pytest.approx(math.log(4 / 3), abs=1e-12)
    assert per["mi_lower_bound"][0] == pytest.approx(math.log(1.5), abs=1e-12)
    assert per["row_accuracy"][0] == per["col_accuracy"][0] == 1.0


def test_strongly_diagonal_matrix_has_accuracy_one_and_bound_near_log_n():
    n = 4
    m = np.full((3, n, n), -50.0) + np.eye(n) * 49.0  # diagonal -1, elsewhere -50
    s = mi_summary(m, n_boot=100)
    assert s["row_accuracy"] == s["col_accuracy"] == 1.0
    assert s["mi_lower_bound"] == pytest.approx(math.log(n), abs=1e-12)
    assert s["mi_lower_bound_ci_low"] == pytest.approx(math.log(n), abs=1e-12)


def test_row_and_column_accuracy_differ_and_ties_count_fractionally():
    # rows: every diagonal entry is its row's maximum -> 1.
    # columns: column 0 = [0, 0, -1] ties rows 0 and 1 (credit 1/2); columns 1, 2 hit -> 5/6.
    m = np.array([[[0.0, -1.0, -1.0], [0.0, 0.5, -1.0], [-1.0, -1.0, 0.0]]])
    per = mi_per_query(m)
    assert per["row_accuracy"][0] == pytest.approx(1.0)
    assert per["col_accuracy"][0] == pytest.approx(5 / 6)


def test_mean_matches_the_training_loss():
    torch = pytest.importorskip("torch")
    from sami_core.loss import sami_loss

    rng = np.random.default_rng(0)
    m = rng.normal(-3.0, 1.0, size=(7, 3, 3))
    out = sami_loss(torch.tensor(m))
    s = mi_summary(m, n_boot=50)
    assert s["loss"] == pytest.approx(float(out.loss), abs=1e-5)
    assert s["mi_lower_bound"] == pytest.approx(float(out.mi_lower_bound), abs=1e-5)


def test_bootstrap_interval_over_queries_by_hand():
    # Two queries with bounds ln 2 (perfectly separated, to float precision) and 0 (constant).
    # Resampling 2 of 2 gives means {0, ln2/2, ln2}; each extreme has probability 1/4,
    # so the 2.5% and 97.5% quantiles of 4000 resamples are the extremes.
    sep = np.array([[0.0, -1e3], [-1e3, 0.0]])
    m = np.stack([sep, np.zeros((2, 2))])
    s = mi_summary(m, n_boot=4000, seed=1)
    assert s["mi_lower_bound"] == pytest.approx(math.log(2) / 2)
    assert s["mi_lower_bound_ci_low"] == pytest.approx(0.0, abs=1e-12)
    assert s["mi_lower_bound_ci_high"] == pytest.approx(math.log(2))
    # seeded: the same seed gives the same interval, and the interval holds the mean
    assert mi_summary(m, n_boot=4000, seed=1) == s
    one = mi_summary(m[:1], n_boot=100)
    assert one["mi_lower_bound_ci_low"] == one["mi_lower_bound"] == one["mi_lower_bound_ci_high"]


def test_bootstrap_interval_narrows_with_more_queries():
    rng = np.random.default_rng(3)
    few = mi_summary(rng.normal(size=(8, 2, 2)), seed=0)
    many = mi_summary(rng.normal(size=(512, 2, 2)), seed=0)
    width = lambda s: s["mi_lower_bound_ci_high"] - s["mi_lower_bound_ci_low"]  # noqa: E731
    assert few["mi_lower_bound_ci_low"] <= few["mi_lower_bound"] <= few["mi_lower_bound_ci_high"]
    assert width(many) < width(few) / 3


@pytest.mark.parametrize("bad, match", [
    (np.zeros((2, 2, 3)), "shape"), (np.zeros((2, 1, 1)), "N >= 2"), (np.zeros((2, 2)), "shape"),
    (np.array([[[0.0, np.nan], [0.0, 0.0]]]), "non-finite"),
])
def test_bad_matrices_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        mi_per_query(bad)
