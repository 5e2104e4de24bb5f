"""Generated data page: what a generate job sampled, per query its N prompts and responses
side by side, kept for training or dropped with the filter that dropped it; counts per
filter, search and pages in SQL. Model outputs and prompts are untrusted: st.text, or
st.html of fully escaped text where search matches are marked."""

import streamlit as st

from app import generated, responses, state
from app.formatting import md_escape, parse_id
from app.pager import pager
from app.texts import show_post, show_text
from db.reads import generated as reads

st.title("Generated data")

jobs = state.load(reads.generate_jobs)
if not jobs:
    st.info("No generate jobs yet. Submit an experiment (New experiment page): each iteration's generate job "
            "samples N responses per training query, and its responses land here when it finishes.")
    st.stop()
by_id = {j["id"]: j for j in jobs}


def _first_page() -> None:
    st.session_state["generated.page"] = 1


# ?job=ID picks the job; ?experiment=ID its latest generate job; else the latest.
state.preselect("job", "generated.job", by_id)
st.session_state.setdefault("generated.job", generated.default_job(jobs, parse_id(state.param("experiment"))))
job_id = st.selectbox("Generate job", list(by_id), key="generated.job", on_change=_first_page,
                      format_func=lambda i: generated.job_label(by_id[i]))
st.query_params["job"] = str(job_id)
job = by_id[job_id]
if not job["n_rows"]:
    st.info("No generated responses stored for this job: it has not finished yet, or it finished before the "
            "workbench kept them (its run directory still has generations.jsonl and data.jsonl).")
    st.stop()

counts = state.load(reads.filter_counts, job_id)
n_all = state.load(reads.count_queries, job_id)
st.caption(md_escape(generated.kept_summary(counts, n_all)))
st.dataframe(generated.counts_frame(counts), hide_index=True, key="generated.counts")

f1, f2 = st.columns([1, 2])
status = f1.selectbox("Show", generated.status_choices(counts), key="generated.status", on_change=_first_page,
                      format_func=generated.status_label)
search = f2.text_input("Search (query or any response)", key="generated.search", on_change=_first_page)
needle = search.strip() or None

total = n_all if status == reads.ALL and not needle else state.load(reads.count_queries, job_id, status=status,
                                                                    search=needle)
page, page_size, n_pages, p5 = pager("generated", total, generated.PAGE_SIZES, on_size_change=_first_page)
p5.caption(f"{total} queries match; page {page} of {n_pages}.")
if not total:
    st.info("No query matches these filters.")
    st.stop()



for q in state.load(reads.query_page, job_id, status=status, search=needle, page=int(page), page_size=page_size):
    with st.container(border=True):
        reasons = sorted({v["dropped_by"] for v in q["variants"] if v["dropped_by"]})
        outcome = "kept" if q["kept"] else "dropped: " + "; ".join(generated.reason_text(r) for r in reasons)
        st.caption(md_escape(f"Query {q['query_id']} · {len(q['variants'])} responses · {outcome}"))
        post = q["query"] or "(query text not stored)"
        show_post(post, needle)
        cols = st.columns(len(q["variants"]))
        for col, v in zip(cols, q["variants"]):
            with col:
                state_text = "kept" if v["kept"] else f"dropped: {generated.reason_text(v['dropped_by'])}"
                name = f" · {v['constitution_name']}" if v["constitution_name"] else ""
                st.caption(md_escape(f"Variant {v['variant']}{name} · {state_text} · "
                                     f"{responses.lengths(v['response'], v['n_tokens'])}"))
                show_text(v["response"], needle)
                with st.expander("Prompt"):
                    st.text(v["prompt"])
