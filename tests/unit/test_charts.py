"""app/charts.py: each figure from a small hand-made frame, its traces and values checked."""

from __future__ import annotations

import math

import pandas as pd
import pytest

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


def test_ema_hand_computed_and_zero_weight_is_the_identity():
    assert charts.ema([1.0, 3.0, 3.0], 0.0) == [1.0, 3.0, 3.0]
    # weight 0.5: s_2 = (0.5 * 1 + 3) / (0.5 + 1); s_3 = (0.25 * 1 + 0.5 * 3 + 3) / (0.25 + 0.5 + 1)
    got = charts.ema([1.0, 3.0, 3.0], 0.5)
    assert got[0] == 1.0 and abs(got[1] - 3.5 / 1.5) < 1e-12 and abs(got[2] - 4.75 / 1.75) < 1e-12
    assert charts.ema([], 0.9) == []
    with pytest.raises(ValueError, match="smoothing weight"):
        charts.ema([1.0], 1.0)


def test_value_range_shows_a_constant_at_its_value():
    lo, hi = charts.value_range([2e-5] * 6)
    assert lo < 2e-5 < hi and abs(hi - lo - 4e-6) < 1e-12  # +-10% of the value, not plotly's -1..1
    assert charts.value_range([0.0, 0.0]) == [-1.0, 1.0]
    lo, hi = charts.value_range([0.2, 0.7, float("nan"), None])
    assert abs(lo - 0.175) < 1e-12 and abs(hi - 0.725) < 1e-12  # 5% of the span either side
    assert charts.value_range([]) is None and charts.value_range([float("nan")]) is None


def test_training_figure_y_axis_spans_a_constant_learning_rate():
    df = pd.DataFrame([("iteration 1", s, "lr", 2e-5) for s in (1, 2, 3)],
                      columns=["iteration", "step", "name", "value"])
    fig = charts.training_figure(df, ("lr",), "Learning rate", smoothing=0.9)
    lo, hi = fig.layout.yaxis.range
    assert lo < 2e-5 < hi and hi - lo < 1e-5 and fig.layout.yaxis.exponentformat == "e"
    assert [t.name for t in fig.data] == ["iteration 1"]  # the lr is a schedule: never smoothed


def test_training_figure_smoothing_draws_the_ema_over_faint_raw_values():
    fig = charts.training_figure(metrics_df(), ("loss",), "Loss", smoothing=0.5)
    raw, smooth = fig.data[0], fig.data[1]
    assert (raw.name, raw.showlegend, raw.opacity) == ("iteration 1 (raw)", False, 0.3)
    assert smooth.name == "iteration 1" and list(smooth.y) == charts.ema(list(raw.y), 0.5)
    assert raw.line.color == smooth.line.color != fig.data[3].line.color  # one colour per iteration
    assert list(fig.data[3].y) == charts.ema([0.30000000000000004, 0.2], 0.5)


def test_logprob_heatmap_softmax_views_have_a_fixed_unit_scale():
    m = pd.DataFrame([[-4.7, -5.1], [-6.8, -3.2]], index=["c_1", "c_2"], columns=["y_1", "y_2"])
    (row,) = charts.logprob_heatmap(m, view="row softmax").data
    z = [list(r) for r in row.z]
    assert abs(sum(z[0]) - 1) < 1e-12 and abs(sum(z[1]) - 1) < 1e-12
    assert abs(z[0][0] - 1 / (1 + math.exp(-0.4))) < 1e-12  # e^-4.7 / (e^-4.7 + e^-5.1)
    assert (row.zmin, row.zmax) == (0.0, 1.0) and row.colorbar.title.text == "p(y | c)"
    assert [list(r) for r in row.customdata] == [[-4.7, -5.1], [-6.8, -3.2]]  # the raw values in the hover
    (col,) = charts.logprob_heatmap(m, view="column softmax").data
    z = [list(r) for r in col.z]
    assert abs(z[0][0] + z[1][0] - 1) < 1e-12 and z[0][0] > 0.5 and z[1][1] > 0.5  # the diagonal shows
    (raw,) = charts.logprob_heatmap(m, z_range=(-9.0, -1.0)).data
    assert (raw.zmin, raw.zmax) == (-9.0, -1.0) and raw.colorbar.title.text == "log p"
    with pytest.raises(ValueError, match="view must be one of"):
        charts.logprob_heatmap(m, view="softmax")


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


def test_length_figure_shows_checkpoints_once_and_each_baseline_as_a_horizontal_line():
    fig = charts.length_figure(winrate_df())
    assert [t.name for t in fig.data] == ["checkpoints"]
    assert list(fig.data[0].x) == ["iteration-1", "iteration-2"] and list(fig.data[0].y) == [30.0, 40.0]
    lines = {s.name: s for s in fig.layout.shapes}
    assert set(lines) == {"base (baseline)", "instruct (baseline)"}
    instruct = lines["instruct (baseline)"]
    # across the whole plot (paper x), at its length, in the legend, with its value written
    assert (instruct.xref, instruct.x0, instruct.x1, instruct.y0, instruct.y1) == ("paper", 0, 1, 50.0, 50.0)
    assert instruct.showlegend and instruct.line.dash == "dot" and instruct.label.text == "instruct: 50.0"
    df = winrate_df().assign(temperature=[0.0, 0.0, 1.0, 1.0])
    fig = charts.length_figure(df)
    assert [t.name for t in fig.data] == ["checkpoints · T=0.0", "checkpoints · T=1.0"]
    assert {s.name for s in fig.layout.shapes} == {"base (baseline, T=0.0)", "instruct (baseline, T=0.0)",
                                                   "base (baseline, T=1.0)", "instruct (baseline, T=1.0)"}


def test_a_baseline_judged_against_one_checkpoint_is_still_visible():
    one = winrate_df().iloc[:1]  # a single point: a line trace of it would draw nothing
    (line,) = charts.length_figure(one).layout.shapes
    assert (line.name, line.y0, line.x0, line.x1) == ("base (baseline)", 20.0, 0, 1)


def test_winrate_series_at_the_same_checkpoint_sit_side_by_side():
    df = winrate_df()
    df.loc[df.index[1::2], "temperature"] = 1.0  # T=0.0 and T=1.0 of the same checkpoints
    df["baseline"] = "base"
    fig = charts.winrate_figure(df)
    assert [t.name for t in fig.data] == ["vs base · T=0.0", "vs base · T=1.0"]
    assert fig.layout.scattermode == "group"
    assert len({t.offsetgroup for t in fig.data}) == 2  # one slot each: the interval bars do not overlap


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
    assert list(one.layout.xaxis.ticktext) == ["1e-07", "1e-06", "1e-05"]  # not plotly's SI "100n"


def test_overlay_figure_has_one_trace_per_experiment():
    df = pd.DataFrame({"experiment": ["1: a", "1: a", "2: b"], "iteration": [2, 1, 1], "mi": [0.2, 0.1, 0.05]})
    fig = charts.overlay_figure(df, "iteration", "mi", "MI")
    assert [t.name for t in fig.data] == ["1: a", "2: b"] and list(fig.data[0].x) == [1, 2]
    assert fig.layout.xaxis.dtick == 1  # whole iterations
