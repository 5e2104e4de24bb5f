"""Stage entry points for `generate` and `sample` (training lives in sami_core.train).

Each stage reads a validated spec and writes its run directory (see sami_core.rundir);
it knows nothing of the database. Both stages are resumable: generations are appended
to a JSONL file as they are made and finished items are skipped on a re-run.
"""

from __future__ import annotations

import hashlib
import random
import sys
import time
from pathlib import Path

from sami_core import constitutions
from sami_core.contract import DATA_FILE, FILTERED_FILE, GENERATIONS_FILE, RESPONSES_FILE
from sami_core.data import load_split
from sami_core.errors import ModelLoadError, SpecError
from sami_core.prompts import PromptBuilder, PromptTemplates, apply_filters, drop_reasons, use_chat_format
from sami_core.rundir import JsonlWriter, RunDir
from sami_core.spec import VLLM_OPTIONS, GenerateSpec, GenerationSpec, ModelSpec, SampleSpec


def resolve_model_path(path: str) -> str:
    """`demo` -> the embedded demo model's directory (which must have been built)."""
    if path != "demo":
        return path
    from sami_core.demo_model import default_demo_model_dir

    d = default_demo_model_dir()
    if not (d / "config.json").exists():
        raise ModelLoadError(
            f"model.path 'demo': the demo model is not built at {d}; "
            f"run `python -m sami_core make-demo-model {d}` (or set SAMI_DEMO_MODEL)"
        )
    return str(d)


def choose_backend(gen: GenerationSpec) -> str:
    """"vllm" when asked for (or auto) and usable here (installed, CUDA), else "hf"."""
    import torch

    from sami_core.generation import available_backends

    usable = "vllm" in available_backends() and torch.cuda.is_available()
    if gen.backend == "vllm" and not usable:
        raise ValueError("generation.backend: 'vllm' needs the vllm package and a CUDA GPU; use 'auto' or 'transformers'")
    return "vllm" if usable and gen.backend in ("auto", "vllm") else "hf"


def vllm_engine_kwargs(path: str, model_spec: ModelSpec, gen: GenerationSpec | None = None) -> dict:
    """Keyword arguments of ``vllm.LLM`` for a model and a generation spec: the model, its
    dtype and trust_remote_code, and the large-model options the spec sets
    (``tensor_parallel_size``, ``gpu_memory_utilization``, ``max_model_len``; unset ones are
    left to vLLM's defaults)."""
    kwargs: dict = {"model": path, "dtype": model_spec.dtype, "trust_remote_code": model_spec.trust_remote_code}
    if gen is not None:
        kwargs.update({k: getattr(gen, k) for k in VLLM_OPTIONS if getattr(gen, k) is not None})
    return kwargs


def load_for_generation(model_spec: ModelSpec, backend: str = "hf", gen: GenerationSpec | None = None):
    """(model, tokenizer); for vLLM the model is a `vllm.LLM` (built with
    :func:`vllm_engine_kwargs`) and the tokenizer HF's."""
    from sami_core.generation import load_model_and_tokenizer

    path = resolve_model_path(model_spec.path)
    if backend == "vllm":
        from transformers import AutoTokenizer
        from vllm import LLM

        llm = LLM(**vllm_engine_kwargs(path, model_spec, gen))
        return llm, AutoTokenizer.from_pretrained(path, trust_remote_code=model_spec.trust_remote_code)
    return load_model_and_tokenizer(path, dtype=model_spec.dtype, trust_remote_code=model_spec.trust_remote_code)


