"""The sidebar every page shares: where the workspace is and whether workers are alive."""

from __future__ import annotations

import streamlit as st

from app import state
from db.reads.overview import demo_experiments, live_counts

# The sidebar's counts refresh on their own this often (seconds), as often as the Queue
# table; and each refresh (and each rerun of a page) reads them afresh, not from the
# read cache, so they never trail what the Queue shows.
REFRESH_S = 2


@st.fragment(run_every=REFRESH_S)
def _live_counts() -> None:
    counts = state.read(live_counts)
    st.markdown(f"**Workers alive:** {counts['workers']}")
    st.markdown(f"**Jobs:** {counts.get('running', 0)} running, {counts.get('queued', 0)} queued, "
                f"{counts.get('failed', 0)} failed")
    if counts["workers"] == 0:
        st.caption("No worker is alive: queued jobs wait. Start one with `sami worker`.")


def draw() -> None:
    with st.sidebar:
        st.caption("SAMI Workbench")
        _live_counts()
        st.caption(f"Workspace: `{state.workspace().home}`")
        st.caption(f"Database: `{state.database_label()}`")
        if state.load(demo_experiments):
            st.caption("Experiments on the embedded demo model show the mechanics only: its texts carry no meaning.")
