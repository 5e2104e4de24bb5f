"""New experiment: a form and a YAML view of one experiment spec (the YAML is exactly a
file `sami submit` accepts), errors next to the fields they name, and a submit that
enqueues the experiment's jobs (nothing is written unless everything checks out)."""

from __future__ import annotations

import copy

import pandas as pd
import streamlit as st

from app import new_experiment, state
from app.formatting import md_escape
from db.reads import constitutions as creads
from sami_core.data_files import FILE_TYPES, DataFileError, check_upload
from sami_core.contract import EXPERIMENT_KINDS
from sami_core.errors import SpecError
from sami_core.spec import shipped_constitution_sets, shipped_constitutions
from services import sweeps
from services.experiments import SubmitError, submit

K = "new_experiment."
SPEC, YAML, YAML_ERROR, ERRORS, RESULT = K + "spec", K + "yaml", K + "yaml_error", K + "errors", K + "result"
UPLOAD_ERROR, FIELD_ERRORS, CONSTITUTION, JUDGING = (K + "upload_error", K + "field_errors", K + "constitution",
                                                      K + "judge.enabled")

versions = state.load(creads.versions)
choices = new_experiment.constitution_choices(versions, shipped_constitutions(), shipped_constitution_sets())
ss = st.session_state
ss.setdefault(SPEC, copy.deepcopy(new_experiment.INITIAL))
ss.setdefault(FIELD_ERRORS, {})
ss.setdefault(ERRORS, [])


def _key(f: new_experiment.Field) -> str:
    return K + f.path


def _push(spec: dict) -> None:
    """Show ``spec`` in every widget and in the YAML view (before they are drawn)."""
    ss[SPEC] = spec
    values, _ = new_experiment.widget_values(spec)
    for f in new_experiment.FIELDS:
        if f.path in values:
            ss[_key(f)] = values[f.path]
        else:
            ss.pop(_key(f), None)
    ss[CONSTITUTION] = new_experiment.constitution_label(spec.get("constitution"), versions)
    ss[JUDGING] = bool(spec.get("judge"))
    ss[YAML] = new_experiment.to_yaml(spec)
    ss[YAML_ERROR] = None
    ss[FIELD_ERRORS] = {}
    ss[ERRORS] = []
    ss[UPLOAD_ERROR] = None


def _changed(spec: dict) -> None:
    ss[SPEC] = spec
    ss[YAML] = new_experiment.to_yaml(spec)
    ss[YAML_ERROR] = None
    ss[ERRORS] = []
    ss[RESULT] = None


def _on_field(f: new_experiment.Field) -> None:
    try:
        value = new_experiment.from_widget(f, ss[_key(f)])
    except ValueError as err:
        ss[FIELD_ERRORS][f.path] = str(err)
        return
    ss[FIELD_ERRORS].pop(f.path, None)
    _changed(new_experiment.put(ss[SPEC], f, value))


def _on_constitution() -> None:
    label = ss[CONSTITUTION]
    if label in choices:
        _changed({**ss[SPEC], "constitution": choices[label]})


def _on_judging() -> None:
    spec = ss[SPEC]
    if ss[JUDGING] and ss.get(K + "judge_off"):  # back on: the judge section as it was
        spec = {**spec, "judge": ss.pop(K + "judge_off")}
    elif not ss[JUDGING] and spec.get("judge"):
        ss[K + "judge_off"] = spec["judge"]
    spec = new_experiment.set_judging(spec, ss[JUDGING])
    _changed(spec)
    values, _ = new_experiment.widget_values(spec)
    for f in new_experiment.FIELDS:
        if f.section == "judge" and f.path in values:
            ss[_key(f)] = values[f.path]


def _on_yaml() -> None:
    ss[ERRORS] = []  # they were about the spec as it was; a submit checks the new one
    ss[RESULT] = None
    try:
        spec = new_experiment.from_yaml(ss[YAML])
    except SpecError as err:
        ss[YAML_ERROR] = err.errors[0][1]
        return
    text = ss[YAML]
    _push(spec)
    ss[YAML] = text  # keep the user's text (comments, layout) until the form changes
    ss[RESULT] = None


def _on_demo() -> None:
    _push(new_experiment.demo_spec())
    ss[RESULT] = None
    ss[K + "loaded_from"] = None


