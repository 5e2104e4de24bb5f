"""The app's figures: pure functions from a DataFrame to a plotly Figure (no Streamlit,
no database), so that tests can check their traces and values directly.

* :func:`training_figure`: metrics against step, one trace per iteration (and metric).
* :func:`logprob_heatmap`: the N x N log-prob matrix L[i, j] = log p(y_j | x, c_i).
* :func:`winrate_figure`: win rate per checkpoint with 95% interval bars, one trace per
  baseline (and temperature, judge model); length-controlled on request.
* :func:`length_figure`: mean response length (words) per checkpoint.
* :func:`overlay_figure`: several experiments' curves on one chart (Experiments page).
* :func:`sweep_figure`: a sweep's outcome against its swept values.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

# The training metrics the page plots: (title, metric names in metrics.jsonl, y axis).
TRAINING_PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Loss", ("loss", "eval_loss"), "symmetric InfoNCE loss (nats); eval_ = held-out queries"),
    ("MI lower bound", ("mi_lower_bound", "eval_mi_lower_bound"), "log N - loss (nats)"),
    ("Row / column accuracy", ("row_accuracy", "col_accuracy", "eval_row_accuracy"), "accuracy"),
    ("KL to the reference", ("kl",), "KL (nats)"),
    ("Learning rate", ("lr",), "lr"),
)
# Shown on request: the loss's two halves, the loss with the KL term, and throughput.
MORE_TRAINING_PANELS: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("Row / column loss", ("row_loss", "col_loss"), "cross-entropy (nats)"),
    ("Total loss (with beta * KL)", ("total_loss",), "nats"),
    ("Gradient norm (before clipping)", ("grad_norm",), "norm"),
    ("Throughput", ("tokens_per_s",), "tokens / s"),
    ("Step time", ("step_time_s",), "seconds"),
)

_DASH = {0: "solid", 1: "dash", 2: "dot", 3: "dashdot"}
# Tick labels longer than this are cut (the full label is in the hover text).
TICK_CHARS = 30


def short(label: str, limit: int = TICK_CHARS) -> str:
    """``label`` cut to ``limit`` characters with an ellipsis."""
    label = str(label)
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _title(text: str) -> dict:
    return {"text": text, "y": 0.98, "yanchor": "top"}


def _category_axis(fig: go.Figure, order: list[str]) -> None:
    """x as categories in ``order``, long labels cut; legend above the plot."""
    fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, tickmode="array",
                     tickvals=order, ticktext=[short(c) for c in order], automargin=True)
    fig.update_layout(legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0})


def training_figure(df: pd.DataFrame, names: Sequence[str], title: str, y_title: str = "") -> go.Figure:
    """Lines of ``value`` against ``step``: one trace per (``iteration``, metric ``name``)
    for the given names, in the frame's iteration order. ``df`` columns: iteration (a
    display label), step, name, value."""
    fig = go.Figure()
    if not df.empty:
        sub = df[df["name"].isin(list(names))]
        present = set(sub["name"])  # a metric with no values (no held-out evaluation) adds no trace
        for iteration in dict.fromkeys(sub["iteration"]):
            for k, name in enumerate(names):
                part = sub[(sub["iteration"] == iteration) & (sub["name"] == name)].sort_values("step")
                if part.empty:
                    continue
                label = str(iteration) if len(present) == 1 else f"{iteration} · {name}"
                fig.add_trace(go.Scatter(x=part["step"].tolist(), y=part["value"].tolist(), mode="lines+markers",
                                         name=label, line={"dash": _DASH[k % len(_DASH)]}))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, legend_title_text="iteration",
                      margin={"t": 50, "b": 40}, height=320)
    return fig


def logprob_heatmap(matrix: pd.DataFrame, title: str = "") -> go.Figure:
    """Heatmap of an N x N matrix (rows: constitutions c_i, columns: responses y_j), the
    values written in the cells; the diagonal pairs are the positives of the loss."""
    fig = go.Figure(go.Heatmap(z=matrix.to_numpy().tolist(), x=[str(c) for c in matrix.columns],
                               y=[str(i) for i in matrix.index], colorscale="Viridis",
                               text=[[f"{v:.3f}" for v in row] for row in matrix.to_numpy().tolist()],
                               texttemplate="%{text}", colorbar={"title": {"text": "log p"}},
                               hovertemplate="c=%{y}, y=%{x}: %{z:.4f}<extra></extra>"))
    fig.update_layout(title=title, xaxis_title="response y_j", yaxis_title="constitution c_i",
                      yaxis_autorange="reversed", margin={"t": 50, "b": 40}, height=360)
    return fig


def series_name(row: pd.Series, *, temperatures: bool, judges: bool) -> str:
    """A win-rate trace's name: ``vs <baseline>`` (`` · T=<t>``, `` · <judge>`` when these vary)."""
    name = f"vs {row['baseline']}"
    if temperatures:
        name += f" · T={row['temperature']}"
    if judges:
        name += f" · {row['judge_model']}"
    return name


