"""An experiment as a DAG of stage jobs (pure; no torch, no database).

    sample-base                      the base model on the eval queries (once)
    sample-<label>                   each model baseline of the judge section (e.g. an
                                     instruct model), the same way (once)
    generate-1 -> train-1 -> sample-1
    generate-2 -> train-2 -> sample-2   (generate-2 uses train-1's final checkpoint)
    ...
    evaluate-base, evaluate-t (after train-t)   with an `evaluation` section: held-out MI
        of the base model and of each iteration's checkpoint (which the base model
        scores too)
    judge-1 (after sample-1 and sample-base), ...   with a `judge` section: each
        iteration's samples against each baseline's (judge-t, or judge-t-vs-B when
        there are several baselines; B = base, iteration-K or a model baseline's label)

Every job gets its own run directory under ``runs_root``; a later job refers to an
earlier one's outputs by path: a generate run dir for training data, and a train run
dir's ``checkpoints/final`` (a link to its last checkpoint, made when training ends).
Each stage spec is validated here, so a submitted experiment cannot fail later on a
spec error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sami_core.contract import CHECKPOINTS_DIR, FINAL_CHECKPOINT
from sami_core.experiment_spec import ExperimentSpec, resolve_experiment_judge
from sami_core.spec import VLLM_OPTIONS, validate_spec


@dataclass
class JobPlan:
    key: str  # unique within the experiment, e.g. "train-2"
    kind: str  # generate | train | sample | judge | evaluate
    spec: dict  # the stage spec (validated, defaults filled in)
    run_dir: str
    depends_on: list[str] = field(default_factory=list)
    devices: int = 0
    iteration: int = 0  # 0 = baseline
    label: str = ""  # a human name for what the job produces (response sources use it)
    antithesis: bool = False  # sampled under the antithesis constitution (stored as its own version)


def final_checkpoint(train_run_dir: str | Path) -> str:
    return str(Path(train_run_dir) / CHECKPOINTS_DIR / FINAL_CHECKPOINT)


def expand(exp: ExperimentSpec, runs_root: str | Path) -> list[JobPlan]:
    """The experiment's jobs in a runnable order. A judge with ``provider: auto`` should be
    resolved first (services.experiments does, at submit time); one left unresolved (a preview)
    is resolved against this process's environment."""
    root = Path(runs_root)
    exp, _ = resolve_experiment_judge(exp, os.environ)
    base = exp.model.model_dump(mode="json")
    common = {"data": exp.data.model_dump(mode="json"), "constitution": exp.constitution.model_dump(mode="json",
              exclude_none=True), "task": exp.task, "filters": exp.filters.model_dump(mode="json"),
              "prompts": exp.prompts.model_dump(mode="json"), "max_prompt_tokens": exp.max_prompt_tokens}
    s = exp.sampling
    sample_gen = {"temperature": 0.0, "top_p": s.top_p, "max_new_tokens": s.max_new_tokens,
                  "batch_size": s.batch_size, "seed": s.seed, **engine_options(exp)}

    def sample_job(key: str, model: dict, deps: list[str], iteration: int, label: str) -> JobPlan:
        spec = {**common, "model": model, "split": "eval", "limit": s.limit, "temperatures": s.temperatures,
                "generation": sample_gen}
        return JobPlan(key, "sample", _checked("sample", spec, key), str(root / key), deps,
                       exp.devices.sample, iteration, label)

    def antithesis_job(key: str, model: dict, deps: list[str], iteration: int, label: str) -> JobPlan:
        """The same sampling under the antithesis constitution (sampling.antithesis)."""
        spec = {**common, "model": model, "split": "eval", "limit": s.limit, "temperatures": s.temperatures,
                "generation": sample_gen, "constitution_variant": "antithesis"}
        k = f"{key}-antithesis"
        return JobPlan(k, "sample", _checked("sample", spec, k), str(root / k), deps, exp.devices.sample,
                       iteration, f"{label} (antithesis)", antithesis=True)

    jobs = [sample_job("sample-base", base, [], 0, "base")]
    if s.antithesis:
        jobs.append(antithesis_job("sample-base", base, [], 0, "base"))
    for b in exp.judge.model_baselines() if exp.judge is not None else []:
        jobs.append(sample_job(sample_key(b.label), b.model.model_dump(mode="json"), [], 0, b.label))
    if exp.evaluation is not None:
        jobs.append(evaluate_job(exp, root, "evaluate-base", base, "base", [], 0))
    policy, prev_train = base, None
    for t in range(1, exp.iterations + 1):
        gen_key, train_key = f"generate-{t}", f"train-{t}"
        gen_spec = {**common, "model": policy, "n_constitutions": exp.n_constitutions,
                    "shuffle_principles": exp.shuffle_principles, "variant_seed": t,
                    "generation": {**exp.generation.model_dump(mode="json"), "seed": exp.generation.seed + t}}
        deps = [prev_train] if prev_train else []
        jobs.append(JobPlan(gen_key, "generate", _checked("generate", gen_spec, gen_key), str(root / gen_key), deps,
                            exp.devices.generate, t, f"iteration-{t} data"))
        init = policy if exp.train_from == "previous" else base
        train_spec = {"model": init, "data": {"path": str(root / gen_key)},
                      "training": {**exp.training.model_dump(mode="json"), "seed": exp.training.seed + t}}
        if exp.training.beta > 0 and exp.training.lora is None:  # LoRA: the reference is the adapters switched off
            train_spec["reference_model"] = base
        if exp.devices.train_nodes > 1:
            train_spec["launch"] = {"nodes": exp.devices.train_nodes, "endpoint": exp.devices.train_rendezvous}
        jobs.append(JobPlan(train_key, "train", _checked("train", train_spec, train_key), str(root / train_key),
                            [gen_key], exp.devices.train, t, f"iteration-{t}"))
        policy = {**base, "path": final_checkpoint(root / train_key)}
        jobs.append(sample_job(f"sample-{t}", policy, [train_key], t, f"iteration-{t}"))
        if s.antithesis:
            jobs.append(antithesis_job(f"sample-{t}", policy, [train_key], t, f"iteration-{t}"))
        if exp.evaluation is not None:
            jobs.append(evaluate_job(exp, root, f"evaluate-{t}", policy, f"iteration-{t}", [train_key], t))
        prev_train = train_key
    if exp.judge is not None:
        jobs += judge_jobs(exp, root)
    return jobs