def _on_submit() -> None:
    """Every error at once: the form's own (values its widgets could not take, a refused
    upload), then those of the spec the form shows (unless the YAML is invalid: then the
    form shows the last valid spec, not what was typed)."""
    ss[RESULT] = None
    errors = list(ss[FIELD_ERRORS].items())
    if ss.get(YAML_ERROR):
        errors.append(("yaml", f"invalid YAML: {ss[YAML_ERROR]}"))
    if ss.get(UPLOAD_ERROR):
        errors.append(("data.path", f"the uploaded file was refused: {ss[UPLOAD_ERROR]}"))
    if not ss.get(YAML_ERROR):
        prepared, spec_errors = new_experiment.prepare(ss[SPEC], state.MAX_UPLOAD_MB)
        errors = new_experiment.merge_errors(errors, spec_errors)
    if not errors:
        try:
            if isinstance(prepared, sweeps.PreparedSweep):  # every point in one transaction
                ss[RESULT] = {"sweep": state.write(lambda conn: sweeps.submit_sweep(conn, prepared)).as_dict()}
            else:
                ss[RESULT] = state.write(lambda conn: submit(conn, prepared)).as_dict()
        except (SubmitError, SpecError) as err:
            errors = list(err.errors)
    ss[ERRORS] = errors


# "Edit and resubmit" (Experiments page): (experiment id, its stored spec) to show in the form.
if (loaded := ss.pop(K + "load", None)) is not None:
    _push(loaded[1])
    ss[RESULT] = None
    ss[K + "loaded_from"] = loaded[0]

shown: set[tuple[str, str]] = set()


def _errors(*prefixes: str) -> None:
    for p, r in ss[ERRORS]:
        if (p, r) not in shown and new_experiment.is_under(p, *prefixes):
            shown.add((p, r))
            st.error(f"{p}: {r}")


def widget(path: str, **kw) -> None:
    """The field's widget, its problems and errors right under it."""
    f = new_experiment.BY_PATH[path]
    key = _key(f)
    spec = ss[SPEC]
    try:
        value = new_experiment.to_widget(f, new_experiment.get(spec, f))
    except ValueError as err:
        ss.pop(key, None)
        st.caption(f"{f.label}: {err}")
        _errors(path)
        return
    if key not in ss:
        ss[key] = value
    common = dict(key=key, on_change=_on_field, args=(f,), help=f.help)
    if f.kind in ("text", "opt_text", "floats", "names"):
        st.text_input(f.label, **common)
    elif f.kind == "area":
        st.text_area(f.label, height=kw.get("height", 160), **common)
    elif f.kind in ("int", "opt_int"):
        st.number_input(f.label, step=1, **common)
    elif f.kind == "float":
        st.number_input(f.label, step=kw.get("step", 0.01), format=kw.get("format", "%.4f"), **common)
    elif f.kind == "select":
        options = list(f.options) + ([ss[key]] if ss[key] not in f.options else [])
        st.selectbox(f.label, options, **common)
    elif f.kind == "bool":
        st.checkbox(f.label, **common)
    if f.path in ss[FIELD_ERRORS] and (f.path, ss[FIELD_ERRORS][f.path]) not in ss[ERRORS]:
        st.error(f"{f.path}: {ss[FIELD_ERRORS][f.path]}")
    _errors(path)


# ---- page ---------------------------------------------------------------------------------------
st.title("New experiment")
st.caption("Fill in the form or edit the YAML: they show the same spec. The YAML is exactly what "
           "`sami submit FILE` takes. Submitting stores the constitution version and enqueues the "
           "experiment's jobs; workers run them.")
st.button("Load the demo experiment", key=K + "demo", on_click=_on_demo,
          help="sami_core/examples/demo.yaml: the embedded demo model on the shipped posts (mechanics only).")
if ss.get(K + "loaded_from") is not None and not ss.get(RESULT):
    st.info(f"The spec of experiment {ss[K + 'loaded_from']}, as it was submitted (constitution inline, paths "
            "absolute): edit it and submit it as a new experiment.")

