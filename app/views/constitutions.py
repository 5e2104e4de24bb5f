"""Constitutions: principles and antitheses in a table editor, saved as immutable
versions (old ones stay; jobs point at the version they used), import/export of the
reference JSON format, and a preview of the exact prompts on a sample post."""

from __future__ import annotations

import os

import pandas as pd
import streamlit as st

from app import constitutions, state
from db.experiments import constitution_version
from db.reads import constitutions as reads
from sami_core.errors import ConstitutionError, SpecError
from services import constitution_drafts as drafts

NEW = "(new constitution)"
K = "constitutions."

st.title("Constitutions")
st.caption("A constitution is a list of principles, each with an antithesis. SAMI samples variants that flip "
           "some principles to their antitheses. Saving makes a new version; old versions stay, and every job "
           "records the version it used.")

all_versions = state.load(reads.versions)
by_id = {v["id"]: v for v in all_versions}
names = sorted({v["name"] for v in all_versions})


def _label(v: dict) -> str:
    return f"v{v['version']}"


def _load_draft(name: str, principles: list[dict], loaded: int | None) -> None:
    """Put principles into the editor (dropping its pending edits) and the name field."""
    st.session_state[K + "draft"] = [{"principle": p["principle"], "antithesis": p.get("antithesis")}
                                     for p in principles]
    st.session_state[K + "name"] = name
    st.session_state[K + "loaded"] = loaded
    st.session_state.pop(K + "editor", None)


# A save or an import asks for a selection before the selectboxes are drawn.
incoming = st.session_state.pop(K + "load", None)
if incoming is not None:
    st.session_state[K + "pick"] = NEW
    _load_draft(*incoming, None)
pending = st.session_state.pop(K + "pending", None)
if pending is not None and pending in by_id:
    st.session_state[K + "pick"] = by_id[pending]["name"]
    st.session_state[K + "version"] = pending
if K + "pick" not in st.session_state:
    wanted = state.param("constitution")
    st.session_state[K + "pick"] = NEW
    if wanted is not None and str(wanted).isdigit() and int(wanted) in by_id:
        st.session_state[K + "pick"] = by_id[int(wanted)]["name"]
        st.session_state[K + "version"] = int(wanted)
if st.session_state[K + "pick"] not in [NEW, *names]:
    st.session_state[K + "pick"] = NEW

left, right = st.columns([1, 1])
with left:
    pick = st.selectbox("Saved constitution", [NEW, *names], key=K + "pick")
selected: dict | None = None
with right:
    if pick != NEW:
        ids = [v["id"] for v in all_versions if v["name"] == pick]
        if st.session_state.get(K + "version") not in ids:
            st.session_state[K + "version"] = ids[0]
        vid = st.selectbox("Version", ids, key=K + "version", format_func=lambda i: _label(by_id[i]))
        selected = by_id[vid]

# Load the selected version into the editor when the selection changes.
current = selected["id"] if selected else None
if K + "draft" not in st.session_state or st.session_state.get(K + "loaded") != current:
    if selected:
        _load_draft(selected["name"], selected["principles"], current)
    else:
        _load_draft("", [], None)

if selected:
    parent = f"v{selected['parent_version']}" if selected["parent_version"] else "none (first version)"
    about = selected["description"] or ""
    st.text(f"{selected['name']} v{selected['version']} (id {selected['id']}): created "
            f"{selected['created_at']:%Y-%m-%d %H:%M} UTC; parent {parent}; used by {selected['n_jobs']} job(s) in "
            f"{selected['n_experiments']} experiment(s)" + (f"; {about}" if about else ""))
    used = state.load(reads.usage, selected["id"])
    if used:
        st.dataframe(pd.DataFrame([{"experiment": u["experiment_id"], "name": u["experiment"], "jobs": u["n_jobs"],
                                    "job ids": ", ".join(map(str, u["job_ids"]))} for u in used]),
                     hide_index=True, key=K + "usage")

if all_versions:
    with st.expander(f"All versions ({len(all_versions)})"):
        st.dataframe(pd.DataFrame([{
            "name": v["name"], "version": v["version"], "id": v["id"], "created (UTC)": v["created_at"],
            "parent": f"v{v['parent_version']}" if v["parent_version"] else "", "principles": v["n_principles"],
            "jobs": v["n_jobs"], "experiments": v["n_experiments"], "description": v["description"] or ""}
            for v in all_versions]), hide_index=True, key=K + "all")

flash = st.session_state.pop(K + "flash", None)
if flash:
    st.success(flash)

# ---- draft with a model ---------------------------------------------------------------------
D = K + "draft."  # the draft form's keys
DRAFT_JOB, DRAFT_LOADED = K + "draft_job", K + "draft_loaded"
LIVE_S = 2.0  # how often a queued or running draft is looked at