def max_model_length(model, tokenizer) -> int:
    config = getattr(model, "config", None)
    if config is None:  # a vllm.LLM
        config = model.llm_engine.get_model_config().hf_config
    limits = [getattr(config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    limits = [x for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    return min(limits) if limits else 2048


def prompt_builder(spec, model, tokenizer) -> PromptBuilder:
    chat = use_chat_format(spec.model.prompt_format, tokenizer)
    budget = spec.max_prompt_tokens or max_model_length(model, tokenizer) - spec.generation.max_new_tokens
    if budget < 8:
        raise ValueError(
            f"generation.max_new_tokens ({spec.generation.max_new_tokens}) leaves no room for the prompt "
            f"in the model's {max_model_length(model, tokenizer)} tokens"
        )
    return PromptBuilder(spec.task, tokenizer, chat, budget, PromptTemplates.from_spec(spec.task, spec.prompts))


def _log(msg: str) -> None:
    print(f"[sami] {msg}", file=sys.stderr, flush=True)


def _seeded_rng(*parts) -> random.Random:
    return random.Random(int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16))


def variant_items(queries, constitution, n: int, variant_seed: int, shuffle: bool,
                  build: PromptBuilder) -> list[tuple]:
    """(query, i, variant, generation prompt, training prompt, drawn constitution) for each
    query's N variants (:func:`query_variants`) of the constitution it draws from
    ``constitution`` (a :class:`~sami_core.constitutions.ConstitutionSet`, or one
    constitution), in query order then variant order: what generate and evaluate sample
    (under the generation prompt) and score (under the training prompt)."""
    if isinstance(constitution, constitutions.Constitution):
        constitution = constitutions.ConstitutionSet((constitution,))
    out = []
    for q in queries:
        drawn = constitution.draw(q.id)
        out += [(q, i, v, *build.pair(v.text, q.text), drawn)
                for i, v in enumerate(query_variants(drawn, n, variant_seed, q.id, shuffle))]
    return out


def finished_record(templates: PromptTemplates, raw: str, n_tokens: int, spec) -> dict:
    """The stored response of a raw continuation (``templates.finish``: cut at
    ``spec.filters.stop_sequences``, forced prefix kept or stripped) and whether the model
    ended it with its EOS; generate, evaluate and sample all store responses this way."""
    done = templates.finish(raw, n_tokens, spec.generation.max_new_tokens, spec.filters.stop_sequences)
    return {"response": done.text, "eos": done.ended_with_eos}


def query_variants(constitution: constitutions.Constitution, n: int, variant_seed: int, query_id: str,
                   shuffle: bool) -> list[constitutions.Variant]:
    """The N constitution variants of one query: the positive one first, then flips, in a
    principle order seeded by (variant_seed, query id). Generate and evaluate both use it."""
    return constitution.sample_variants(n, _seeded_rng(variant_seed, query_id), shuffle=shuffle)


def _run_generation(model, tokenizer, prompts: list[str], gen: GenerationSpec, temperature: float,
                    on_item, rd: RunDir, stage: str, done0: int, total: int, seed_offset: int = 0,
                    start_index: int = 0):
    """Generate `prompts`, calling on_item(i, text, n_tokens) with i indexing `prompts`.

    start_index is the position of prompts[0] in the stage's full list: batch seeds derive
    from it, so a run resumed after whole batches samples what the first run would have."""
    from sami_core.generation import GenerationConfig, generate_texts, generate_texts_vllm

    cfg = GenerationConfig(temperature=temperature, top_p=gen.top_p, max_new_tokens=gen.max_new_tokens,
                           batch_size=gen.batch_size, seed=gen.seed + seed_offset)
    if hasattr(model, "generate") and hasattr(model, "config"):
        stream = generate_texts(model, tokenizer, prompts, cfg, start_index=start_index)
    else:
        stream = generate_texts_vllm(model, prompts, cfg, start_index=start_index)
    done = done0
    for idx, text, n_tok in stream:
        on_item(idx - start_index, text, n_tok)
        done += 1
        if done % gen.batch_size == 0 or done == total:
            rd.progress(stage, done, total, "responses")


def _log_data(stage: str, queries) -> None:
    if queries.n_duplicates or queries.n_empty:
        _log(f"{stage}: {len(queries)} queries from {queries.n_rows} rows read; {queries.n_duplicates} rows collapsed "
             f"into an earlier row with the same id, {queries.n_empty} skipped for an empty text")


def run_generate(spec: GenerateSpec, run_dir: str | Path) -> dict:
    """Sample N responses per training query, each under its own constitution variant."""
    rd = RunDir(run_dir)
    if (done := rd.open_or_done("generate", spec)) is not None:
        return done
    constitution = constitutions.set_from_spec(spec.constitution).validate(spec.n_constitutions)
    queries = load_split(spec.data, "train")
    _log_data("generate", queries)
    t0 = time.time()
    model, tokenizer = load_for_generation(spec.model, choose_backend(spec.generation), spec.generation)
    build = prompt_builder(spec, model, tokenizer)
    n = spec.n_constitutions

    items = variant_items(queries, constitution, n, spec.variant_seed, spec.shuffle_principles, build)
    writer = JsonlWriter(rd / GENERATIONS_FILE, key="key")
    done = writer.done_keys()
    todo = [it for it in items if (it[0].id, it[1]) not in done]
    _log(f"generate: {len(queries)} queries x N={n} = {len(items)} responses; {len(items) - len(todo)} already done"
         f"{'; ' + str(build.truncations) + ' queries truncated to fit' if build.truncations else ''}")
    rd.progress("generate", len(items) - len(todo), len(items), "responses", "generating")

    def on_item(idx, text, n_tok):
        q, i, v, prompt, training_prompt, drawn = todo[idx]
        writer.write({"key": [q.id, i], "query_id": q.id, "variant": i, "flips": list(v.flips),
                      "constitution": v.text, "constitution_name": drawn.name, "prompt": prompt,
                      "training_prompt": training_prompt, "raw": text,
                      "n_tokens": n_tok})

    _run_generation(model, tokenizer, [it[3] for it in todo], spec.generation, spec.generation.temperature,
                    on_item, rd, "generate", len(items) - len(todo), len(items),
                    start_index=items.index(todo[0]) if todo else 0)

    # Assemble the training set: keep queries whose N responses are all valid and distinct.
    # "prompts" are the training prompts (train scores log p(response | prompt)); the
    # generation prompts (with the forced prefix) are kept beside them for the record.
    import json

    by_key = {}
    for line in (rd / GENERATIONS_FILE).read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        by_key[(rec["query_id"], rec["variant"])] = rec
    recs_by_query = [[by_key[(q.id, i)] for i in range(n)] for q in queries]
    finished = [[finished_record(build.templates, r["raw"], r["n_tokens"], spec) for r in recs]
                for recs in recs_by_query]
    keep, counts = apply_filters([[f["response"] for f in fin] for fin in finished], spec.filters)
    rows = [{"query_id": q.id, "query": q.text, "constitution_name": constitution.draw(q.id).name,
             "prompts": [r["training_prompt"] for r in recs],
             "generation_prompts": [r["prompt"] for r in recs],
             "constitutions": [r["constitution"] for r in recs], "flips": [r["flips"] for r in recs],
             "responses": [f["response"] for f in fin], "eos": [f["eos"] for f in fin]}
            for q, recs, fin, k in zip(queries, recs_by_query, finished, keep) if k]
    kept, dropped = counts.kept, counts.queries - counts.kept
    from sami_core.rundir import atomic_write_text

    atomic_write_text(rd / DATA_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # Every response as finished, kept or not, with the filter that dropped it (the workbench's
    # "Generated data" view reads this; data.jsonl stays the training set).
    filtered = [{"query_id": q.id, "query": q.text, "variant": i, "constitution": r["constitution"],
                 "constitution_name": r.get("constitution_name"), "prompt": r["prompt"], "response": f["response"],
                 "n_tokens": r["n_tokens"], "eos": f["eos"], "kept": reason is None, "dropped_by": reason}
                for q, recs, fin in zip(queries, recs_by_query, finished)
                for i, (r, f, reason) in enumerate(zip(recs, fin, drop_reasons([f["response"] for f in fin],
                                                                                spec.filters)))]
    atomic_write_text(rd / FILTERED_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in filtered))
    outputs = {"data": DATA_FILE, "filtered": FILTERED_FILE, "n_queries": len(queries), "n_kept": kept,
               "n_dropped": dropped, "filter_counts": counts.as_dict(),
               "truncated_queries": build.truncations, "n_duplicate_rows": queries.n_duplicates,
               "n_constitutions": n, "seconds": round(time.time() - t0, 1)}
    rd.progress("generate", len(items), len(items), "responses", f"kept {kept}/{len(queries)} queries", "succeeded")
    rd.write_outputs(outputs)
    _log(f"generate: kept {kept} of {len(queries)} queries ({dropped} dropped by filters: "
         f"{counts.queries_with_invalid} with an invalid response, {counts.require_distinct} with identical "
         f"responses; of {counts.responses} responses, {counts.min_chars} too short, {counts.drop_substrings} "
         f"with a dropped substring, {counts.ends_with} with another ending) -> {rd / 'data.jsonl'}")
    if kept == 0:
        raise ValueError(
            "generate: every query was dropped by the filters (invalid or identical responses); "
            "loosen filters (drop_substrings, ends_with, min_chars, require_distinct) or raise generation.temperature"
        )
    return outputs


def run_sample(spec: SampleSpec, run_dir: str | Path) -> dict:
    """A model's responses on the eval (or train) queries under the constitution, per temperature."""
    rd = RunDir(run_dir)
    if (done := rd.open_or_done("sample", spec)) is not None:
        return done
    constitution = constitutions.set_from_spec(spec.constitution).validate(1)
    anti = spec.constitution_variant == "antithesis"
    try:  # (name, text) of each constitution as sampled: as written, or its antithesis
        used = {c.name: (f"{c.name} (antithesis)" if c.name else "antithesis", c.antithesis().text) if anti
                else (c.name, c.positive().text) for c in constitution.members}
    except constitutions.ConstitutionError as err:
        raise SpecError(str(err), path="constitution_variant") from None
    loaded = load_split(spec.data, spec.split)
    _log_data("sample", loaded)
    queries = loaded[: spec.limit]
    model, tokenizer = load_for_generation(spec.model, choose_backend(spec.generation), spec.generation)
    build = prompt_builder(spec, model, tokenizer)
    drawn = [used[constitution.draw(q.id).name] for q in queries]  # per query: (name, text)
    prompts = [build(text, q.text) for q, (_, text) in zip(queries, drawn)]  # generation prompts (with any forced prefix)
    writer = JsonlWriter(rd / RESPONSES_FILE, key="key")
    done = writer.done_keys()
    total = len(queries) * len(spec.temperatures)
    n_done = sum(1 for t in spec.temperatures for q in queries if (q.id, t) in done)
    rd.progress("sample", n_done, total, "responses", "sampling")
    model_path = resolve_model_path(spec.model.path)
    for ti, temp in enumerate(spec.temperatures):
        todo = [k for k, q in enumerate(queries) if (q.id, temp) not in done]

        def on_item(idx, out, n_tok, todo=todo, temp=temp):
            q, (c_name, c_text) = queries[todo[idx]], drawn[todo[idx]]
            writer.write({"key": [q.id, temp], "query_id": q.id, "query": q.text, "temperature": temp,
                          "constitution": c_text, "constitution_name": c_name, "prompt": prompts[todo[idx]],
                          "response": finished_record(build.templates, out, n_tok, spec)["response"], "raw": out,
                          "n_tokens": n_tok, "model": model_path})

        _run_generation(model, tokenizer, [prompts[k] for k in todo], spec.generation, temp, on_item, rd,
                        "sample", n_done, total, seed_offset=ti, start_index=todo[0] if todo else 0)
        n_done += len(todo)
    outputs = {"responses": RESPONSES_FILE, "n": total, "model": model_path,
               "temperatures": spec.temperatures, "truncated_queries": build.truncations,
               "n_duplicate_rows": loaded.n_duplicates}
    rd.progress("sample", total, total, "responses", "done", "succeeded")
    rd.write_outputs(outputs)
    _log(f"sample: {total} responses -> {rd / 'responses.jsonl'}")
    return outputs
