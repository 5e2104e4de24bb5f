"""Win-rate statistics of pairwise judgments (numpy only: the app imports this module).

A judgment's verdict is from the candidate's side: ``win``, ``loss``, ``tie``, ``invalid``
(the judge answered but named no choice) or ``error`` (no answer after all attempts).
Only wins, losses and ties are *decided*; invalid answers and errors are counted apart
and never enter a win rate.

    win rate = (wins + ties / 2) / decided
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # standard normal quantile for a two-sided 95% interval
SCORES = {"win": 1.0, "tie": 0.5, "loss": 0.0}
DECIDED = tuple(SCORES)

_WORD = re.compile(r"\S+")
_TOKEN = re.compile(r"\w+|[^\w\s]")


def win_rate(wins: int, losses: int, ties: int = 0) -> float:
    """(wins + ties/2) / (wins + losses + ties); nan when nothing was decided."""
    n = wins + losses + ties
    return (wins + ties / 2) / n if n else float("nan")


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion p = successes / n (successes may be
    fractional: ties count 1/2):

        centre = (p + z²/2n) / (1 + z²/n)
        half   = z · sqrt(p(1-p)/n + z²/4n²) / (1 + z²/n)

    (nan, nan) for n = 0.
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(scores: Sequence[float], n_boot: int = 2000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean score (1 win, 1/2 tie, 0 loss)."""
    s = np.asarray(scores, dtype=float)
    if s.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = s[rng.integers(0, s.size, size=(n_boot, s.size))].mean(axis=1)  # (n_boot,)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


def length_controlled_win_rate(scores: Sequence[float], len_candidate: Sequence[float],
                               len_baseline: Sequence[float], ridge: float = 1.0,
                               max_iter: int = 50, tol: float = 1e-10) -> float:
    """Win rate with the effect of length removed.

    Fit a logistic regression of the score y (1 win, 1/2 tie, 0 loss; ties are targets of
    1/2 in the Bernoulli log-likelihood) on the standardised length difference
    z = (len_c - len_b) / sd(len_c - len_b) (not centred: z = 0 means equal lengths),

        P(win) = sigmoid(b0 + b1 z),

    and return sigmoid(b0): the predicted win rate at equal lengths. Fitted by Newton
    (IRLS) steps with step halving. A ridge penalty ``ridge/2 · b1²`` on the slope keeps
    the fit finite under separation (e.g. "the longer response always wins"); the
    intercept is not penalised, so with all lengths equal the result is exactly the raw
    win rate. Degenerate cases: every score 1 (or 0) returns 1 (or 0); no data, nan.
    """
    y = np.asarray(scores, dtype=float)
    if y.size == 0:
        return float("nan")
    if np.all(y == y[0]) and y[0] in (0.0, 1.0):
        return float(y[0])
    d = np.asarray(len_candidate, dtype=float) - np.asarray(len_baseline, dtype=float)
    sd = d.std()
    z = d / sd if sd > 0 else np.zeros_like(d)
    x = np.stack([np.ones_like(z), z], axis=1)  # (n, 2)
    penalty = np.diag([0.0, ridge])

    def objective(b: np.ndarray) -> float:  # penalised negative log-likelihood
        eta = x @ b
        return float(np.sum(np.logaddexp(0.0, eta) - y * eta) + 0.5 * ridge * b[1] ** 2)

    m = float(np.clip(y.mean(), 1e-6, 1 - 1e-6))
    b = np.array([math.log(m / (1 - m)), 0.0])
    f = objective(b)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ b)))
        grad = x.T @ (p - y) + penalty @ b
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty + 1e-12 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-8:
            nb = b - t * step
            nf = objective(nb)
            if nf <= f + 1e-15:
                break
            t /= 2
        else:
            break
        b, df = nb, f - nf
        f = nf
        if df < tol and np.max(np.abs(t * step)) < 1e-8:
            break
    return float(1.0 / (1.0 + math.exp(-b[0])))


def count_words(text: str) -> int:
    """Whitespace-separated words."""
    return len(_WORD.findall(text or ""))


def count_tokens_approx(text: str) -> int:
    """A tokenizer-free token count: runs of word characters and single punctuation marks.
    Used where the model's own token count is not known (e.g. published responses)."""
    return len(_TOKEN.findall(text or ""))


