"""services.judging's pure parts: win-rate rows from database judgments (hand-computed),
CSV writing (formula cells neutralised, names confined to the folder), results files."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from sami_core.results import PUBLISHED_DIR
from services import exports, judging, results


def row(verdict: str, cand: str = "one two three", base: str = "one", order: str = "candidate_first") -> dict:
    return {"experiment_id": None, "candidate": "iteration-1", "baseline": "base", "judge_model": "m", "verdict": verdict,
            "query_id": "0", "temperature": 0.0, "order": order, "candidate_text": cand, "baseline_text": base,
            "candidate_tokens": None, "baseline_tokens": None}


def test_winrates_count_ties_as_half_and_keep_invalid_apart() -> None:
    rows = [row("win"), row("win"), row("win"), row("loss"), row("tie"), row("invalid")]
    (r,) = exports.winrates(rows)
    assert (r["n"], r["wins"], r["losses"], r["ties"], r["invalid"], r["errors"]) == (5, 3, 1, 1, 1, 0)
    assert r["win_rate"] == pytest.approx((3 + 0.5) / 5)
    assert r["ci_low"] < r["win_rate"] < r["ci_high"]
    assert (r["mean_len_candidate"], r["mean_len_baseline"]) == (3.0, 1.0)
    assert list(r) == list(exports.WINRATE_COLUMNS)


def test_winrates_of_nothing_decided_are_empty_not_nan() -> None:
    (r,) = exports.winrates([row("invalid")])
    assert r["n"] == 0 and r["win_rate"] is None and r["lc_win_rate"] is None


def test_write_csv_neutralises_formulas_and_refuses_escaping_names(tmp_path: Path) -> None:
    path = exports.write_csv([{"a": "=cmd|' /C calc'!A0", "b": "+1"}, {"a": "plain", "b": 2}], ["a", "b"],
                             tmp_path, "out.csv")
    with open(path, encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == [["a", "b"], ["'=cmd|' /C calc'!A0", "'+1"], ["plain", "2"]]
    for bad in ("../x.csv", "/tmp/x.csv", ""):
        with pytest.raises(judging.JudgingError):
            exports.write_csv([], ["a"], tmp_path, bad)
    assert not (tmp_path.parent / "x.csv").exists()


def test_results_files_take_files_and_folders_once(tmp_path: Path) -> None:
    one = sorted(PUBLISHED_DIR.glob("*.json"))[0]
    files = results.results_files([PUBLISHED_DIR, one])
    assert len(files) == 10 and files == results.shipped_results()
    with pytest.raises(judging.JudgingError, match="no such file"):
        results.results_files([tmp_path / "missing.json"])
    with pytest.raises(judging.JudgingError, match="no \\*.json"):
        results.results_files([tmp_path])
