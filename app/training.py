"""What the Training page (app/views/training.py) shows, as functions without
Streamlit: train jobs' labels and their metrics as DataFrames for app.charts."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from app.charts import MORE_TRAINING_PANELS, TRAINING_PANELS

# Every metric name the page plots (as sami_core/train.py writes them to metrics.jsonl).
PLOTTED = tuple(dict.fromkeys(n for _, names, _ in TRAINING_PANELS + MORE_TRAINING_PANELS for n in names))


def job_label(job: dict) -> str:
    """``iteration 2`` for a train job of an experiment's plan, else its name or ``job #id``."""
    if job.get("iteration") is not None:
        return f"iteration {job['iteration']}"
    return str(job.get("name") or job.get("label") or f"job #{job['id']}")


def metrics_frame(rows: Sequence[dict], jobs: Sequence[dict]) -> pd.DataFrame:
    """db.reads.training.scalar_metrics rows -> columns iteration (label), job_id, step,
    name, value; iterations in the jobs' order."""
    labels = {j["id"]: job_label(j) for j in jobs}
    if not rows:
        return pd.DataFrame(columns=["iteration", "job_id", "step", "name", "value"])
    df = pd.DataFrame(list(rows))
    df.insert(0, "iteration", df["job_id"].map(labels))
    rank = {j["id"]: k for k, j in enumerate(jobs)}
    return df.sort_values(["job_id", "name", "step"], key=lambda s: s.map(rank) if s.name == "job_id" else s,
                          kind="stable").reset_index(drop=True)


def matrix_frame(matrix: Sequence[Sequence[float]]) -> pd.DataFrame:
    """An N x N list of lists as a DataFrame indexed c_1..c_N (rows) by y_1..y_N (columns)."""
    n = len(matrix)
    return pd.DataFrame([list(map(float, row)) for row in matrix], index=[f"c_{i + 1}" for i in range(n)],
                        columns=[f"y_{j + 1}" for j in range(len(matrix[0]) if n else 0)])


# The Training page's names for app.charts.MATRIX_VIEWS.
MATRIX_VIEW_LABELS = {"log p": "log p (raw)", "row softmax": "p(response | constitution)",
                      "column softmax": "p(constitution | response)"}


def matrix_caption(view: str, z_range: Sequence[float] | None = None) -> str:
    """What the heatmap shows in ``view`` and on which colour scale."""
    if view == "log p":
        scale = ("" if z_range is None else
                 f" Colour scale fixed over the run's steps: {z_range[0]:.3g} to {z_range[1]:.3g}.")
        return ("L[i, j] = mean log p(y_j | x, c_i) over the step's queries; the loss pushes the diagonal up "
                "relative to its row and column." + scale)
    if view == "row softmax":
        return ("p(y_j | c_i): each row of the step's mean matrix as a softmax over the N responses (each row sums "
                "to 1; the row loss wants 1 on the diagonal; 1/N is chance). Colour scale fixed to [0, 1].")
    return ("p(c_i | y_j): each column of the step's mean matrix as a softmax over the N constitutions (each "
            "column sums to 1; the column loss wants 1 on the diagonal; 1/N is chance). Colour scale fixed to "
            "[0, 1].")
