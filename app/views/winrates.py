"""Win rates page: win rate per checkpoint against each baseline, with 95% intervals; the
length-controlled variant; mean response length; the table and its CSV (exactly the rows
shown); the chart's PNG through its modebar camera button."""

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

if not rows:
    st.info("No judgments yet. Judge jobs of an experiment (or `sami judge` on imported results) fill this page.")
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
st.caption("PNG of the chart: use the camera icon in the chart's toolbar. Win rate = (wins + ties/2) / decided "
           "judgments; bars: 95% Wilson interval; invalid answers and errors are counted apart.")
st.plotly_chart(charts.length_figure(frame), key="winrates.lengths")

table = winrates.table_frame(shown)
st.dataframe(table, hide_index=True, key="winrates.table")
st.download_button("Download CSV", winrates.to_csv(shown), file_name="winrates.csv", mime="text/csv",
                   key="winrates.download", on_click="ignore")
st.caption(f"{len(shown)} rows; the CSV holds exactly these rows and columns (as `sami export winrates`).")
