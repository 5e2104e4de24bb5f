"""The Streamlit-free helpers of the Training, Responses and Win rates pages
(app/training.py, app/responses.py, app/winrates.py)."""

from __future__ import annotations

import csv
import io

from app import responses, training, winrates
from services import exports, judging, results


def wr_row(candidate: str, baseline: str = "base", exp: int | None = None, **kw) -> dict:  # noqa: ANN003
    row = {c: None for c in exports.WINRATE_COLUMNS}
    row.update(experiment_id=exp, candidate=candidate, baseline=baseline, judge_model="j", temperature=0.0, n=4,
               win_rate=0.5, ci_low=0.2, ci_high=0.8, lc_win_rate=0.5)
    row.update(kw)
    return row


def test_checkpoints_order_by_iteration_and_step_then_by_numbers_in_labels():
    sources = [{"label": "late", "experiment_id": 1, "iteration": 1, "step": 64},
               {"label": "early", "experiment_id": 1, "iteration": 1, "step": 32},
               {"label": "it2", "experiment_id": 1, "iteration": 2, "step": 8}]
    rows = [wr_row("it2", exp=1), wr_row("late", exp=1), wr_row("early", exp=1),
            wr_row("iteration-10-x"), wr_row("iteration-2-x"), wr_row("instruct")]
    got = [r["candidate"] for r in winrates.shown_rows(rows, sources)]
    assert got == ["early", "late", "it2", "instruct", "iteration-2-x", "iteration-10-x"]


def test_filters_keep_matching_rows_only():
    rows = [wr_row("a", "base"), wr_row("a", "instruct"), wr_row("b", "base", temperature=1.0)]
    assert [r["baseline"] for r in winrates.shown_rows(rows, [], baseline="instruct")] == ["instruct"]
    assert [r["candidate"] for r in winrates.shown_rows(rows, [], temperature=1.0)] == ["b"]
    assert winrates.shown_rows(rows, [], judge_model="other") == []
    assert winrates.options(rows, "baseline") == ["base", "instruct"]


def test_chart_frame_prefixes_experiments_only_when_several():
    one = winrates.chart_frame([wr_row("it-1", exp=3), wr_row("it-2", exp=3)])
    assert list(one["checkpoint"]) == ["it-1", "it-2"]
    two = winrates.chart_frame([wr_row("it-1", exp=3), wr_row("it-1", exp=4), wr_row("imported")])
    assert list(two["checkpoint"]) == ["e3/it-1", "e4/it-1", "imported"]
    ids = winrates.table_frame([wr_row("a", exp=3), wr_row("b")])["experiment_id"]
    assert str(ids.dtype) == "Int64" and ids[0] == 3 and ids.isna()[1]
    assert list(winrates.table_frame([]).columns) == list(exports.WINRATE_COLUMNS)


def test_csv_has_the_columns_and_neutralises_formulas_like_write_csv(tmp_path):
    rows = [wr_row("=HYPERLINK(1)"), wr_row("it-2", win_rate=0.625)]
    data = winrates.to_csv(rows)
    parsed = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert list(parsed[0]) == list(exports.WINRATE_COLUMNS)
    assert parsed[0]["candidate"] == "'=HYPERLINK(1)" and parsed[1]["win_rate"] == "0.625"
    # byte for byte what the CLI's export writes
    path = exports.write_csv(rows, exports.WINRATE_COLUMNS, tmp_path, "w.csv")
    assert path.read_bytes() == data


