"""app/charts.py: each figure from a small hand-made frame, its traces and values checked."""

from __future__ import annotations

import pandas as pd

from app import charts


def metrics_df() -> pd.DataFrame:
    rows = [("iteration 1", s, n, v) for s in (1, 2, 3) for n, v in (("loss", 0.7 - 0.1 * s), ("row_accuracy", 0.5),
                                                                         ("col_accuracy", 0.4))]
    rows += [("iteration 2", s, "loss", 0.4 - 0.1 * s) for s in (2, 1)]  # out of step order
    return pd.DataFrame(rows, columns=["iteration", "step", "name", "value"])


def test_training_figure_has_one_trace_per_iteration_sorted_by_step():
    fig = charts.training_figure(metrics_df(), ("loss",), "Loss")
    assert [t.name for t in fig.data] == ["iteration 1", "iteration 2"]
    assert list(fig.data[1].x) == [1, 2] and list(fig.data[1].y) == [0.30000000000000004, 0.2]
    assert fig.layout.title.text == "Loss" and fig.layout.xaxis.title.text == "step"


def test_training_figure_with_two_metrics_names_each_trace_and_skips_missing_ones():
    fig = charts.training_figure(metrics_df(), ("row_accuracy", "col_accuracy"), "Accuracy")
    assert [t.name for t in fig.data] == ["iteration 1 · row_accuracy", "iteration 1 · col_accuracy"]
    assert fig.data[1].line.dash == "dash"
    assert len(charts.training_figure(metrics_df(), ("kl",), "KL").data) == 0
    empty = pd.DataFrame(columns=["iteration", "step", "name", "value"])
    assert len(charts.training_figure(empty, ("loss",), "Loss").data) == 0


def test_training_figure_adds_held_out_lines_only_where_they_were_logged():
    fig = charts.training_figure(metrics_df(), ("loss", "eval_loss"), "Loss")
    assert [t.name for t in fig.data] == ["iteration 1", "iteration 2"]  # no held-out evaluation: as before
    held_out = pd.DataFrame([("iteration 1", s, "eval_loss", 0.69 - 0.05 * s) for s in (0, 3)],
                            columns=["iteration", "step", "name", "value"])
    fig = charts.training_figure(pd.concat([metrics_df(), held_out]), ("loss", "eval_loss"), "Loss")
    assert [t.name for t in fig.data] == ["iteration 1 · loss", "iteration 1 · eval_loss", "iteration 2 · loss"]
    assert list(fig.data[1].x) == [0, 3] and fig.data[1].line.dash == "dash"


def test_logprob_heatmap_keeps_rows_as_constitutions_and_writes_values():
    m = pd.DataFrame([[-1.0, -2.5], [-3.0, -0.5]], index=["c_1", "c_2"], columns=["y_1", "y_2"])
    fig = charts.logprob_heatmap(m, "step 4")
    (h,) = fig.data
    assert h.type == "heatmap" and [list(r) for r in h.z] == [[-1.0, -2.5], [-3.0, -0.5]]
    assert list(h.y) == ["c_1", "c_2"] and list(h.x) == ["y_1", "y_2"]
    assert h.text[0][1] == "-2.500" and fig.layout.title.text == "step 4"


def winrate_df() -> pd.DataFrame:
    rows = []
    for ck, wr, lc in (("iteration-1", 0.6, 0.55), ("iteration-2", 0.7, 0.62)):
        for base in ("base", "instruct"):
            rows.append({"checkpoint": ck, "candidate": ck, "baseline": base, "temperature": 0.0, "judge_model": "j",
                         "n": 10, "win_rate": wr, "ci_low": wr - 0.2, "ci_high": wr + 0.1, "lc_win_rate": lc,
                         "mean_len_candidate": 30.0 if ck == "iteration-1" else 40.0,
                         "mean_len_baseline": 20.0 if base == "base" else 50.0})
    return pd.DataFrame(rows)