def length_stats(texts: Iterable[str], n_tokens: Iterable[int | None] | None = None) -> dict[str, float]:
    """Mean length of responses from one source: {n, mean_words, mean_tokens}. Tokens are
    the model's own counts where given (None entries fall back to the approximation)."""
    texts = list(texts)
    toks = list(n_tokens) if n_tokens is not None else [None] * len(texts)
    if not texts:
        return {"n": 0, "mean_words": float("nan"), "mean_tokens": float("nan")}
    words = [count_words(t) for t in texts]
    tokens = [k if k is not None else count_tokens_approx(t) for t, k in zip(texts, toks)]
    return {"n": len(texts), "mean_words": float(np.mean(words)), "mean_tokens": float(np.mean(tokens))}


def flip_rate(judgments: Iterable[dict]) -> tuple[float, int]:
    """Position bias: among pairs judged in both orders with a decided verdict in each,
    the fraction whose verdict (from the candidate's side) differs between the orders.
    Returns (rate, number of such pairs); rate is nan when there are none."""
    by_pair: dict[Any, dict[str, str]] = {}
    for j in judgments:
        if j.get("verdict") in DECIDED:
            by_pair.setdefault(j["pair_id"], {})[j["order"]] = j["verdict"]
    both = [v for v in by_pair.values() if len(v) == 2]
    if not both:
        return float("nan"), 0
    flips = sum(1 for v in both if len(set(v.values())) > 1)
    return flips / len(both), len(both)


GROUP_KEYS = ("candidate", "baseline", "judge_model", "temperature")


def summarize(judgments: Sequence[dict], ci: str = "wilson", seed: int = 0) -> dict[str, Any]:
    """Counts, win rate, its 95% interval, LC win rate and mean lengths of one group.

    Lengths: ``words_candidate`` / ``words_baseline`` and ``tokens_candidate`` /
    ``tokens_baseline`` of each judgment (computed from its texts when missing).
    """
    counts = {k: 0 for k in ("win", "loss", "tie", "invalid", "error")}
    for j in judgments:
        v = j.get("verdict")
        counts[v if v in counts else "error"] += 1
    wins, losses, ties = counts["win"], counts["loss"], counts["tie"]
    n = wins + losses + ties
    decided = [j for j in judgments if j.get("verdict") in DECIDED]
    scores = [SCORES[j["verdict"]] for j in decided]
    if ci == "bootstrap":
        lo, hi = bootstrap_interval(scores, seed=seed)
    elif ci == "wilson":
        lo, hi = wilson_interval(wins + ties / 2, n)
    else:
        raise ValueError("ci must be 'wilson' or 'bootstrap'")
    lc = length_controlled_win_rate(scores, [_length(j, "words", "candidate") for j in decided],
                                    [_length(j, "words", "baseline") for j in decided])

    def mean(kind: str, side: str) -> float:
        vals = [_length(j, kind, side) for j in judgments]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "n": n, "wins": wins, "losses": losses, "ties": ties, "invalid": counts["invalid"],
        "errors": counts["error"], "win_rate": win_rate(wins, losses, ties), "ci_low": lo, "ci_high": hi,
        "lc_win_rate": lc,
        "mean_len_candidate": mean("words", "candidate"), "mean_len_baseline": mean("words", "baseline"),
        "mean_tokens_candidate": mean("tokens", "candidate"), "mean_tokens_baseline": mean("tokens", "baseline"),
    }


def _length(j: dict, kind: str, side: str) -> float:
    v = j.get(f"{kind}_{side}")
    if v is None:
        text = j.get(f"response_{side}", "")
        v = count_words(text) if kind == "words" else count_tokens_approx(text)
    return float(v)


def winrate_table(judgments: Iterable[dict], ci: str = "wilson", group_by: Sequence[str] = GROUP_KEYS,
                  seed: int = 0) -> list[dict[str, Any]]:
    """One row per (candidate, baseline, judge_model, temperature) group, sorted by those keys.

    Each row: the group keys, then n (decided), wins, losses, ties, invalid, errors,
    win_rate, ci_low, ci_high (95%, Wilson or bootstrap), lc_win_rate, mean_len_candidate /
    mean_len_baseline (words), mean_tokens_candidate / mean_tokens_baseline, and
    flip_rate / n_flip_pairs (pairs judged in both orders; nan / 0 otherwise).
    """
    groups: dict[tuple, list[dict]] = {}
    for j in judgments:
        groups.setdefault(tuple(j.get(k) for k in group_by), []).append(j)

    def sort_key(key: tuple) -> tuple:
        return tuple((v is None, str(v)) for v in key)

    rows = []
    for key in sorted(groups, key=sort_key):
        js = groups[key]
        fr, nfp = flip_rate(js)
        rows.append({**dict(zip(group_by, key)), **summarize(js, ci=ci, seed=seed),
                     "flip_rate": fr, "n_flip_pairs": nfp})
    return rows