def _series(df: pd.DataFrame) -> pd.Series:
    temps = df["temperature"].nunique(dropna=False) > 1
    judges = df["judge_model"].nunique(dropna=False) > 1
    return df.apply(series_name, axis=1, temperatures=temps, judges=judges)


def winrate_figure(df: pd.DataFrame, *, length_controlled: bool = False) -> go.Figure:
    """Win rate per checkpoint (x: ``checkpoint``, in the frame's row order), one trace per
    baseline (and temperature and judge model when they vary), with 95% Wilson interval
    bars from ``ci_low``/``ci_high``. ``length_controlled`` plots ``lc_win_rate`` instead
    (it has no interval: no bars). A dashed line marks 0.5 (as good as the baseline)."""
    fig = go.Figure()
    value = "lc_win_rate" if length_controlled else "win_rate"
    order = list(dict.fromkeys(df["checkpoint"])) if not df.empty else []
    if not df.empty:
        frame = df.assign(_series=_series(df))
        for name in dict.fromkeys(frame["_series"]):
            part = frame[frame["_series"] == name]
            y = part[value].astype(float)
            trace = {"x": part["checkpoint"].tolist(), "y": y.tolist(), "mode": "lines+markers", "name": name,
                     "customdata": part[["n"]].to_numpy().tolist(),
                     "hovertemplate": "%{x}: %{y:.3f} (n=%{customdata[0]})<extra>" + name + "</extra>"}
            if not length_controlled:
                trace["error_y"] = {"type": "data", "symmetric": False,
                                    "array": (part["ci_high"].astype(float) - y).tolist(),
                                    "arrayminus": (y - part["ci_low"].astype(float)).tolist()}
            fig.add_trace(go.Scatter(**trace))
    fig.add_hline(y=0.5, line_dash="dash", line_color="grey")
    fig.update_layout(title=_title("Length-controlled win rate per checkpoint" if length_controlled
                                   else "Win rate per checkpoint (95% interval)"),
                      xaxis_title="checkpoint", yaxis_title="LC win rate" if length_controlled else "win rate",
                      yaxis_range=[0, 1], legend_title_text="", margin={"t": 110, "b": 40}, height=500)
    _category_axis(fig, order)
    return fig


def length_figure(df: pd.DataFrame) -> go.Figure:
    """Mean response length (words) per checkpoint: the checkpoints' (one trace per
    temperature when it varies; the mean over baselines and judges, which judged the same
    responses), and each baseline's as a dotted line."""
    fig = go.Figure()
    order = list(dict.fromkeys(df["checkpoint"])) if not df.empty else []
    if not df.empty:
        temps = df["temperature"].nunique(dropna=False) > 1
        for t in dict.fromkeys(df["temperature"]):
            part = df[df["temperature"] == t] if t == t else df[df["temperature"].isna()]
            mean = part.groupby("checkpoint", sort=False)["mean_len_candidate"].mean()
            fig.add_trace(go.Scatter(x=mean.index.tolist(), y=mean.astype(float).tolist(), mode="lines+markers",
                                     name=f"checkpoints · T={t}" if temps else "checkpoints"))
        for baseline in dict.fromkeys(df["baseline"]):
            mean = df[df["baseline"] == baseline].groupby("checkpoint", sort=False)["mean_len_baseline"].mean()
            fig.add_trace(go.Scatter(x=mean.index.tolist(), y=mean.astype(float).tolist(), mode="lines",
                                     line={"dash": "dot"}, name=f"{baseline} (baseline)"))
    fig.update_layout(title=_title("Mean response length per checkpoint"), xaxis_title="checkpoint",
                      yaxis_title="words", margin={"t": 110, "b": 40}, height=440)
    _category_axis(fig, order)
    return fig