def test_winrate_figure_traces_per_baseline_with_asymmetric_interval_bars():
    fig = charts.winrate_figure(winrate_df())
    assert [t.name for t in fig.data] == ["vs base", "vs instruct"]
    t = fig.data[0]
    assert list(t.x) == ["iteration-1", "iteration-2"] and list(t.y) == [0.6, 0.7]
    assert [round(v, 9) for v in t.error_y.array] == [0.1, 0.1]
    assert [round(v, 9) for v in t.error_y.arrayminus] == [0.2, 0.2]
    assert list(fig.layout.xaxis.categoryarray) == ["iteration-1", "iteration-2"]
    assert fig.layout.shapes[0].y0 == 0.5  # the "as good as the baseline" line


def test_winrate_figure_length_controlled_plots_lc_without_bars():
    fig = charts.winrate_figure(winrate_df(), length_controlled=True)
    assert list(fig.data[0].y) == [0.55, 0.62]
    assert fig.data[0].error_y.array is None
    assert "Length-controlled" in fig.layout.title.text


def test_winrate_traces_split_by_temperature_and_judge_only_when_they_vary():
    df = winrate_df()
    df.loc[df.index[1:], "temperature"] = 1.0
    names = {t.name for t in charts.winrate_figure(df).data}
    assert names == {"vs base · T=0.0", "vs base · T=1.0", "vs instruct · T=1.0"}
    df = winrate_df().assign(judge_model=["a", "b", "a", "b"])
    assert {t.name for t in charts.winrate_figure(df).data} == {"vs base · a", "vs instruct · b"}


def test_length_figure_shows_checkpoints_once_and_each_baseline():
    fig = charts.length_figure(winrate_df())
    assert [t.name for t in fig.data] == ["checkpoints", "base (baseline)", "instruct (baseline)"]
    assert list(fig.data[0].x) == ["iteration-1", "iteration-2"] and list(fig.data[0].y) == [30.0, 40.0]
    assert list(fig.data[2].y) == [50.0, 50.0] and fig.data[2].line.dash == "dot"
    df = winrate_df().assign(temperature=[0.0, 0.0, 1.0, 1.0])
    assert [t.name for t in charts.length_figure(df).data][:2] == ["checkpoints · T=0.0", "checkpoints · T=1.0"]


def test_long_checkpoint_labels_are_cut_on_the_axis_only():
    df = winrate_df().assign(checkpoint=lambda d: d["checkpoint"] + "-" + "x" * 40)
    fig = charts.winrate_figure(df)
    assert all(len(t) <= charts.TICK_CHARS for t in fig.layout.xaxis.ticktext)
    assert list(fig.layout.xaxis.tickvals) == list(fig.data[0].x)  # full labels in the data and hover


def test_empty_frames_give_empty_figures():
    empty = winrate_df().iloc[0:0]
    assert len(charts.winrate_figure(empty).data) == 0 and len(charts.length_figure(empty).data) == 0


def test_sweep_figure_plots_the_outcome_against_the_first_path_one_trace_per_other_values():
    df = pd.DataFrame([{"training.lr": lr, "training.beta": b, "point": f"lr={lr:g} beta={b:g}",
                        "win rate": None if (lr, b) == (1e-5, 0.1) else lr * 1e4 + b}
                       for lr in (1e-7, 1e-6, 1e-5) for b in (0.0, 0.1)])
    fig = charts.sweep_figure(df, ["training.lr", "training.beta"], "win rate")
    assert [t.name for t in fig.data] == ["beta=0.0", "beta=0.1"]
    assert list(fig.data[1].x) == [1e-7, 1e-6]  # the point without an outcome is left out
    assert abs(fig.data[0].y[2] - 0.1) < 1e-9 and fig.layout.xaxis.type == "log"  # lr spans 100x
    one = charts.sweep_figure(df[df["training.beta"] == 0.0], ["training.lr"], "win rate")
    assert len(one.data) == 1 and len(one.data[0].x) == 3


def test_overlay_figure_has_one_trace_per_experiment():
    df = pd.DataFrame({"experiment": ["1: a", "1: a", "2: b"], "iteration": [2, 1, 1], "mi": [0.2, 0.1, 0.05]})
    fig = charts.overlay_figure(df, "iteration", "mi", "MI")
    assert [t.name for t in fig.data] == ["1: a", "2: b"] and list(fig.data[0].x) == [1, 2]
