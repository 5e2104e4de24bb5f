"""Responses page: two response sources side by side, query by query (checkpoints,
baselines, imported files), filtered by temperature, text and the judge's verdict, a page
at a time (paginated in SQL); "Judge these two sources" queues a judge job of one against
the other. Model outputs and judge text are untrusted: st.text, or st.html of fully escaped
text where search matches are highlighted."""

import streamlit as st

from app import judge_form, responses, state
from app.formatting import md_escape
from app.pager import pager
from app.texts import show_post, show_text
from db import ingest
from db.reads import responses as reads

st.title("Responses")

sources = state.load(ingest.list_sources)
if not sources:
    st.info("No responses yet. Sample jobs of an experiment, or `sami import-results`, add response sources.")
    st.stop()
by_id = {s["id"]: s for s in sources}
ids = list(by_id)
aliases = responses.short_labels([s["label"] for s in sources])


def _first_page() -> None:
    st.session_state["responses.page"] = 1


# ?left=ID&right=ID pick the sources; else the default pair.
for side, default in zip(("left", "right"), responses.default_pair(sources)):
    state.preselect(side, f"responses.{side}", by_id)
    st.session_state.setdefault(f"responses.{side}", default)

c1, c2 = st.columns(2)
left = c1.selectbox("Left source", ids, key="responses.left", on_change=_first_page,
                    format_func=lambda i: responses.source_label(by_id[i], aliases[by_id[i]["label"]]))
right = c2.selectbox("Right source", ids, key="responses.right", on_change=_first_page,
                     format_func=lambda i: responses.source_label(by_id[i], aliases[by_id[i]["label"]]))
c1.caption(md_escape(responses.source_details(by_id[left])))
c2.caption(md_escape(responses.source_details(by_id[right])))
# The URL names the pair shown, so that it can be shared or reloaded.
st.query_params["left"], st.query_params["right"] = str(left), str(right)
if left == right:
    st.caption("Both sides show the same source: pick another one on the right to compare.")

temps = state.load(reads.pair_temperatures, left, right)
if not temps:
    st.info(f"These two sources share no temperature ({md_escape(by_id[left]['label'])}: "
            f"{state.load(reads.source_temperatures, left)}; {md_escape(by_id[right]['label'])}: "
            f"{state.load(reads.source_temperatures, right)}), so no response pairs up.")
    st.stop()

f1, f2, f3 = st.columns([1, 2, 1])
temperature = f1.selectbox("Temperature", [None, *temps], key="responses.temperature", on_change=_first_page,
                           format_func=lambda t: "all" if t is None else f"{t:g}")
search = f2.text_input("Search (query or either response)", key="responses.search", on_change=_first_page)
verdict_label = f3.selectbox("Verdict", list(responses.VERDICT_FILTERS), key="responses.verdict", on_change=_first_page,
                             help="The judge's verdict on the pair, from its side: the candidate is the response "
                                  "judged against the baseline (each verdict line below says which side it is).")
verdict = responses.VERDICT_FILTERS[verdict_label]

at_temperature = "" if temperature is None else f" at temperature {temperature:g}"
counts = state.load(reads.verdict_counts, left, right, temperature=temperature)
if counts:
    st.caption(f"Judgments between these sources{at_temperature}: " + ", ".join(
        f"{responses.VERDICT_TEXT.get(v, v)}: {n}" for v, n in sorted(counts.items())))
else:
    st.caption(f"No judgments between these two sources{at_temperature}.")


if st.toggle("Judge these two sources", key="responses.judge.open",
             help="Queue a judge job comparing the two sources shown (at the temperature chosen above)."):
    if left == right:
        st.caption("Pick two different sources to judge one against the other.")
    else:
        with st.container(border=True):
            judge_form.draw(by_id, (left, right), temperature, key="responses.judge")

total = state.load(reads.count_pairs, left, right, temperature=temperature, search=search or None, verdict=verdict)
n_queries = state.load(reads.count_pair_queries, left, right, temperature=temperature, search=search or None,
                       verdict=verdict)
page, page_size, n_pages, p5 = pager("responses", total, responses.PAGE_SIZES, on_size_change=_first_page)
pairs_note = "" if total == n_queries else f" ({total} response pairs over {len(temps)} temperatures)"
p5.caption(f"{n_queries} queries in both sources match{pairs_note}; page {page} of {n_pages}.")
if not total:
    st.info("No query matches these filters.")
    st.stop()

pairs = state.load(reads.pair_page, left, right, temperature=temperature, search=search or None, verdict=verdict,
                   page=int(page), page_size=page_size)
response_ids = tuple(sorted({p["left_id"] for p in pairs} | {p["right_id"] for p in pairs}))
judged: dict[frozenset, list[dict]] = {}
for j in state.load(reads.pair_judgments, response_ids):
    judged.setdefault(frozenset((j["candidate_id"], j["baseline_id"])), []).append(j)
constitution_ids = tuple(sorted({c for p in pairs for c in (p["left_constitution_id"], p["right_constitution_id"])
                                 if c is not None}))
constitutions = state.load(reads.constitutions_by_id, constitution_ids)
names = (by_id[left]["label"], by_id[right]["label"])



for p in pairs:
    with st.container(border=True):
        st.caption(f"Query {md_escape(p['query_id'])} · temperature {p['temperature']:g}"
                   + (f" · sample {p['sample_index']}" if p["sample_index"] else ""))
        post = p["query"] or "(query text not stored)"
        show_post(post, search)
        for side in ("left", "right"):
            if side == "right" and p["right_constitution_id"] == p["left_constitution_id"]:
                continue
            c = constitutions.get(p[f"{side}_constitution_id"])
            if c is None:
                continue
            both = p["right_constitution_id"] == p["left_constitution_id"]
            title = f"Constitution: {md_escape(c['name'])} v{c['version']}" + ("" if both else f" ({side})")
            with st.expander(title):
                st.text(responses.principles_text(c["principles"]))
        cols = st.columns(2)
        for col, side, name in zip(cols, ("left", "right"), names):
            with col:
                st.caption(f"{md_escape(name)} · {responses.lengths(p[f'{side}_text'], p[f'{side}_tokens'])}")
                show_text(p[f"{side}_text"], search)
        for j in judged.get(frozenset((p["left_id"], p["right_id"])), []):
            st.text(responses.verdict_line(j, p["left_id"], names))
            if j.get("rationale"):
                st.text(j["rationale"])
