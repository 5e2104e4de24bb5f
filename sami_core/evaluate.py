"""Stage `evaluate`: held-out mutual information between constitutions and responses.

    python -m sami_core evaluate --spec F --run-dir D

Read in order:

1. **Queries and variants.** The eval queries (the split the sample stage uses, first
   ``limit``) and, per query, the N constitution variants exactly as `generate` makes
   them (:func:`sami_core.stages.query_variants`: the constitution and its flips, the
   same ``variant_seed``; from a set, of the constitution the query draws, recorded as
   ``constitution_name``), each rendered into a generation and a training prompt by the
   same prompt builder (``prompts``: preset or templates, forced response prefix).
2. **Sampling.** One response per (query, variant) from the model, greedy by default
   (``generation.temperature``), appended to ``generations.jsonl`` as it is made; a rerun
   skips what is there (batch seeds derive from absolute positions, as in generate).
   Responses are stored as generate stores them (cut at ``filters.stop_sequences``, the
   forced prefix kept or stripped: :func:`sami_core.stages.finished_record`); no query
   is dropped.
3. **Scoring.** Per query, the N×N matrix ``L[i, j] = log p(y_j | x, c_i)`` from the
   training code under the training prompts (:func:`sami_core.logprobs.logprob_matrix`,
   prefix-shared where the model allows; tokenized by :func:`sami_core.train.tokenize_rows`;
   mean token log-prob by default; EOS as ``append_eos`` says), by the model and then by each of ``score_models`` (one model in memory at
   a time). ``mi.jsonl`` gets one line per (query, scoring model)::

       {"key": [query_id, label], "query_id": ..., "model": label, "matrix": [[...], ...]}

   row i = constitution i, column j = the response sampled under constitution j (columns
   of identical responses are set to their mean: :func:`merge_identical_responses`). With no
   ``score_models`` that is one line per query; each scoring model adds its own line per
   query, told apart by ``model`` (its label). A rerun skips lines already written.
4. **Summary.** :func:`sami_core.stats.mi_summary` per scoring model: the InfoNCE lower
   bound ``log N - loss`` (nats), row and column accuracy (chance: 1/N) and the loss, each
   with a seeded bootstrap 95% interval over queries. ``outputs.json`` holds the model's
   figures at the top level and every scoring model's under ``by_model``.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

from sami_core import constitutions
from sami_core.contract import GENERATIONS_FILE, MI_FILE
from sami_core.data import load_split
from sami_core.errors import DataError, ModelLoadError
from sami_core.rundir import JsonlWriter, RunDir
from sami_core.spec import EvaluateSpec, ModelSpec
from sami_core.stages import (_run_generation, choose_backend, finished_record, load_for_generation,
                              prompt_builder, resolve_model_path, variant_items)

STAGE = "evaluate"


def _log(msg: str) -> None:
    print(f"[sami] {msg}", file=sys.stderr, flush=True)


def run_evaluate(spec: EvaluateSpec, run_dir: str | Path) -> dict:
    rd = RunDir(run_dir)
    if (done := rd.open_or_done(STAGE, spec)) is not None:
        return done
    t0 = time.time()
    n = spec.n_constitutions
    constitution = constitutions.set_from_spec(spec.constitution).validate(n)
    queries = load_split(spec.data, spec.split)[: spec.limit]
    if not queries:
        raise DataError(f"data: the {spec.split!r} split has no queries (data.eval_size = {spec.data.eval_size})")

    for k, s in enumerate(spec.score_models):  # refuse a missing scorer before any sampling
        _check_local_model(s.model, f"score_models.{k}.model")

    # 1. queries and variants -------------------------------------------------------------
    backend = choose_backend(spec.generation)
    model, tokenizer = load_for_generation(spec.model, backend, spec.generation)
    build = prompt_builder(spec, model, tokenizer)
    items = variant_items(queries, constitution, n, spec.variant_seed, spec.shuffle_principles, build)

    # 2. sampling -------------------------------------------------------------------------
    gens = JsonlWriter(rd / GENERATIONS_FILE, key="key")
    have = gens.done_keys()
    todo = [it for it in items if (it[0].id, it[1]) not in have]
    _log(f"evaluate: {len(queries)} queries x N={n} = {len(items)} responses "
         f"(temperature {spec.generation.temperature}); {len(items) - len(todo)} already sampled")
    rd.progress(STAGE, len(items) - len(todo), len(items), "responses", "sampling")

    def on_item(idx, text, n_tok):
        q, i, v, prompt, training_prompt, drawn = todo[idx]
        gens.write({"key": [q.id, i], "query_id": q.id, "variant": i, "flips": list(v.flips),
                    "constitution": v.text, "constitution_name": drawn.name, "prompt": prompt,
                    "training_prompt": training_prompt, "raw": text,
                    **finished_record(build.templates, text, n_tok, spec), "n_tokens": n_tok})

    _run_generation(model, tokenizer, [it[3] for it in todo], spec.generation, spec.generation.temperature,
                    on_item, rd, STAGE, len(items) - len(todo), len(items),
                    start_index=items.index(todo[0]) if todo else 0)
    by_key = {}
    for line in (rd / GENERATIONS_FILE).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        by_key[(rec["query_id"], rec["variant"])] = rec
    # Scored as training scores: under the training prompts, EOS as append_eos says.
    rows = [{"query_id": q.id,
             "prompts": [by_key[(q.id, i)]["training_prompt"] for i in range(n)],
             "responses": [by_key[(q.id, i)]["response"] for i in range(n)],
             "eos": [by_key[(q.id, i)]["eos"] for i in range(n)]} for q in queries]

    # 3. scoring --------------------------------------------------------------------------
    from sami_core.train import tokenize_rows

    examples = tokenize_rows(rows, tokenizer, spec.append_eos)
    scorable = [e for e in examples if all(e.response_ids)]  # empty only without an EOS to score
    skipped = [e.query_id for e in examples if not all(e.response_ids)]
    if not scorable:
        raise DataError("every response is empty and has no EOS to score (append_eos false, or auto and the "
                        "responses were cut): nothing to score; set append_eos: true or raise max_new_tokens")
    scorers = [(spec.label, spec.model, "model")] + [
        (s.label, s.model, f"score_models.{k}.model") for k, s in enumerate(spec.score_models)]
    mi = JsonlWriter(rd / MI_FILE, key="key")
    scored = mi.done_keys()
    total = len(scorable) * len(scorers)
    n_done = sum((e.query_id, label) in scored for e in scorable for label, _, _ in scorers)
    rd.progress(STAGE, n_done, total, "matrices", "scoring")
    for label, mspec, where in scorers:
        pending = [e for e in scorable if (e.query_id, label) not in scored]
        if not pending:
            continue
        if label != spec.label or backend != "hf":  # the sampling model scores too when it is HF's
            del model
            gc.collect()
            model = _load_scorer(mspec, where, tokenizer, examples[0])
        _log(f"evaluate: scoring {len(pending)} queries with {label!r} ({resolve_model_path(mspec.path)})")
        for start in range(0, len(pending), spec.score_batch_size):
            chunk = pending[start : start + spec.score_batch_size]
            for e, matrix in zip(chunk, score_matrices(model, chunk, spec, tokenizer)):
                matrix = merge_identical_responses(matrix, e.response_ids)
                mi.write({"key": [e.query_id, label], "query_id": e.query_id, "model": label, "matrix": matrix})
            n_done += len(chunk)
            rd.progress(STAGE, n_done, total, "matrices", f"scoring with {label}")

    # 4. summary --------------------------------------------------------------------------
    from sami_core.stats import mi_summary

    lines = [json.loads(x) for x in (rd / MI_FILE).read_text(encoding="utf-8").splitlines()]
    by_model = {}
    for label, mspec, _ in scorers:
        mats = {r["query_id"]: r["matrix"] for r in lines if r["model"] == label}
        summary = mi_summary([mats[e.query_id] for e in scorable], n_boot=spec.n_boot, seed=spec.seed)
        by_model[label] = {"model": resolve_model_path(mspec.path), **summary}
    primary = by_model[spec.label]
    outputs = {
        "mi": MI_FILE, "responses": GENERATIONS_FILE, "label": spec.label, **primary,
        "split": spec.split, "temperature": spec.generation.temperature, "reduction": spec.reduction,
        "skipped_queries": skipped, "truncated_queries": build.truncations, "by_model": by_model,
        "seconds": round(time.time() - t0, 1),
    }
    rd.progress(STAGE, total, total, "matrices",
                f"MI lower bound {primary['mi_lower_bound']:.3f} nats "
                f"[{primary['mi_lower_bound_ci_low']:.3f}, {primary['mi_lower_bound_ci_high']:.3f}]", "succeeded")
    rd.write_outputs(outputs)
    for label, s in by_model.items():
        _log(f"evaluate: {label}: MI lower bound {s['mi_lower_bound']:.4f} nats "
             f"[{s['mi_lower_bound_ci_low']:.4f}, {s['mi_lower_bound_ci_high']:.4f}], row accuracy "
             f"{s['row_accuracy']:.3f}, column accuracy {s['col_accuracy']:.3f} over {s['n_queries']} queries "
             f"(chance {s['chance_accuracy']:.3f})")
    return outputs


def _check_local_model(mspec: ModelSpec, where: str) -> None:
    from sami_core.generation import _looks_like_path

    try:
        path = resolve_model_path(mspec.path)
    except ModelLoadError as err:
        raise ModelLoadError(f"{where}.path: {err}") from None
    if (_looks_like_path(path) or Path(path).expanduser().exists()) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"{where}.path: {path!r} is not a model directory")


def _load_scorer(mspec: ModelSpec, where: str, tokenizer, example):
    """A scoring model in eval mode; it must tokenize as the evaluated model does."""
    from sami_core.generation import load_model_and_tokenizer

    try:
        model, tok = load_model_and_tokenizer(resolve_model_path(mspec.path), dtype=mspec.dtype,
                                              trust_remote_code=mspec.trust_remote_code)
    except ModelLoadError as err:
        raise ModelLoadError(f"{where}.path: {err}") from None
    probe = example.prompt_ids[0]
    text = tokenizer.decode(probe, skip_special_tokens=False)
    if tok(text, add_special_tokens=False)["input_ids"] != tokenizer(text, add_special_tokens=False)["input_ids"]:
        raise ValueError(f"{where}.path: {mspec.path!r} tokenizes differently from the evaluated model; "
                         "a scoring model must share its tokenizer")
    return model.eval()


def merge_identical_responses(matrix: list[list[float]], response_ids: list[list[int]]) -> list[list[float]]:
    """``matrix`` with the columns of identical responses replaced by their mean.

    When y_j and y_k are the same tokens, L[i, j] and L[i, k] are the same number,
    log p(y | x, c_i); computed at different places of a batch they may still differ in
    the last bits (more so in 16-bit), which would turn an exact tie (no information:
    chance accuracy) into an arbitrary winner. Rows are left as computed."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, ids in enumerate(response_ids):
        groups.setdefault(tuple(ids), []).append(j)
    out = [list(row) for row in matrix]
    for cols in groups.values():
        if len(cols) > 1:
            for row in out:
                mean = sum(row[j] for j in cols) / len(cols)
                for j in cols:
                    row[j] = mean
    return out


def score_matrices(model, examples, spec: EvaluateSpec, tokenizer) -> list[list[list[float]]]:
    """The N×N matrices of ``examples`` (sami_core.train.Example) as nested lists of floats."""
    import torch

    from sami_core.logprobs import MatrixBatch, logprob_matrix

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    batch = MatrixBatch([e.prompt_ids for e in examples], [e.response_ids for e in examples])
    with torch.no_grad():
        L = logprob_matrix(model, batch, impl=spec.logprob_impl, reduction=spec.reduction, pad_token_id=pad)
    return L.float().cpu().tolist()  # (B, N, N)
