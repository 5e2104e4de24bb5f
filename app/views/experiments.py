"""Experiments: every experiment side by side (sortable, filtered by text and state), the
curves of a few picked ones overlaid (train loss per step, win rate and held-out MI per
iteration), a sweep's outcome per point, and "Edit and resubmit" (an experiment's spec
loaded into the New experiment form)."""

from __future__ import annotations

import streamlit as st

from app import charts, experiments, state
from db.experiments import stored_spec
from db.reads import experiments as reads

st.title("Experiments")
ss = st.session_state
K = "experiments."

rows = state.load(reads.experiment_rows)
if not rows:
    st.info("No experiment yet. Submit one on the New experiment page (or `sami submit SPEC.yaml`; a spec with a "
            "`sweep:` section submits one experiment per point of its grid).")
    st.stop()

ids = tuple(r["id"] for r in rows)
labels = {r["id"]: experiments.experiment_label(r) for r in rows}
winrates = state.load(reads.winrate_points, ids)
mi = state.load(reads.mi_points, ids)
table = experiments.table_frame(rows, winrates, mi, state.load(reads.final_losses, ids))

left, right = st.columns([2, 1])
text = left.text_input("Filter", key=K + "filter", placeholder="name, model, constitution, id or #sweep")
states = right.multiselect("State", sorted(set(table["state"])), key=K + "states")
shown = experiments.filter_frame(table, text, states)
st.dataframe(shown, hide_index=True, key=K + "table", column_config={
    "created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm"),
    "lr": st.column_config.NumberColumn("lr", format="%.2e"),
    "win rate": st.column_config.NumberColumn("win rate", format="%.2f"),
    "MI (nats)": st.column_config.NumberColumn("MI (nats)", format="%.3f"),
    "final loss": st.column_config.NumberColumn("final loss", format="%.3f"),
})
st.caption(f"{len(shown)} of {len(table)} experiments; click a column header to sort. Win rate: the latest judged "
           "iteration against the first baseline at the lowest temperature (`judged` says which); MI: the held-out "
           "InfoNCE lower bound of the latest evaluated model; final loss: the train loss at the last step of the "
           "latest iteration.")

# ---- compare --------------------------------------------------------------------------------------------
st.subheader("Compare")
if K + "compare" not in ss:
    ss[K + "compare"] = [int(i) for i in shown["id"][:2]]
picked = st.multiselect("Experiments to compare", list(ids), key=K + "compare", format_func=labels.get)
if not picked:
    st.caption("Pick experiments to overlay their curves.")
else:
    picked_rows = [r for r in rows if r["id"] in picked]
    loss = experiments.loss_frame(state.load(reads.loss_points, tuple(picked)), labels)
    wr = experiments.winrate_frame(picked_rows, [w for w in winrates if w["experiment_id"] in picked], labels)
    mif = experiments.mi_frame([m for m in mi if m["experiment_id"] in picked], labels)
    # The loss over the page's width (iterations one after another make it long); win rate
    # and MI per iteration side by side below it.
    if loss.empty:
        st.caption("Train loss: nothing logged yet.")
    else:
        st.plotly_chart(charts.overlay_figure(loss, "total_step", "value", "Train loss per step", markers=False,
                                              x_title="step (iterations one after another)",
                                              y_title="symmetric InfoNCE loss (nats)"), key=K + "loss")
    cols = st.columns(2)
    with cols[0]:
        if wr.empty:
            st.caption("Win rate: nothing judged yet.")
        else:
            st.plotly_chart(charts.overlay_figure(wr, "iteration", "win_rate", "Win rate per iteration",
                                                  y_title="win rate vs the first baseline"), key=K + "winrate")
    with cols[1]:
        if mif.empty:
            st.caption("Held-out MI: nothing evaluated yet.")
        else:
            st.plotly_chart(charts.overlay_figure(mif, "iteration", "mi", "Held-out MI per iteration",
                                                  x_title="iteration (0 = base model)", y_title="nats"),
                            key=K + "mi")

# ---- edit and resubmit ------------------------------------------------------------------------------------
st.subheader("Edit and resubmit")
state.preselect("experiment", K + "resubmit", ids)
chosen = st.selectbox("Experiment", list(ids), key=K + "resubmit", format_func=labels.get)
if st.button("Edit and resubmit", key=K + "edit",
             help="Loads the experiment's spec (as it was submitted: constitution inline, paths absolute) into the "
                  "New experiment form; change what you want and submit it as a new experiment."):
    spec = state.read(lambda conn: stored_spec(conn, chosen))
    ss["new_experiment.load"] = (chosen, spec)
    st.switch_page("views/new_experiment.py")
st.caption("From the command line: `sami submit --from ID --set training.lr=1e-6`.")

# ---- sweeps -----------------------------------------------------------------------------------------------
st.subheader("Sweeps")
sweeps = state.load(reads.sweep_rows)
if not sweeps:
    st.caption("No sweep yet. A spec with a `sweep:` section (e.g. `sweep: {training.lr: [1.0e-7, 5.0e-7], "
               "training.beta: [0, 0.1]}`) submits one experiment per point of the grid.")
    st.stop()
by_sweep = {s["id"]: s for s in sweeps}
state.preselect("sweep", K + "sweep", list(by_sweep))
sweep_id = st.selectbox("Sweep", list(by_sweep), key=K + "sweep",
                        format_func=lambda i: f"#{i}: {by_sweep[i]['name']} ({by_sweep[i]['n_experiments']} points)")
grid = by_sweep[sweep_id]["grid"] or {}
st.caption(experiments.sweep_caption(grid))
points = [r for r in rows if r.get("sweep_id") == sweep_id]
if len(points) == by_sweep[sweep_id]["n_experiments"]:  # all in the table above: nothing more to read
    p_table = table[table["id"].isin([r["id"] for r in points])]
else:
    points = state.load(reads.experiment_rows, sweep_id=sweep_id)
    p_ids = tuple(r["id"] for r in points)
    p_table = experiments.table_frame(points, state.load(reads.winrate_points, p_ids),
                                      state.load(reads.mi_points, p_ids), state.load(reads.final_losses, p_ids))
frame = experiments.sweep_frame(p_table, points, grid)
st.dataframe(frame, hide_index=True, key=K + "sweep_table")
outcome = st.selectbox("Outcome", list(experiments.OUTCOMES), key=K + "outcome")
column = experiments.OUTCOMES[outcome]
if frame[column].notna().any():
    st.plotly_chart(charts.sweep_figure(frame, list(grid), column, f"{outcome} per point"), key=K + "sweep_chart")
else:
    st.info(f"No point has a {outcome} yet: it appears once its jobs have run.")