form, yaml_col = st.columns([3, 2])
with form:
    widget("name")
    _errors("name")

    st.subheader("Model")
    widget("model.path")
    why = new_experiment.check_model_path(new_experiment.get(ss[SPEC], new_experiment.BY_PATH["model.path"]))
    if why and not any(p == "model.path" for p, _ in ss[ERRORS]):
        st.error(f"model.path: {why}")
    c1, c2 = st.columns(2)
    with c1:
        widget("model.prompt_format")
    with c2:
        widget("model.dtype")
    _errors("model")

    st.subheader("Data")
    widget("data.source")
    source = new_experiment.get(ss[SPEC], new_experiment.BY_PATH["data.source"])
    if source == "demo":
        st.caption("The 250 TL;DR posts shipped with the project (from the SAMI paper's data).")
    elif source == "hf":
        c1, c2, c3 = st.columns(3)
        with c1:
            widget("data.dataset")
        with c2:
            widget("data.config")
        with c3:
            widget("data.split")
        st.caption("Read offline from the Hugging Face cache of the node that runs the job.")
    elif source == "file":
        up = st.file_uploader(f"Upload queries (JSON, JSONL or CSV; at most {state.MAX_UPLOAD_MB} MB)",
                              type=list(FILE_TYPES), key=K + "upload", max_upload_size=state.MAX_UPLOAD_MB)
        if up is None:
            ss[UPLOAD_ERROR] = None
            ss.pop(K + "uploaded", None)
        elif ss.get(K + "uploaded") != up.file_id:
            ss[K + "uploaded"] = up.file_id
            field = new_experiment.get(ss[SPEC], new_experiment.BY_PATH["data.field"]) or "post"
            try:
                content = up.getvalue()
                n = check_upload(up.name, content, field, state.MAX_UPLOAD_MB)
            except DataFileError as err:
                ss[UPLOAD_ERROR] = str(err)
            else:
                path = new_experiment.save_upload(state.workspace().home, up.name, content)
                ss[UPLOAD_ERROR] = None
                spec = new_experiment.put(ss[SPEC], new_experiment.BY_PATH["data.path"], str(path))
                _changed(spec)
                ss[_key(new_experiment.BY_PATH["data.path"])] = str(path)
                ss[K + "upload_note"] = f"{n} queries from {up.name}, stored in the workspace as {path}"
        if ss.get(UPLOAD_ERROR):
            st.error(f"Upload refused: {ss[UPLOAD_ERROR]}")
        elif up is not None and ss.get(K + "upload_note"):
            st.caption(ss[K + "upload_note"])
        widget("data.path")
    if source != "demo":
        widget("data.field")
    c1, c2 = st.columns(2)
    with c1:
        widget("data.eval_size")
    with c2:
        widget("data.train_size")
    _errors("data")

    st.subheader("Constitution")
    current = new_experiment.constitution_label(ss[SPEC].get("constitution"), versions)
    options = list(choices) + ([current] if current not in choices else [])
    if ss.get(CONSTITUTION) not in options:
        ss[CONSTITUTION] = current
    st.selectbox("Constitution", options, key=CONSTITUTION, on_change=_on_constitution,
                 help="Saved versions (<name> v<version>; edit them on the Constitutions page), the "
                      "constitutions shipped with the project, and its folders as sets (each query draws "
                      "one constitution of the folder).")
    c = ss[SPEC].get("constitution")
    if isinstance(c, dict) and isinstance(c.get("principles"), list):
        st.dataframe(pd.DataFrame(c["principles"], columns=["principle", "antithesis"]), hide_index=True,
                     key=K + "principles")
    elif isinstance(c, dict) and c.get("paths"):
        st.caption("A constitution set: each query draws one of its constitutions (seeded by constitution.seed), "
                   "the same one in every job; each is stored as a version of its own.")
    _errors("constitution")
    st.page_link("views/constitutions.py", label="Edit constitutions")

    st.subheader("SAMI")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        widget("n_constitutions")
    with c2:
        widget("iterations")
    with c3:
        widget("train_from")
    with c4:
        widget("task")
    widget("max_prompt_tokens")

    st.subheader("Prompts and filters")
    c1, c2 = st.columns([1, 2])
    with c1:
        widget("prompts.preset")
    with c2:
        widget("prompts.response_prefix")
        widget("prompts.keep_prefix")
    with st.expander("Templates of your own"):
        widget("prompts.generation")
        widget("prompts.training")
    _errors("prompts")
    pv, why = new_experiment.prompt_preview(ss[SPEC])
    if why:
        st.caption(f"No prompt preview: {why}")
    else:
        with st.expander("Preview: generation prompt and training sequence (the first shipped post, the "
                         "constitution as written)"):
            st.text("Generation prompt" + (f" (the response continues the forced start {pv.forced!r})"
                                           if pv.forced else "") + (" as chat messages" if pv.chat else ""))
            st.code(pv.generation, language=None, wrap_lines=True)
            st.text("Training sequence: log p(response | training prompt); <eos> = an EOS is scored, <eos?> = "
                    "only where the model ended the response itself (training.append_eos: auto)")
            st.code(pv.training, language=None, wrap_lines=True)
    c1, c2 = st.columns(2)
    with c1:
        widget("filters.drop_substrings")
    with c2:
        widget("filters.ends_with")
    widget("filters.require_distinct")
    st.caption("Generate keeps a query only when its N responses pass every filter (and are distinct); "
               "the Queue shows how many each filter dropped.")
    _errors("filters")

    st.subheader("Training")
    c1, c2, c3 = st.columns(3)
    with c1:
        widget("training.lr", step=1e-7, format="%.2e")
        widget("training.beta", step=0.01, format="%.3f")
    with c2:
        widget("training.optimizer")
        widget("training.save_every")
    with c3:
        widget("training.grad_accum")
    _errors("training")
    st.caption("Devices (GPUs per job; 0 = CPU)")
    for col, kind in zip(st.columns(len(EXPERIMENT_KINDS)), EXPERIMENT_KINDS, strict=True):
        with col:
            widget(f"devices.{kind}")
    _errors("devices")

    st.subheader("Sampling")
    c1, c2 = st.columns(2)
    with c1:
        widget("sampling.temperatures")
    with c2:
        widget("sampling.limit")
    widget("sampling.antithesis")
    _errors("sampling")

    st.subheader("Judge")
    ss[JUDGING] = bool(ss[SPEC].get("judge"))
    st.checkbox("Judge each iteration against baselines", key=JUDGING, on_change=_on_judging)
    if ss[SPEC].get("judge"):
        c1, c2 = st.columns(2)
        with c1:
            widget("judge.judge.provider")
            widget("judge.judge.base_url")
        with c2:
            widget("judge.judge.model")
            widget("judge.judge.concurrency")
        widget("judge.baselines")
        st.caption("API keys are never stored: a judge reads its key from the workers' environment "
                   "(api_key_env). Model baselines ({model: ..., label: ...}) go in the YAML.")
    _errors("judge")

