"""Win rates page: win rate per checkpoint against each baseline, with 95% intervals; the
length-controlled variant; mean response length; the table and its CSV (exactly the rows
shown); the chart's PNG through its modebar camera button. Below: the held-out MI lower
bound per checkpoint (evaluate jobs), with its interval, and its table."""

import streamlit as st

from app import charts, state, winrates
from db.reads import winrates as reads

st.title("Win rates")

experiments = state.load(reads.experiment_choices)
exp_ids = [None] + [e["id"] for e in experiments]
names = {e["id"]: e["name"] for e in experiments}
state.preselect("experiment", "winrates.experiment", exp_ids)

c1, c2, c3, c4 = st.columns(4)
experiment_id = c1.selectbox("Experiment", exp_ids, key="winrates.experiment",
                             format_func=lambda i: "All experiments and imports" if i is None else f"{i}: {names[i]}")
rows = state.load(winrates.winrate_table, experiment_id)
mi_rows = state.load(winrates.mi_table, experiment_id)


def held_out_mi() -> None:
    st.subheader("Held-out mutual information")
    if not mi_rows:
        st.info("No held-out MI yet: experiments with an `evaluation` section run `evaluate` jobs "
                "(the base model and each iteration) that fill this chart.")
        return
    mi_frame = winrates.mi_chart_frame(mi_rows)
    st.plotly_chart(charts.mi_figure(mi_frame), key="winrates.mi_chart")
    st.caption("InfoNCE lower bound log N - loss on held-out queries, one greedy response per constitution variant; "
               "bars: bootstrap 95% interval over queries. Row/column accuracy: how often a constitution picks its "
               "own response (and a response its constitution); chance is 1/N. `scored by base`: the base model "
               "scoring the same responses.")
    st.dataframe(mi_frame[list(winrates.MI_COLUMNS)], hide_index=True, key="winrates.mi_table")


if not rows:
    st.info("No judgments yet. Judge jobs of an experiment (or `sami judge` on imported results) fill this page.")
    held_out_mi()
    st.stop()

ALL = winrates.ALL
baseline = c2.selectbox("Baseline", [ALL, *winrates.options(rows, "baseline")], key="winrates.baseline")
temperature = c3.selectbox("Temperature", [ALL, *winrates.options(rows, "temperature")], key="winrates.temperature")
judge_model = c4.selectbox("Judge model", [ALL, *winrates.options(rows, "judge_model")], key="winrates.judge_model")
length_controlled = st.toggle("Length-controlled", key="winrates.lc",
                              help="Win rate predicted at equal lengths (logistic fit of the verdict on the "
                                   "length difference); it has no interval bars.")

shown = winrates.shown_rows(rows, state.load(reads.source_order), baseline=baseline, temperature=temperature,
                        judge_model=judge_model)
if not shown:
    st.info("No win rates match these filters.")
    st.stop()

frame = winrates.chart_frame(shown)
st.plotly_chart(charts.winrate_figure(frame, length_controlled=length_controlled), key="winrates.chart",
                config={"toImageButtonOptions": {"format": "png", "filename": "winrates"}})
st.caption(winrates.chart_caption(length_controlled))
st.plotly_chart(charts.length_figure(frame), key="winrates.lengths")

table = winrates.table_frame(shown)
st.dataframe(table, hide_index=True, key="winrates.table")
st.download_button("Download CSV", winrates.to_csv(shown), file_name="winrates.csv", mime="text/csv",
                   key="winrates.download", on_click="ignore")
st.caption(f"{len(shown)} rows; the CSV holds exactly these rows and columns (as `sami export winrates`).")

held_out_mi()
