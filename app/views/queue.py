"""Queue: jobs with state, progress, ETA, devices and attempts, updated live; a job's
spec, error and log tail; cancel and retry; an experiment's job DAG.

The page only reads, except on the Cancel and Retry buttons: closing or refreshing the
browser never touches a job (workers run them).
"""

from __future__ import annotations

import streamlit as st

from app import formatting, queue, state
from app.formatting import md_escape
from db.reads import jobs as reads
from services import jobs
from services.errors import ServiceError

LIVE_EVERY_S = 2  # seconds between refreshes of the live parts (only they rerun)

st.title("Queue")


# Deep links: the URL's ?experiment=ID and ?job=ID pick the two selectboxes; picking in
# a selectbox writes the URL (in its on_change callback, before the rerun), so the URL
# always says what is shown and can be shared.


def _from_link(name: str, key: str, valid: set[int]) -> str | None:
    """Apply ``?name=ID`` to the selectbox ``key``; return the raw value when it names
    nothing in ``valid`` (the bad link is dropped from the URL)."""
    raw = state.param(name)
    if raw is None:
        return None
    value = formatting.parse_id(raw)
    if value is None or value not in valid:
        st.query_params.pop(name, None)
        return raw
    st.session_state[key] = value
    return None


def _to_link(name: str, key: str, *drop: str) -> None:
    value = st.session_state.get(key)
    if value is None:
        st.query_params.pop(name, None)
    else:
        st.query_params[name] = str(value)
    for other in drop:
        st.query_params.pop(other, None)


# --- experiment ------------------------------------------------------------------------------

experiments = state.load(reads.experiment_choices)
names = {e["id"]: e["name"] for e in experiments}

if state.param("job") is not None and state.param("experiment") is None:
    # ?job=ID alone: show that job's experiment, so that the job is in the list.
    job_link = formatting.parse_id(state.param("job"))
    linked = state.load(reads.job_detail, job_link) if job_link is not None else None
    if linked is not None and linked["experiment_id"] is not None:
        st.query_params["experiment"] = str(linked["experiment_id"])

bad_experiment = _from_link("experiment", "queue.experiment", set(names))
if bad_experiment is not None:
    st.error(f"No experiment {md_escape(repr(bad_experiment))}: showing all jobs.")  # from the URL
if st.session_state.get("queue.experiment") not in (None, *names):
    st.session_state["queue.experiment"] = None
experiment_id = st.selectbox(
    "Experiment", [None, *names], key="queue.experiment",
    format_func=lambda i: "All jobs" if i is None else f"{i}: {names[i]}",
    on_change=_to_link, args=("experiment", "queue.experiment", "job"),
)


@st.fragment(run_every=LIVE_EVERY_S)
def _live_table(experiment_id: int | None) -> None:
    rows = state.read(lambda c: reads.job_rows(c, experiment_id))  # fresh: this view is live
    if not rows:
        st.info("No jobs here yet. Submit an experiment (Overview or New experiment page, or `sami submit`); "
                "a worker (`sami worker`) runs them.")
        return
    st.caption(f"{queue.status_summary(rows)}. Updated every {LIVE_EVERY_S} s; workers run the jobs, so closing "
               "this page changes nothing.")
    st.dataframe(
        queue.jobs_frame(rows), hide_index=True, key="queue.table",
        column_config={
            "progress": st.column_config.ProgressColumn("progress", min_value=0.0, max_value=1.0, format="percent",
                                                        color=queue.PROGRESS_COLOR),
            "progress_text": st.column_config.TextColumn("done"),
            "started": st.column_config.DatetimeColumn("started (UTC)", format="MM-DD HH:mm:ss"),
            "ended": st.column_config.DatetimeColumn("ended (UTC)", format="MM-DD HH:mm:ss"),
            "devices": st.column_config.NumberColumn("GPUs"),
            "experiment": st.column_config.NumberColumn("experiment", format="%d"),
            "depends_on": st.column_config.TextColumn("depends on"),
        },
    )
    if experiment_id is not None:
        graph = state.read(lambda c: reads.experiment_graph(c, experiment_id))
        with st.expander("Job graph", expanded=True):
            st.graphviz_chart(queue.dag_dot(graph["nodes"], graph["edges"]))
            st.caption(f"Colors: {queue.legend()}. Arrows point from a job to the jobs that wait for it.")


_live_table(experiment_id)

# --- one job ---------------------------------------------------------------------------------

# A ?job=ID link picks the job (read once per page run, so that a bad link's error stays).
known = {r["id"] for r in state.read(lambda c: reads.job_rows(c, experiment_id))}
bad_job = _from_link("job", "queue.job", known)
if bad_job is not None:
    st.error(f"No job {md_escape(repr(bad_job))}" + ("" if experiment_id is None else f" in experiment {experiment_id}") + ".")


def _note(kind: str, text: str) -> None:
    st.session_state["queue.note"] = (kind, text)


def _cancel(job_id: int) -> None:
    try:
        result, blocked = state.write(lambda c: (jobs.cancel(c, job_id), reads.blocked_by(c, job_id)))
    except ServiceError as err:
        return _note("error", str(err))
    if result == "cancelled":
        _note("success", f"Job {job_id} cancelled"
              + (f"; blocked its dependants {', '.join(map(str, blocked))}" if blocked else "") + ".")
    elif result == "cancelling":
        _note("info", f"Job {job_id}: cancellation requested; its worker kills it at its next heartbeat.")
    else:
        _note("warning", f"Job {job_id} is {result.removeprefix('already ')}: nothing to cancel.")