# The key variable each provider's client reads by default; switching the provider switches it
# unless the user wrote a name of their own (or emptied it).
KEY_ENV_DEFAULTS = {"openai": "OPENAI_API_KEY", "azure": "AZURE_OPENAI_API_KEY"}


def _provider_changed() -> None:
    ss = st.session_state
    if ss.get(D + "api_key_env") in KEY_ENV_DEFAULTS.values():
        ss[D + "api_key_env"] = KEY_ENV_DEFAULTS.get(ss.get(D + "provider"), ss[D + "api_key_env"])


def _queue_draft() -> None:
    ss = st.session_state
    req = drafts.DraftRequest(
        task_description=ss.get(D + "task") or "", n_principles=int(ss.get(D + "n") or 0),
        provider=ss.get(D + "provider") or "openai", model=ss.get(D + "model") or "",
        base_url=ss.get(D + "base_url") if ss.get(D + "provider") == "openai" else None,
        azure_endpoint=ss.get(D + "azure_endpoint") if ss.get(D + "provider") == "azure" else None,
        api_version=ss.get(D + "api_version") if ss.get(D + "provider") == "azure" else None,
        api_key_env=ss.get(D + "api_key_env"), name=ss.get(D + "name"))
    try:
        plan = drafts.plan_draft(req, os.environ)
    except SpecError as err:
        ss[D + "errors"] = err.errors
        return
    ss[D + "errors"] = []
    ss[DRAFT_JOB] = state.write(lambda conn: drafts.queue_draft(conn, plan))
    ss[D + "notes"] = plan.notes


with st.expander("Draft with a model", expanded=DRAFT_JOB in st.session_state):
    st.caption("A model writes principles and their antitheses for a task (the SAMI paper's constitutions were "
               "written by Claude Opus and Mistral). A worker runs the draft as a write_constitution job; the "
               "draft then appears in the editor below, to edit and save as a version. API keys are never "
               "stored: the worker reads the key from the environment variable named here.")
    c1, c2 = st.columns(2)
    st.session_state.setdefault(D + "api_key_env", KEY_ENV_DEFAULTS["openai"])
    provider = c1.selectbox("Writer provider", drafts.WRITER_PROVIDERS, key=D + "provider", on_change=_provider_changed,
                            help="openai: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama); azure: Azure OpenAI.")
    c2.text_input("Writer model (the deployment name on Azure)", value="gpt-4o", key=D + "model")
    if provider == "openai":
        st.text_input("Base URL (OpenAI-compatible; empty = OpenAI's)", key=D + "base_url",
                      placeholder="http://localhost:8000/v1")
    else:
        c1, c2 = st.columns(2)
        c1.text_input("Azure endpoint", key=D + "azure_endpoint", placeholder="https://NAME.openai.azure.com")
        c2.text_input("API version", key=D + "api_version", placeholder="2024-06-01")
    st.text_input("API key variable (empty = no key, e.g. a local server)", key=D + "api_key_env")
    st.text_area("Task", key=D + "task", height=80, placeholder="summarise Reddit posts in a few sentences",
                 help="What the model that is trained with this constitution should do.")
    c1, c2 = st.columns(2)
    c1.number_input("Principles", min_value=1, max_value=20, value=4, step=1, key=D + "n")
    c2.text_input("Name of the draft (empty = drafted-<job id>)", key=D + "name")
    st.button("Queue the draft", key=D + "queue", on_click=_queue_draft)
    for field, reason in st.session_state.get(D + "errors") or []:
        st.error(f"{field or 'draft'}: {reason}")

    job_id = st.session_state.get(DRAFT_JOB)
    if job_id is not None:
        for note in st.session_state.get(D + "notes") or []:
            st.caption(note)
        first = state.read(lambda conn: drafts.draft_state(conn, state.workspace(), job_id))
        live = first is not None and first.status not in ("succeeded", "failed", "cancelled")

        @st.fragment(run_every=LIVE_S if live else None)
        def _draft_status(job_id: int) -> None:
            d = state.read(lambda conn: drafts.draft_state(conn, state.workspace(), job_id))
            if d is None:
                st.error(f"Draft job #{job_id} no longer exists.")
                return
            if d.done:
                name = d.name or f"drafted-{d.job_id}"
                if st.session_state.get(DRAFT_LOADED) != d.job_id:  # once: into the editor, for editing
                    st.session_state[DRAFT_LOADED] = d.job_id
                    st.session_state[K + "load"] = (name, d.principles)
                    st.session_state[K + "flash"] = (
                        f"Draft job #{d.job_id}: {len(d.principles)} principles by {d.writer_model}, in the editor "
                        "below: edit them, then save as a new version.")
                    st.rerun(scope="app")
                st.success(f"Draft job #{d.job_id} is done: {len(d.principles)} principles by {d.writer_model}.")
                if st.button("Load the draft into the editor again", key=D + "reload"):
                    st.session_state[K + "load"] = (name, d.principles)
                    st.rerun(scope="app")
            elif d.status == "succeeded":  # but its constitution.json cannot be read
                st.error(f"Draft job #{d.job_id}: {d.message}")
            elif d.status == "failed":
                st.error(f"Draft job #{d.job_id} failed: {d.message}")
            elif d.status in ("cancelled", "blocked"):
                st.warning(f"Draft job #{d.job_id} is {d.status}.")
            else:
                st.info(f"Draft job #{d.job_id} is {d.status}" + (f": {d.message}" if d.message else "")
                        + (" (a worker, `sami worker`, runs it)" if d.status == "queued" else "") + ".")

        _draft_status(job_id)

