"""The "Judge these two sources" form, which any page can draw under a pair of response sources.

Pick which of the two is the candidate and the judge (provider, model, key variable,
template, orders, a limit); see how many judgments are already cached (the workspace's
shared judge cache, as the worker will read it) and how many requests would be sent; queue
the judge job through services.judging, exactly as `sami judge` does. The app never runs
the judge: a worker does. Shared drawing, like app/sidebar.py; its pure parts are in
app/responses.py."""

from __future__ import annotations

import os
from collections.abc import Mapping

import streamlit as st

from app import responses, state
from app.formatting import md_escape
from sami_core.errors import SamiError
from services import judging
from services.errors import ServiceError


def draw(sources: Mapping[int, dict], pair: tuple[int, int], temperature: float | None, *, key: str) -> None:
    """The form for the two response sources ``pair`` (ids in ``sources``: list_sources rows)
    at ``temperature`` (None: every temperature both have); session keys start with ``key``."""
    at_temperature = "" if temperature is None else f" at temperature {temperature:g}"
    j1, j2, j3 = st.columns([1, 1, 2])
    first = j1.radio("Candidate", (0, 1), key=f"{key}.candidate", horizontal=True,
                     format_func=lambda k: f"#{pair[k]}" + (" (left)" if k == 0 else " (right)"),
                     help="The candidate is judged against the baseline (the other source).")
    candidate, baseline = pair[first], pair[1 - first]
    provider = j2.selectbox("Judge provider", responses.JUDGE_PROVIDERS, key=f"{key}.provider",
                            help="auto: OpenAI when the key variable is set, Azure OpenAI when AZURE_OPENAI_API_KEY "
                                 "and AZURE_OPENAI_ENDPOINT are, else the local hf judge on the demo model "
                                 "(mechanics only); rule: a deterministic rule named by the model (concision)")
    model = j3.text_input("Judge model", value="gpt-4o", key=f"{key}.model",
                          help="a model id (a deployment on Azure; a hub id or folder for hf; a rule's name)")
    k1, k2, k3, k4 = st.columns(4)
    key_env = k1.text_input("API key variable", value="OPENAI_API_KEY", key=f"{key}.key_env",
                            help="the NAME of the environment variable holding the key, never the key itself")
    limit = k2.number_input("Pairs (0 = all)", min_value=0, value=0, step=1, key=f"{key}.limit")
    template = k3.selectbox("Template", list(responses.JUDGE_TEMPLATES), key=f"{key}.template")
    both = k4.checkbox("Both A/B orders", key=f"{key}.both_orders")
    extra = {}
    if provider == "openai":
        extra["base_url"] = st.text_input("Endpoint (optional)", key=f"{key}.base_url",
                                          placeholder="http://localhost:8000/v1: any OpenAI-compatible server") or None
    elif provider == "azure":
        a1, a2 = st.columns(2)
        extra["azure_endpoint"] = a1.text_input("Azure endpoint", key=f"{key}.azure_endpoint") or None
        extra["api_version"] = a2.text_input("API version", key=f"{key}.api_version") or None
    opts = judging.JudgeOptions(
        candidate=str(candidate), baseline=str(baseline), provider=provider, model=model.strip() or "gpt-4o",
        api_key_env=key_env.strip() or None, both_orders=both, limit=int(limit) or None, temperature=temperature,
        template=responses.JUDGE_TEMPLATES[template], experiment_id=sources[candidate].get("experiment_id"), **extra)
    try:
        plan = judging.plan_judge(state.read, state.workspace(), opts, os.environ, require_key=False)
    except (ServiceError, SamiError, ValueError, OSError) as err:
        st.error(md_escape(str(err)))
        return
    st.info(md_escape(f"{responses.judge_sides(sources, candidate, baseline)}{at_temperature}: "
                      f"{responses.plan_text(plan.estimate)}"))
    if plan.estimate.to_send and plan.spec["judge"]["provider"] != "hf":
        st.caption(md_escape(f"Before sending: {plan.estimate.tokens_text()}"))
    for note in plan.notes:
        (st.warning if plan.key_missing and note.startswith("$") else st.caption)(md_escape(note))
    if st.button("Queue judge job", key=f"{key}.queue", type="primary", disabled=plan.key_missing):
        try:
            job_id = state.write(lambda c: judging.queue_judge(c, plan, experiment_id=opts.experiment_id))
        except ServiceError as err:
            st.error(md_escape(str(err)))
            return
        st.session_state[f"{key}.queued"] = (job_id, candidate, baseline)
    queued = st.session_state.get(f"{key}.queued")
    if queued is not None and tuple(queued[1:]) == (candidate, baseline):
        st.success(f"Queued judge job #{queued[0]}: a worker runs it (Queue page); its verdicts then show here.")