# ---------------------------------------------------------------------------------------
# Held-out mutual information (stage `evaluate`): figures of N×N log-prob matrices.
# ---------------------------------------------------------------------------------------
MI_FIGURES = ("mi_lower_bound", "row_accuracy", "col_accuracy", "loss")


def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def _diag_accuracy(x: np.ndarray, tie_tol: float) -> np.ndarray:
    """Per query: mean over rows i of [x[i, i] is a row maximum] / (number of row maxima).

    x (Q, N, N). Values within ``tie_tol`` of the row maximum count as maxima, so a tie
    gets the credit of a random tie-break: a constant matrix scores 1/N (chance)."""
    n = x.shape[-1]
    is_max = x >= x.max(axis=-1, keepdims=True) - tie_tol  # (Q, N, N)
    hits = is_max[:, np.arange(n), np.arange(n)]  # (Q, N): the diagonal is a maximum
    return (hits / is_max.sum(axis=-1)).mean(axis=-1)  # (Q,)


def mi_per_query(matrices: np.ndarray | Sequence, tie_tol: float = 1e-6) -> dict[str, np.ndarray]:
    """Per-query figures of log-prob matrices L (Q, N, N), L[q, i, j] = log p(y_j | x_q, c_i).

    For query q, with the diagonal as labels (as the training loss, sami_core.loss):

        row_loss = -1/N Σ_i (L[i, i] - logsumexp_j L[i, j])   # which response belongs to c_i
        col_loss = -1/N Σ_j (L[j, j] - logsumexp_i L[i, j])   # which constitution produced y_j
        loss     = (row_loss + col_loss) / 2
        mi_lower_bound = log N - loss                          # InfoNCE bound, nats

    row_accuracy / col_accuracy: the fraction of rows (columns) whose maximum is on the
    diagonal, a tie (within ``tie_tol`` nats) counting 1/k for k tied maxima. Returns
    arrays of shape (Q,) keyed by :data:`MI_FIGURES`.
    """
    x = np.asarray(matrices, dtype=np.float64)
    if x.ndim != 3 or x.shape[1] != x.shape[2] or x.shape[1] < 2:
        raise ValueError(f"matrices must have shape (Q, N, N) with N >= 2; got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("matrices hold a non-finite log-prob")
    n = x.shape[-1]
    diag = np.diagonal(x, axis1=1, axis2=2)  # (Q, N)
    row_loss = -(diag - _logsumexp(x, axis=2)).mean(axis=1)  # (Q,)
    col_loss = -(diag - _logsumexp(x, axis=1)).mean(axis=1)  # (Q,)
    loss = (row_loss + col_loss) / 2
    return {
        "mi_lower_bound": math.log(n) - loss,
        "row_accuracy": _diag_accuracy(x, tie_tol),
        "col_accuracy": _diag_accuracy(np.swapaxes(x, 1, 2), tie_tol),
        "loss": loss,
    }


def mi_summary(matrices: np.ndarray | Sequence, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
               tie_tol: float = 1e-6) -> dict[str, Any]:
    """Means over queries of :func:`mi_per_query`'s figures, each with a percentile
    bootstrap interval over queries (one set of ``n_boot`` resamples, seeded, shared by
    every figure).

    Returns {n_queries, n_constitutions, chance_accuracy (1/N), and per figure F:
    F, F_ci_low, F_ci_high}. One query gives a zero-width interval.
    """
    per = mi_per_query(matrices, tie_tol=tie_tol)
    q = len(per["loss"])
    n = np.asarray(matrices).shape[-1]
    if q == 0:
        raise ValueError("matrices: no queries to summarise")
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    idx = np.random.default_rng(seed).integers(0, q, size=(n_boot, q))  # (n_boot, Q) resampled queries
    alpha = (1 - level) / 2
    out: dict[str, Any] = {"n_queries": q, "n_constitutions": int(n), "chance_accuracy": 1.0 / n}
    for name in MI_FIGURES:
        v = per[name]
        lo, hi = np.quantile(v[idx].mean(axis=1), [alpha, 1 - alpha])
        out[name] = float(v.mean())
        out[f"{name}_ci_low"] = float(lo)
        out[f"{name}_ci_high"] = float(hi)
    return out
