"""Overview: experiments and their state, workers, recent failures; the demo one click away."""

from __future__ import annotations

import streamlit as st

from app import overview, state
from app.winrates import mi_table, winrate_table
from db.reads import overview as reads
from sami_core.errors import SpecError
from services.experiments import SubmitError, prepare, submit

st.title("Overview")


def _submit_demo() -> tuple[int, list[str]]:
    prepared = prepare(overview.DEMO_SPEC)
    result = state.write(lambda conn: submit(conn, prepared))
    return result.experiment_id, result.warnings


left, right = st.columns([1, 3])
with left:
    if st.button("Submit the demo experiment", key="overview.submit_demo", type="primary",
                 help=f"Submits {overview.DEMO_SPEC.name}: the embedded demo model, three SAMI iterations, CPU only"):
        try:
            st.session_state["overview.submitted"] = _submit_demo()
            st.session_state.pop("overview.submit_error", None)
        except (SpecError, SubmitError, ValueError) as err:
            st.session_state["overview.submit_error"] = str(err)
with right:
    if st.session_state.get("overview.submit_error"):
        st.error(st.session_state["overview.submit_error"])
    elif st.session_state.get("overview.submitted"):
        exp_id, warnings = st.session_state["overview.submitted"]
        st.success(f"Experiment {exp_id} submitted")
        for w in warnings:
            st.caption(w)
        st.page_link("views/queue.py", label=f"Open experiment {exp_id} in the queue", icon=":material/list:",
                     query_params={"experiment": str(exp_id)})


@st.fragment(run_every=5)
def _live() -> None:
    experiments = state.load(reads.experiment_rows)
    workers = state.load(reads.worker_rows)
    failures = state.load(reads.recent_failures)

    st.subheader("Experiments")
    if not experiments:
        st.info(overview.empty_state_text(overview.workers_alive(workers), state.load(reads.imported_sources)))
    else:
        winrates, mi = {}, {}
        for e in experiments:
            if e["baselines"] and e["counts"].get("succeeded"):  # judge jobs may have stored judgments
                winrates[e["id"]] = overview.latest_winrate(state.load(winrate_table, e["id"]), e["baselines"])
            if e["counts"].get("succeeded"):  # evaluate jobs may have stored held-out MI
                mi[e["id"]] = overview.latest_mi(state.load(mi_table, e["id"]))
        st.dataframe(
            overview.experiments_frame(experiments, winrates, mi=mi), hide_index=True, key="overview.experiments",
            column_config={"created": st.column_config.DatetimeColumn("created", format="YYYY-MM-DD HH:mm")},
        )
        st.caption("Latest win rate: the latest judged iteration against the first baseline, at the lowest "
                   "temperature (all of them on the Win rates page). Held-out MI: the InfoNCE lower bound of the "
                   "latest evaluated model on the eval queries, with its 95% bootstrap interval, and the base "
                   "model's.")
        links = st.columns(min(len(experiments), 5))
        for col, e in zip(links, experiments[:5]):
            col.page_link("views/queue.py", label=f"Experiment {e['id']} jobs", icon=":material/list:",
                          query_params={"experiment": str(e["id"])})

    st.subheader("Workers")
    if not workers:
        st.info("No worker has registered yet: queued jobs wait. Start one on a machine that sees this "
                "workspace's database: `sami worker` (add `--devices 0,1` for GPUs).")
    else:
        st.dataframe(overview.workers_frame(workers), hide_index=True, key="overview.workers")

    st.subheader("Recent failures")
    if not failures:
        st.caption("No job has failed.")
    else:
        st.dataframe(overview.failures_frame(failures), hide_index=True, key="overview.failures",
                     column_config={"finished": st.column_config.DatetimeColumn("finished", format="YYYY-MM-DD HH:mm")})
        for f in failures[:5]:
            # The error holds the stage's last log lines: untrusted text, shown as text
            # (labels carry ids only: they are rendered as markdown).
            with st.expander(f"Job {f['id']}: full error"):
                st.code(f["error"] or "(no error recorded)", language=None, wrap_lines=True)
                st.page_link("views/queue.py", label=f"Open job {f['id']} in the queue",
                             query_params={"job": str(f["id"])})


_live()