# ---- editor -------------------------------------------------------------------------------
name = st.text_input("Constitution name", key=K + "name", max_chars=constitutions.NAME_MAX + 50,
                     help="Saving under an existing name makes its next version.")
draft = pd.DataFrame(st.session_state[K + "draft"], columns=list(constitutions.COLUMNS))
edited = st.data_editor(
    draft, num_rows="dynamic", key=K + "editor", hide_index=True, width="stretch",
    column_config={"principle": st.column_config.TextColumn("principle", width="large", required=False),
                   "antithesis": st.column_config.TextColumn("antithesis", width="large")},
)
rows = edited.to_dict("records")

# The table shows each principle on one line, cut at the column's width: the selected row
# is read and edited in full here, and "Apply" puts it back into the table.
full = [i for i, r in enumerate(rows) if any(constitutions.full_text(r, c) for c in constitutions.COLUMNS)]
if full:
    with st.expander("Read and edit one principle in full"):
        if st.session_state.get(K + "full_row") not in full:
            st.session_state[K + "full_row"] = full[0]
        i = st.selectbox("Principle", full, key=K + "full_row",
                         format_func=lambda i: f"{i + 1}: {constitutions.full_text(rows[i], 'principle')[:80]}")
        stamp = constitutions.row_stamp(rows[i])  # new widgets when the row changes in the table
        c1, c2 = st.columns(2)
        p_text = c1.text_area("Principle", value=constitutions.full_text(rows[i], "principle"), height=150,
                              key=f"{K}full.principle.{i}.{stamp}")
        a_text = c2.text_area("Antithesis", value=constitutions.full_text(rows[i], "antithesis"), height=150,
                              key=f"{K}full.antithesis.{i}.{stamp}")
        if st.button("Apply to the table", key=K + "full_apply"):
            st.session_state[K + "draft"] = constitutions.replace_row(rows, i, p_text, a_text)
            st.session_state.pop(K + "editor", None)
            st.rerun()

result = constitutions.check(name, rows)
blank = not name.strip() and not constitutions.clean_rows(rows)
if blank:
    st.caption("Name the constitution and write its principles (one row each), each with its antithesis.")
for e in [] if blank else result.errors:
    st.error(e)
for w in result.warnings:
    st.caption(w)

if st.button("Save as new version", key=K + "save", type="primary"):
    if not result.ok:
        for e in result.errors if blank else []:
            st.error(e)
        st.error("Nothing saved: fix the errors above first.")
    else:
        c_name = name.strip()
        principles = constitutions.clean_rows(rows)
        base = f"edited from {selected['name']} v{selected['version']}" if selected else "written in the app"
        cid, ver, created = state.write(lambda conn: constitution_version(conn, c_name, principles, description=base))
        st.session_state[K + "flash"] = (f"Saved {c_name} as version {ver}." if created else
                                         f"Saved nothing new: these principles are already {c_name} version {ver}, "
                                         "which is reused.")
        st.session_state[K + "pending"] = cid
        st.session_state[K + "loaded"] = cid
        st.session_state.pop(K + "editor", None)
        st.session_state[K + "draft"] = principles
        st.rerun()