def evaluate_job(exp: ExperimentSpec, root: Path, key: str, model: dict, label: str, deps: list[str],
                 iteration: int) -> JobPlan:
    """Held-out MI of ``model`` (named ``label``): every evaluate job of an experiment uses
    the same eval queries and constitution variants, and scores as training does; an
    iteration's job also scores its responses with the base model."""
    ev = exp.evaluation
    spec = {"model": model, "label": label, "data": exp.data.model_dump(mode="json"),
            "constitution": exp.constitution.model_dump(mode="json", exclude_none=True), "task": exp.task,
            "filters": exp.filters.model_dump(mode="json"), "prompts": exp.prompts.model_dump(mode="json"),
            "max_prompt_tokens": exp.max_prompt_tokens,
            "split": "eval", "limit": ev.limit,
            "n_constitutions": exp.n_constitutions, "shuffle_principles": exp.shuffle_principles,
            "variant_seed": ev.variant_seed,
            "generation": {"temperature": ev.temperature, "max_new_tokens": ev.max_new_tokens,
                           "batch_size": ev.batch_size, "seed": ev.seed, **engine_options(exp)},
            "reduction": exp.training.reduction, "append_eos": exp.training.append_eos,
            "logprob_impl": exp.training.logprob_impl, "score_batch_size": ev.score_batch_size,
            "score_models": [{"model": exp.model.model_dump(mode="json"), "label": "base"}]
            if ev.score_with_base and label != "base" else [],
            "n_boot": ev.n_boot, "seed": ev.seed}
    return JobPlan(key, "evaluate", _checked("evaluate", spec, key), str(root / key), deps,
                   exp.devices.evaluate, iteration, label)


def engine_options(exp: ExperimentSpec) -> dict:
    """The experiment's generation backend and vLLM engine options, which its sample and
    evaluate jobs share with its generate jobs (unset ones left out)."""
    gen = exp.generation.model_dump(mode="json")
    return {k: gen[k] for k in ("backend", *VLLM_OPTIONS) if k in gen}


def _iteration_of(label: str) -> int | None:
    """K for the label 'iteration-K', else None."""
    k = label.removeprefix("iteration-")
    return int(k) if k != label and k.isdigit() else None


def sample_key(label: str) -> str:
    """The job that samples the baseline named ``label``: 'base' -> sample-base,
    'iteration-K' -> sample-K, a model baseline's label L -> sample-L."""
    k = _iteration_of(label)
    return f"sample-{label}" if k is None else f"sample-{k}"


def judge_jobs(exp: ExperimentSpec, root: Path) -> list[JobPlan]:
    """Per iteration t and baseline B: a judge job comparing sample-t's responses with
    B's (B = iteration-K only for iterations t > K). Sides are named by their response
    sources' labels ("iteration-t", "base", a model baseline's label such as "instruct"),
    so ingestion finds them."""
    j = exp.judge
    labels = j.baseline_labels()
    jobs = []
    for t in range(1, exp.iterations + 1):
        for b in labels:
            if (k := _iteration_of(b)) is not None and k >= t:
                continue
            b_key = sample_key(b)
            key = f"judge-{t}" if len(labels) == 1 else f"judge-{t}-vs-{b}"
            spec = {"judge": j.judge.model_dump(mode="json"), "task": exp.task, "order": j.order, "seed": j.seed,
                    "allow_tie": j.allow_tie, "limit": j.limit, "shared_cache": j.shared_cache,
                    "template": None if j.template is None else j.template.model_dump(mode="json"),
                    "unparseable": j.unparseable,
                    "candidate": {"path": str(root / f"sample-{t}"), "name": f"iteration-{t}",
                                  "temperature": j.temperature},
                    "baseline": {"path": str(root / b_key), "name": b, "temperature": j.temperature}}
            jobs.append(JobPlan(key, "judge", _checked("judge", spec, key), str(root / key),
                                [f"sample-{t}", b_key], exp.devices.judge, t, f"iteration-{t} vs {b}"))
    return jobs


def _checked(kind: str, spec: dict, key: str) -> dict:
    model = validate_spec(kind, spec, source=f"job {key}")
    # A one-node train job's spec reads as before (no `launch: null`).
    return model.model_dump(mode="json", exclude={"launch"} if getattr(model, "launch", 0) is None else None)
