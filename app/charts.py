"""The app's figures: pure functions from a DataFrame to a plotly Figure (no Streamlit,
no database), so that tests can check their traces and values directly.

* :func:`training_figure`: metrics against step, one trace per iteration (and metric),
  optionally smoothed (:func:`ema`), on a y range from the data (:func:`value_range`).
* :func:`logprob_heatmap`: the N x N log-prob matrix L[i, j] = log p(y_j | x, c_i), raw
  or as a row / column softmax (:data:`MATRIX_VIEWS`), on a fixed colour scale.
* :func:`winrate_figure`: win rate per checkpoint with 95% interval bars, one trace per
  baseline (and temperature, judge model), side by side; length-controlled on request.
* :func:`length_figure`: mean response length (words) per checkpoint, each baseline's
  as a horizontal line.
* :func:`overlay_figure`: several experiments' curves on one chart (Experiments page).
* :func:`sweep_figure`: a sweep's outcome against its swept values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
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


def ema(values: Sequence[float], weight: float) -> list[float]:
    """Exponential moving average with bias correction (as TensorBoard's smoothing):
    s_t = sum_{k<=t} weight^(t-k) x_k / sum_{k<=t} weight^(t-k), so the first point is x_1
    and each later one leans on the past by ``weight`` in [0, 1). ``weight`` 0 returns
    the values unchanged."""
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
    out, num, den = [], 0.0, 0.0
    for x in values:
        num = weight * num + float(x)
        den = weight * den + 1.0
        out.append(num / den)
    return out


def value_range(values: Sequence[float], pad: float = 0.05) -> list[float] | None:
    """A y-axis range that shows ``values`` at their size: [min, max] widened by ``pad``
    of the span on each side; a constant v (or a span below 1e-9 of its size) gets
    v ± 10% of |v| (± 1 for 0), so a constant learning rate of 2e-5 is drawn at 2e-5, not
    on plotly's default -1..1. None without finite values."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    lo, hi = min(finite), max(finite)
    span = hi - lo
    size = max(abs(lo), abs(hi))
    if span <= 1e-9 * size or span == 0.0:
        half = 0.1 * size if size > 0 else 1.0
        return [lo - half, hi + half]
    return [lo - pad * span, hi + pad * span]


# Panels whose curves are not smoothed (a schedule, not a noisy measurement).
UNSMOOTHED = frozenset({"lr"})
# One colour per iteration, shared by its raw and smoothed traces.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def training_figure(df: pd.DataFrame, names: Sequence[str], title: str, y_title: str = "", *,
                    smoothing: float = 0.0) -> go.Figure:
    """Lines of ``value`` against ``step``: one trace per (``iteration``, metric ``name``)
    for the given names, in the frame's iteration order. ``df`` columns: iteration (a
    display label), step, name, value. ``smoothing`` > 0 draws each training curve as its
    :func:`ema` with the raw values faint behind it (held-out ``eval_`` points and the
    learning rate are never smoothed). The y axis spans the values (:func:`value_range`)."""
    fig = go.Figure()
    plotted: list[float] = []
    if not df.empty:
        sub = df[df["name"].isin(list(names))]
        present = set(sub["name"])  # a metric with no values (no held-out evaluation) adds no trace
        for n_it, iteration in enumerate(dict.fromkeys(sub["iteration"])):
            color = PALETTE[n_it % len(PALETTE)]
            for k, name in enumerate(names):
                part = sub[(sub["iteration"] == iteration) & (sub["name"] == name)].sort_values("step")
                if part.empty:
                    continue
                label = str(iteration) if len(present) == 1 else f"{iteration} · {name}"
                x, y = part["step"].tolist(), part["value"].astype(float).tolist()
                plotted += y
                line = {"dash": _DASH[k % len(_DASH)], "color": color}
                smooth = smoothing > 0 and name not in UNSMOOTHED and not name.startswith("eval_")
                if smooth:
                    fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=f"{label} (raw)", legendgroup=label,
                                             showlegend=False, opacity=0.3, line=line, hoverinfo="skip"))
                    y = ema(y, smoothing)
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines" if smooth else "lines+markers", name=label,
                                         legendgroup=label, line=line))
    fig.update_layout(title=title, xaxis_title="step", yaxis_title=y_title, legend_title_text="iteration",
                      margin={"t": 50, "b": 40}, height=320)
    if (y_range := value_range(plotted)) is not None:
        fig.update_yaxes(range=y_range, exponentformat="e")
    return fig


# How the log-prob matrix can be shown: (the colour bar's title, what a cell holds).
MATRIX_VIEWS = {
    "log p": ("log p", "L[i, j] = mean log p(y_j | x, c_i)"),
    "row softmax": ("p(y | c)", "p(y_j | c_i): softmax of row i over the N responses (the row loss's probabilities)"),
    "column softmax": ("p(c | y)", "p(c_i | y_j): softmax of column j over the N constitutions (the column loss's)"),
}


