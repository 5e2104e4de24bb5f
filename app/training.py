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