def mi_figure(df: pd.DataFrame) -> go.Figure:
    """Held-out MI lower bound (nats) per checkpoint (x: ``checkpoint``, in the frame's row
    order), one trace per ``series`` (each checkpoint's own scoring, and e.g. the base
    model scoring the same responses), with bootstrap 95% interval bars. A dashed line
    marks 0 (responses that carry no trace of their constitution)."""
    fig = go.Figure()
    order = list(dict.fromkeys(df["checkpoint"])) if not df.empty else []
    for name in dict.fromkeys(df["series"]) if not df.empty else []:
        part = df[df["series"] == name]
        y = part["mi_lower_bound"].astype(float)
        fig.add_trace(go.Scatter(
            x=part["checkpoint"].tolist(), y=y.tolist(), mode="lines+markers", name=name,
            customdata=part[["n_queries", "row_accuracy", "col_accuracy"]].to_numpy().tolist(),
            hovertemplate="%{x}: %{y:.3f} nats (n=%{customdata[0]}, row acc %{customdata[1]:.2f}, "
                          "col acc %{customdata[2]:.2f})<extra>" + name + "</extra>",
            error_y={"type": "data", "symmetric": False,
                     "array": (part["mi_lower_bound_ci_high"].astype(float) - y).tolist(),
                     "arrayminus": (y - part["mi_lower_bound_ci_low"].astype(float)).tolist()}))
    fig.add_hline(y=0.0, line_dash="dash", line_color="grey")
    fig.update_layout(title=_title("Held-out MI lower bound per checkpoint (nats, 95% interval)"),
                      xaxis_title="checkpoint", yaxis_title="log N - loss (nats)", legend_title_text="",
                      margin={"t": 110, "b": 40}, height=450)
    _category_axis(fig, order)
    return fig


def overlay_figure(df: pd.DataFrame, x: str, y: str, title: str, *, x_title: str = "", y_title: str = "",
                   series: str = "experiment", markers: bool = True) -> go.Figure:
    """Several experiments on one chart: ``y`` against ``x``, one trace per ``series``
    value (in the frame's order)."""
    fig = go.Figure()
    for name in dict.fromkeys(df[series]) if not df.empty else []:
        part = df[df[series] == name].sort_values(x, kind="stable")
        fig.add_trace(go.Scatter(x=part[x].tolist(), y=part[y].astype(float).tolist(), name=short(name, 40),
                                 mode="lines+markers" if markers else "lines"))
    fig.update_layout(title=_title(title), xaxis_title=x_title or x, yaxis_title=y_title or y, legend_title_text="",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0},
                      margin={"t": 90, "b": 40}, height=380)
    return fig


def sweep_figure(df: pd.DataFrame, paths: Sequence[str], outcome: str, title: str = "") -> go.Figure:
    """A sweep's ``outcome`` column against its swept values: x = the first swept path
    (numbers on a log axis when they span a factor of 100 or more), one trace per value of
    the other paths together (one trace when a single path was swept). Points without
    the outcome (not judged / evaluated yet) are left out."""
    fig = go.Figure()
    paths = list(paths)
    data = df[df[outcome].notna()] if not df.empty else df
    x = paths[0] if paths else "point"
    others = paths[1:]
    groups = (data.groupby([data[p].map(str) for p in others], sort=False) if others and not data.empty
              else [("", data)])
    for key, part in groups:
        key = key if isinstance(key, tuple) else (key,)
        name = " ".join(f"{p.rsplit('.', 1)[-1]}={v}" for p, v in zip(others, key, strict=False)) or outcome
        part = part.sort_values(x, kind="stable") if x in part else part
        fig.add_trace(go.Scatter(x=part[x].tolist(), y=part[outcome].astype(float).tolist(), name=name,
                                 mode="lines+markers", text=part["point"].tolist(),
                                 hovertemplate="%{text}: %{y:.3f}<extra></extra>"))
    numeric = not data.empty and pd.to_numeric(data[x], errors="coerce").notna().all() and x != "point"
    if numeric:
        vals = pd.to_numeric(data[x]).abs()
        vals = vals[vals > 0]
        if not vals.empty and vals.max() / vals.min() >= 100:
            fig.update_xaxes(type="log")
    else:
        fig.update_xaxes(type="category")
    fig.update_layout(title=_title(title or f"{outcome} per point"), xaxis_title=x, yaxis_title=outcome,
                      legend_title_text=", ".join(others), margin={"t": 60, "b": 40}, height=400)
    return fig