def _retry(job_id: int) -> None:
    try:
        row, unblocked = state.write(lambda c: jobs.retry(c, job_id))
    except ServiceError as err:
        return _note("error", str(err))
    _note("success", f"Job {job_id} is {row.status}"
          + (f"; unblocked {', '.join(map(str, unblocked))}" if unblocked else "") + ".")


@st.cache_data(ttl=30, show_spinner=False)
def _judge_estimate(job_id: int, status: str, updated_at: object) -> str | None:
    """queue.judge_estimate, read again when the job changes (it reads response files)."""
    job = state.read(lambda c: reads.job_detail(c, job_id))
    return None if job is None else queue.judge_estimate(state.workspace(), job)


@st.fragment(run_every=LIVE_EVERY_S)
def _live_job(experiment_id: int | None) -> None:
    """The job picker (its labels carry each job's status, read again at every refresh),
    Cancel and Retry (enabled only where they act), and the picked job's detail."""
    job_rows = state.read(lambda c: reads.job_rows(c, experiment_id))
    labels = {r["id"]: queue.job_label(r) for r in job_rows}
    if st.session_state.get("queue.job") not in (None, *labels):
        st.session_state["queue.job"] = None
    job_id = st.selectbox("Job", [None, *labels], key="queue.job", on_change=_to_link, args=("job", "queue.job"),
                          format_func=lambda i: "Pick a job to see its spec, error and log" if i is None else labels[i])
    if job_id is None:
        return
    job = state.read(lambda c: reads.job_detail(c, job_id))
    if job is None:
        st.error(f"Job {job_id} no longer exists.")
        return
    status = formatting.display_status(job["status"], job["cancel_requested_at"])

    cancel_col, retry_col, note_col = st.columns([1, 1, 4])
    # The action, then a rerun of the whole page: the table, the picker and the sidebar
    # all show the new state at once.
    if cancel_col.button("Cancel", key="queue.cancel", disabled=not queue.can_cancel(job["status"],
                                                                                      job["cancel_requested_at"]),
                         help="queued or blocked: cancelled now; running: its worker kills the whole process "
                              "tree; its dependants are blocked. Disabled once a job has ended (or its "
                              "cancellation was requested)."):
        _cancel(job_id)
        st.rerun()
    if retry_col.button("Retry", key="queue.retry", disabled=not queue.can_retry(job["status"]),
                        help="re-queue a failed, cancelled or blocked job with a fresh attempt budget, and "
                             "unblock its dependants. Disabled for queued, running and succeeded jobs."):
        _retry(job_id)
        st.rerun()
    if note := st.session_state.pop("queue.note", None):
        getattr(note_col, note[0])(note[1])

    cols = st.columns(6)
    cols[0].metric("Status", status)
    frac = queue.progress_fraction(job["progress_done"], job["progress_total"])
    cols[1].metric("Progress", "-" if frac is None else f"{frac:.0%}")  # a number: no red bar
    cols[2].metric("Attempt", f"{job['attempts']}/{job['max_attempts']}")
    cols[3].metric("GPUs", job["devices_required"])
    cols[4].metric("ETA", formatting.format_duration(queue.eta_s(job, formatting.now())))
    cols[5].metric("Worker", md_escape(job["worker"] or "-"))  # a metric's value is markdown
    if progress := queue.progress_text(job):
        st.text(progress[:500])  # the stage's own message: shown as text
    started, ended, took = queue.job_times(job, formatting.now())
    st.caption(f"kind {job['kind']}; experiment {job['experiment_id'] or '-'}; depends on "
               f"{', '.join(map(str, job['depends_on'])) or 'nothing'}; needed by "
               f"{', '.join(map(str, job['dependants'])) or 'nothing'}; started "
               f"{formatting.format_time(started)}, ended {formatting.format_time(ended)}, "
               f"took {formatting.format_duration(took)}")
    if constitution := queue.constitution_label(job):
        st.text(f"constitution: {constitution}")  # a user-given name: shown as text
    if usage := queue.judge_usage(job):
        st.text(f"judge usage: {usage}")
    elif job["kind"] == "judge" and (estimate := _judge_estimate(job_id, job["status"], job["updated_at"])):
        st.text(f"judge estimate before sending: {estimate}")
    if job["error"]:
        st.markdown("**Error**")
        st.code(job["error"], language=None, wrap_lines=True)  # the stage's last log lines: untrusted, as text
    st.markdown("**Run directory**")
    path = queue.log_path(state.workspace(), job)
    st.code(str(path.parent), language=None)
    with st.expander("Spec"):
        st.json(job["spec"] or {}, expanded=True)
    if (filters := queue.filter_counts_table(job["outputs"])) is not None:
        st.markdown("**Filters** (what generate kept)")
        st.dataframe(filters, hide_index=True)
    if job["outputs"]:
        with st.expander("Outputs"):
            st.json(job["outputs"], expanded=True)
    st.markdown(f"**Log** (last {queue.LOG_TAIL_LINES} lines of {queue.LOG_NAME})")
    tail = queue.log_tail(path)
    if tail is None:
        st.caption(f"No log yet ({md_escape(path)}).")
    else:
        st.code(tail or "(empty)", language=None, height=420)


_live_job(experiment_id)