with yaml_col:
    if YAML not in ss:
        ss[YAML] = new_experiment.to_yaml(ss[SPEC])
    st.text_area("Experiment spec (YAML)", key=YAML, height=900, on_change=_on_yaml,
                 help="Edit and click outside (or Ctrl+Enter) to apply it to the form.")
    if ss.get(YAML_ERROR):
        st.error(f"yaml: {ss[YAML_ERROR]}")
    _errors("yaml")
    st.download_button("Download YAML", new_experiment.to_yaml(ss[SPEC]),
                       file_name=f"{ss[SPEC].get('name', 'experiment')}.yaml", mime="application/x-yaml",
                       key=K + "download")

st.button("Submit experiment", key=K + "submit", type="primary", on_click=_on_submit)
rest = [(p, r) for p, r in ss[ERRORS] if (p, r) not in shown]
if ss[ERRORS]:
    st.error("Nothing was submitted: " + ("fix the fields marked above." if not rest else "fix these problems:"))
    for p, r in rest:
        st.error(f"{p or 'spec'}: {r}")

result = ss.get(RESULT)
if result and result.get("sweep"):
    sw = result["sweep"]
    st.success(f"Sweep {sw['sweep_id']} submitted: {len(sw['points'])} experiments, "
               f"{sum(p['jobs'] for p in sw['points'])} jobs.")
    for w in sw["warnings"]:
        st.caption(w)
    st.dataframe(pd.DataFrame([{"experiment": p["experiment_id"], "name": p["name"],
                                **{k: sweeps.format_value(v) for k, v in p["values"].items()}, "jobs": p["jobs"]}
                               for p in sw["points"]]), hide_index=True, key=K + "sweep_points")
    st.page_link("views/experiments.py", label=f"Open sweep {sw['sweep_id']} on the Experiments page",
                 query_params={"sweep": str(sw["sweep_id"])})
elif result:
    c = result["constitution"]
    if c.get("members"):  # a set: each member its own version
        what = (f"constitution set {md_escape(c['name'])} ({len(c['members'])} constitutions, one drawn per query: "
                + ", ".join(f"{md_escape(m['name'])} v{m['version']}" for m in c["members"]) + ")")
    else:
        what = (f"constitution {md_escape(c['name'])} v{c['version']} "
                f"({'new version' if c['created'] else 'existing version'})")
    st.success(f"Experiment {result['experiment_id']} submitted: {len(result['jobs'])} jobs, {what}.")
    for w in result["warnings"]:
        st.caption(w)
    st.dataframe(pd.DataFrame([{"id": j["id"], "job": j["key"], "kind": j["kind"],
                                "depends on": ", ".join(j["depends_on"]) or "-", "GPUs": j["devices"],
                                "label": j["label"]} for j in result["jobs"]]), hide_index=True, key=K + "dag")
    st.page_link("views/queue.py", label=f"Open experiment {result['experiment_id']} in the Queue",
                 query_params={"experiment": str(result["experiment_id"])})