# ---- import / export ------------------------------------------------------------------------
st.subheader("Import and export")
imp, exp = st.columns(2)
with imp:
    up = st.file_uploader(f"Import a constitution (reference or native JSON, at most {state.MAX_UPLOAD_MB} MB)",
                          type=["json"], key=K + "upload", max_upload_size=state.MAX_UPLOAD_MB)
    if up is not None and st.session_state.get(K + "uploaded") != up.file_id:
        try:
            c_name, principles = constitutions.parse_upload(up.name, up.getvalue(), state.MAX_UPLOAD_MB)
        except ConstitutionError as err:
            st.error(f"Not imported: {err}")
        else:
            st.session_state[K + "uploaded"] = up.file_id
            st.session_state[K + "load"] = (c_name, principles)
            st.session_state[K + "flash"] = (f"Imported {len(principles)} principles from {up.name}: "
                                             "check them, then save as a new version.")
            st.rerun()
    shipped = st.selectbox("Or start from a shipped constitution (the SAMI paper's)", constitutions.shipped(),
                           key=K + "shipped")
    if st.button("Load shipped constitution", key=K + "load_shipped"):
        st.session_state[K + "load"] = (shipped.removeprefix("demo:").replace("/", "-"),
                                        constitutions.load_shipped(shipped))
        st.rerun()
with exp:
    if selected:
        stem = f"{selected['name']}-v{selected['version']}".replace("/", "-")
        st.download_button("Export (reference JSON)", constitutions.export_json(selected["principles"], "reference"),
                           file_name=f"{stem}.json", mime="application/json", key=K + "export_reference")
        st.download_button("Export (native JSON)", constitutions.export_json(selected["principles"], "native"),
                           file_name=f"{stem}.native.json", mime="application/json", key=K + "export_native")
    else:
        st.caption("Pick a saved version to export it.")

# ---- prompt preview -------------------------------------------------------------------------
st.subheader("Prompt preview")
if result.constitution is None:
    st.caption("Fix the constitution to preview its prompts.")
else:
    posts = constitutions.sample_posts()
    c1, c2, c3, c4 = st.columns(4)
    post_i = c1.selectbox("Sample post", range(len(posts)), key=K + "post",
                          format_func=lambda i: f"#{posts[i]['id']}: {posts[i]['post'][:50]}")
    task = c2.selectbox("Task", ["summarization", "dialogue"], key=K + "task")
    n_max = max(2, min(constitutions.PREVIEW_MAX_N, result.constitution.max_variants))
    if st.session_state.get(K + "n", 2) > n_max:  # the constitution changed under the widget
        st.session_state[K + "n"] = n_max
    n = int(c3.number_input("N (variants)", min_value=2, max_value=n_max, value=2, step=1, key=K + "n"))
    fmt = c4.selectbox("Prompt format", ["plain", "chat"], key=K + "format",
                       help="plain: base models; chat: the model's chat template, shown here as its messages.")
    n = min(n, result.constitution.max_variants)
    p1, p2 = st.columns([1, 3])
    preset = p1.selectbox("Prompts", constitutions.PRESETS, key=K + "preset",
                          help="The `prompts.preset` of a spec: the generation and training templates.")
    keep = p2.checkbox("Keep the forced prefix in the response", value=True, key=K + "keep_prefix",
                       help="`prompts.keep_prefix`: the forced start of the response (e.g. 'The post') is "
                            "stored, trained on and judged with the response, or stripped from it.")
    p2.caption(constitutions.preset_note(preset))
    try:
        templates = constitutions.templates_for(task, preset, keep)
    except ValueError as err:
        st.error(str(err))
        st.stop()
    pv = constitutions.preview(result.constitution, posts[post_i]["post"], task=task, n=n, chat=fmt == "chat",
                               templates=templates)
    gen_tab, train_tab = st.tabs(["Generation prompts", "Training sequences"])
    with gen_tab:
        st.caption("Per query, N variants (order shuffled, some principles flipped); the policy samples one "
                   "response to each prompt" + (f", continuing the forced start {templates.response_prefix!r}"
                                               if templates.response_prefix else "") + ".")
        for i, (v, p) in enumerate(zip(pv.variants, pv.generation)):
            flipped = [k + 1 for k, f in enumerate(v.flips) if f]
            what = f"principles {flipped} flipped" if flipped else "the constitution as written"
            st.text(f"Variant {i + 1}: {what}")
            st.code(p, language=None, wrap_lines=True)
    with train_tab:
        st.caption("Training scores every response under every training prompt: L[i, j] = log p(y_j | prompt_i); "
                   "the loss asks each row and column to pick the diagonal. "
                   + ("The training prompt differs from the generation prompt. " if templates.training !=
                      templates.generation else "")
                   + "<eos?>: an EOS is scored only where the model ended the response itself "
                     "(training.append_eos: auto, the default; a response cut at a stop string is scored on its "
                     "own tokens).")
        for i in range(n):
            for j in range(n):
                st.text(f"L[{i + 1}, {j + 1}]")
                st.code(pv.training[i][j], language=None, wrap_lines=True)
