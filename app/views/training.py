"""Training page: an experiment's train jobs (one per SAMI iteration); loss, MI lower
bound, row/column accuracy, KL and lr against step, one trace per iteration, optionally
smoothed; the N x N log-prob matrix of one iteration at a chosen step, raw or as a row /
column softmax, on a colour scale that stays put across steps."""

import streamlit as st

from app import charts, state, training
from db.reads import training as reads

st.title("Training")

experiments = state.load(reads.training_experiments)
outside = state.load(reads.train_jobs, None)
choices = [e["id"] for e in experiments] + ([None] if outside else [])
if not choices:
    st.info("No train jobs yet. Submit an experiment (New experiment page); its train jobs log metrics here "
            "while they run.")
    st.stop()

names = {e["id"]: e["name"] for e in experiments}
state.preselect("experiment", "training.experiment", choices)
experiment_id = st.selectbox("Experiment", choices, key="training.experiment",
                             format_func=lambda i: "Train jobs outside experiments" if i is None
                             else f"{i}: {names[i]}")

jobs = outside if experiment_id is None else state.load(reads.train_jobs, experiment_id)
by_id = {j["id"]: j for j in jobs}
picked = st.multiselect("Iterations", list(by_id), default=list(by_id), key=f"training.jobs.{experiment_id}",
                        format_func=lambda i: f"{training.job_label(by_id[i])} (job #{i}, {by_id[i]['status']})")
picked_jobs = [by_id[i] for i in by_id if i in picked]

rows = state.load(reads.scalar_metrics, tuple(j["id"] for j in picked_jobs), training.PLOTTED)
frame = training.metrics_frame(rows, picked_jobs)
if frame.empty:
    st.info("No metrics logged yet for these iterations: they appear once a train job has run its first step.")
    st.stop()


smoothing = st.slider("Smoothing", 0.0, 0.99, 0.0, 0.01, key="training.smoothing",
                      help="Exponential moving average of each training curve (the weight of the past; 0: raw "
                           "values). The raw values stay faint behind it; the learning rate and held-out points "
                           "are not smoothed.")


def panels(specs, prefix: str) -> None:  # noqa: ANN001
    cols = st.columns(2)
    for k, (title, metric_names, y_title) in enumerate(specs):
        with cols[k % 2]:
            if not frame["name"].isin(metric_names).any():
                st.caption(f"{title}: not logged" + (" (training.beta is 0: no reference model)"
                                                     if "kl" in metric_names else ""))
                continue
            st.plotly_chart(charts.training_figure(frame, metric_names, title, y_title, smoothing=smoothing),
                            key=f"{prefix}.{k}")


panels(charts.TRAINING_PANELS, "training.chart")
# A toggle, not an expander: an expander's charts are built on every rerun even while it is
# closed, and these six would double the page's time.
if st.toggle("More metrics: row/column loss, total loss, gradient norm, throughput", key="training.show_more"):
    panels(charts.MORE_TRAINING_PANELS, "training.more")

st.subheader("Log-prob matrix")
with_matrix = [j for j in picked_jobs if state.load(reads.matrix_steps, j["id"])]
if not with_matrix:
    st.info("No log-prob matrix logged for these iterations.")
    st.stop()
left, right = st.columns([1, 2])
job_id = left.selectbox("Iteration", [j["id"] for j in with_matrix], key="training.matrix_job",
                        format_func=lambda i: training.job_label(by_id[i]))
view = right.radio("Show", list(charts.MATRIX_VIEWS), key="training.matrix_view", horizontal=True,
                   format_func=training.MATRIX_VIEW_LABELS.get,
                   help="Raw log-probs carry what a whole column shares (a response likely under every "
                        "constitution, e.g. a short one) and what a whole row shares; the column softmax takes out "
                        "the first, the row softmax the second, so that the diagonal the loss pushes up shows.")
steps = state.load(reads.matrix_steps, job_id)
step = steps[0] if len(steps) == 1 else st.select_slider("Step", steps, value=steps[-1],
                                                           key=f"training.matrix_step.{job_id}")
matrix = state.load(reads.matrix_at, job_id, step)
if matrix:
    z_range = state.load(reads.matrix_range, job_id) if view == "log p" else None
    st.plotly_chart(charts.logprob_heatmap(training.matrix_frame(matrix),
                                           f"{training.job_label(by_id[job_id])}, step {step}", view=view,
                                           z_range=z_range),
                    key="training.heatmap")
    st.caption(training.matrix_caption(view, z_range))