def softmax(matrix: Sequence[Sequence[float]], axis: int) -> np.ndarray:
    """Softmax of an N x N matrix along ``axis`` (1: each row sums to 1; 0: each column)."""
    m = np.asarray(matrix, dtype=float)  # (N, N)
    e = np.exp(m - m.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def logprob_heatmap(matrix: pd.DataFrame, title: str = "", *, view: str = "log p",
                    z_range: Sequence[float] | None = None) -> go.Figure:
    """Heatmap of an N x N matrix (rows: constitutions c_i, columns: responses y_j), the
    values written in the cells; the diagonal pairs are the positives of the loss.
    ``view`` (a key of :data:`MATRIX_VIEWS`): the raw log-probs, or their softmax over each
    row (p(y_j | c_i): takes out what a row shares) or each column (p(c_i | y_j): takes
    out what a column shares, e.g. a response likelier under every constitution), so
    that the diagonal shows.
    The colour scale is fixed: [0, 1] for the softmax views, ``z_range`` (e.g. the run's
    range over all its steps) for the raw one, so colours compare across steps."""
    if view not in MATRIX_VIEWS:
        raise ValueError(f"view must be one of {', '.join(MATRIX_VIEWS)}, got {view!r}")
    raw = matrix.to_numpy(dtype=float)
    z = raw if view == "log p" else softmax(raw, axis=1 if view == "row softmax" else 0)
    bar, _ = MATRIX_VIEWS[view]
    lo, hi = (0.0, 1.0) if view != "log p" else (tuple(z_range) if z_range is not None else (None, None))
    fig = go.Figure(go.Heatmap(z=z.tolist(), x=[str(c) for c in matrix.columns], y=[str(i) for i in matrix.index],
                               colorscale="Viridis", zmin=lo, zmax=hi,
                               text=[[f"{v:.3f}" for v in row] for row in z.tolist()], texttemplate="%{text}",
                               customdata=raw.tolist(), colorbar={"title": {"text": bar}},
                               hovertemplate="c=%{y}, y=%{x}: " + bar + " %{z:.4f} (log p %{customdata:.4f})"
                                             "<extra></extra>"))
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


def _side_by_side(fig: go.Figure) -> None:
    """Traces that share an x category are drawn side by side, each in its own slot
    (plotly's scattermode "group"), so that their interval bars do not overlap."""
    for k, trace in enumerate(fig.data):
        trace.offsetgroup = str(k)
    fig.update_layout(scattermode="group", scattergap=0.5)


def winrate_figure(df: pd.DataFrame, *, length_controlled: bool = False) -> go.Figure:
    """Win rate per checkpoint (x: ``checkpoint``, in the frame's row order), one trace per
    baseline (and temperature and judge model when they vary), side by side within a
    checkpoint, with 95% Wilson interval bars from ``ci_low``/``ci_high``.
    ``length_controlled`` plots ``lc_win_rate`` instead (it has no interval: no bars). A
    dashed line marks 0.5 (as good as the baseline)."""
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
    _side_by_side(fig)
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
    responses), and each baseline's (per temperature when it varies) as a dotted
    horizontal line across the chart, named in the legend and labelled with its value (a
    baseline is one model: one length, however many checkpoints it was compared with)."""
    fig = go.Figure()
    order = list(dict.fromkeys(df["checkpoint"])) if not df.empty else []
    if not df.empty:
        temps = df["temperature"].nunique(dropna=False) > 1
        for t in dict.fromkeys(df["temperature"]):
            part = df[df["temperature"] == t] if t == t else df[df["temperature"].isna()]
            mean = part.groupby("checkpoint", sort=False)["mean_len_candidate"].mean()
            fig.add_trace(go.Scatter(x=mean.index.tolist(), y=mean.astype(float).tolist(), mode="lines+markers",
                                     name=f"checkpoints · T={t}" if temps else "checkpoints"))
        for (baseline, t), part in df.groupby(["baseline", "temperature"], sort=False, dropna=False):
            words = float(part["mean_len_baseline"].astype(float).mean())
            if words != words:
                continue
            name = f"{baseline} (baseline{f', T={t}' if temps else ''})"
            fig.add_shape(type="line", xref="paper", x0=0, x1=1, y0=words, y1=words, name=name, showlegend=True,
                          line={"dash": "dot", "color": "grey"},
                          label={"text": f"{short(baseline)}: {words:.1f}", "textposition": "end",
                                 "yanchor": "bottom", "font": {"size": 11}})
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
    _side_by_side(fig)
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
    if x == "iteration":  # whole iterations, not 1.5
        fig.update_xaxes(dtick=1)
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
        # Ticks at the swept values themselves, written as the spec writes them (3e-05, not
        # plotly's SI "30µ"); many values: plotly's own ticks, in e-notation.
        swept = sorted(set(pd.to_numeric(data[x]).tolist()))
        if len(swept) <= 12:
            fig.update_xaxes(tickvals=swept, ticktext=[f"{v:g}" for v in swept])
        fig.update_xaxes(exponentformat="e")
    else:
        fig.update_xaxes(type="category")
    fig.update_layout(title=_title(title or f"{outcome} per point"), xaxis_title=x, yaxis_title=outcome,
                      legend_title_text=", ".join(others), margin={"t": 60, "b": 40}, height=400)
    return fig