def test_responses_helpers():
    sources = [{"id": 1, "label": "base", "kind": "baseline"}, {"id": 2, "label": "ck1", "kind": "checkpoint"},
               {"id": 3, "label": "ck2", "kind": "checkpoint"}, {"id": 4, "label": "f", "kind": "import"}]
    assert responses.default_pair(sources) == (3, 1)
    assert responses.default_pair(sources[3:]) == (4, 4)
    imports = [{"id": 5, "label": "a", "kind": "import"}, {"id": 6, "label": "b", "kind": "import"}]
    assert responses.default_pair(imports) == (6, 5)
    assert responses.default_pair([]) == (None, None)
    assert responses.lengths("Hello, world again", None) == "~4 tokens · 3 words"
    assert responses.lengths("Hello world", 7) == "7 tokens · 2 words"
    assert responses.principles_text([{"principle": "a"}, {"principle": "b"}]) == "1. a\n2. b"
    j = {"candidate_id": 9, "judge_model": "m", "verdict": "baseline", "candidate_position": "B"}
    assert responses.verdict_line(j, 8, ("L", "R")) == "m: baseline won (candidate = right: R, shown second)"
    assert responses.VERDICT_FILTERS["not judged"] == "none"


def test_training_helpers():
    jobs = [{"id": 7, "iteration": 2}, {"id": 5, "iteration": 1}, {"id": 9, "iteration": None, "name": "by hand"}]
    rows = [{"job_id": 5, "step": 1, "name": "loss", "value": 1.0},
            {"job_id": 7, "step": 1, "name": "loss", "value": 2.0},
            {"job_id": 9, "step": 1, "name": "loss", "value": 3.0}]
    df = training.metrics_frame(rows, jobs)
    assert list(df["iteration"]) == ["iteration 2", "iteration 1", "by hand"]  # the jobs' order
    assert training.metrics_frame([], jobs).empty
    m = training.matrix_frame([[1, 2], [3, 4]])
    assert list(m.index) == ["c_1", "c_2"] and list(m.columns) == ["y_1", "y_2"] and m.iloc[1, 0] == 3.0
    assert set(training.PLOTTED) >= {"loss", "mi_lower_bound", "row_accuracy", "col_accuracy", "kl", "lr",
                                          "grad_norm"}


def test_short_labels_cut_what_every_label_shares_so_the_difference_shows():
    labels = ["iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0",
              "iteration-1-epoch-0.12-mistral-mistral-constitution-temperature-0.0",
              "base-mistral-opus-constitution-temperature-0.0"]
    assert list(responses.short_labels(labels).values()) == [
        "iteration-1-epoch-0.12-mistral-opus…", "iteration-1-epoch-0.12-mistral-mistral…", "base-mistral-opus…"]
    assert responses.short_labels(["run-a-x", "run-b-x"]) == {"run-a-x": "…a…", "run-b-x": "…b…"}
    assert responses.short_labels(["a", "a-b"]) == {"a": "a", "a-b": "a-b"}  # one word always stays
    assert responses.short_labels(["only-one"]) == {"only-one": "only-one"}


def test_highlight_escapes_everything_and_marks_each_match():
    out = responses.highlight_html("<b>Cat</b> & cat\n", "CAT")
    assert "&lt;b&gt;<mark>Cat</mark>&lt;/b&gt; &amp; <mark>cat</mark>\n" in out and "<b>" not in out
    assert "<mark>" not in responses.highlight_html("a.b", "") and "<mark>a.b</mark>" in responses.highlight_html(
        "xa.by", "a.b")  # the needle is literal, not a pattern


def test_generated_page_picks_the_experiments_latest_job_with_rows():
    from app import generated

    jobs = [{"id": 9, "experiment_id": 2, "n_rows": 0}, {"id": 7, "experiment_id": 2, "n_rows": 40},
            {"id": 5, "experiment_id": 1, "n_rows": 10}]  # newest first
    assert generated.default_job(jobs) == 7 and generated.default_job(jobs, 1) == 5
    assert generated.default_job(jobs, 3) == 7 and generated.default_job([]) is None
    counts = [{"dropped_by": None, "queries": 8, "responses": 16}, {"dropped_by": "ends_with", "queries": 4,
                                                                     "responses": 4}]
    assert generated.status_choices(counts) == ["all", "kept", "dropped", "ends_with"]
    assert generated.kept_summary(counts, 12) == "kept 8 of 12 queries (16 of 20 responses) for training"
