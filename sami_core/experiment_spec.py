"""Experiment specs: what `sami submit` and the app's form take, validated up front; a
resolved experiment is expanded into a DAG of stage jobs by sami_core.pipeline.

Like sami_core.spec (the stage specs it is built from), this module imports no torch, so
that the CLI, the services and the app can validate experiments without the ML stack.
A judge section with ``provider: auto`` is resolved against the environment at submit
time (:func:`resolve_auto_judge`): only whether a key variable is set is read, never a key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, ValidationError, field_validator, model_validator

from sami_core.errors import SpecError
from sami_core.spec import (ConstitutionSpec, DataSpec, FilterSpec, GenerateSpec, GenerationSpec, JudgeTemplateSpec,
                            LLMSpec, ModelSpec, PromptSpec, SampleSpec, StrictModel, TrainingSpec, _field_errors,
                            check_endpoint, check_prompt_task)


class SamplingSpec(StrictModel):
    temperatures: list[float] = Field(default_factory=lambda: [0.0])
    limit: int | None = Field(None, ge=1, description="Eval queries to sample (default: all held out).")
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int = 0
    antithesis: bool = Field(False, description=(
        "Also sample the base model and every checkpoint under the antithesis constitution (every "
        "principle flipped): sources `base (antithesis)`, `iteration-t (antithesis)`."))

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        return SampleSpec._temps(v)


class DevicesSpec(StrictModel):
    generate: int = Field(1, ge=0, description="GPUs per generate job (0 = CPU).")
    train: int = Field(1, ge=0, description="GPUs per train job = torchrun processes (CPU-only workers run 2 "
                       "with gloo); per node when train_nodes > 1.")
    train_nodes: int = Field(1, ge=1, le=1024, description="Machines a train job spans (torchrun --nnodes): one "
                             "worker per node joins it (README: On a cluster), or one Slurm allocation of that many.")
    train_rendezvous: str | None = Field(None, description="host:port of the nodes' c10d rendezvous; default: the "
                                         "host of the worker that claims the job, port 29400 + job id % 1000.")

    @field_validator("train_rendezvous")
    @classmethod
    def _rendezvous(cls, v: str | None) -> str | None:
        return check_endpoint(v)
    sample: int = Field(1, ge=0, description="GPUs per sample job.")
    judge: int = Field(0, ge=0, description="GPUs per judge job (0 for an API judge; 1 for a local hf judge on GPU).")
    evaluate: int = Field(1, ge=0, description="GPUs per evaluate job (held-out MI).")


class EvaluationSpec(StrictModel):
    """An experiment's held-out MI: an `evaluate` job for the base model (`evaluate-base`)
    and for each iteration's checkpoint (`evaluate-t`, after train-t), all on the same eval
    queries and constitution variants, scored as training scores (N, reduction, EOS)."""

    limit: int | None = Field(None, ge=1, description="Eval queries (default: all held out, data.eval_size).")
    temperature: float = Field(0.0, ge=0.0, description="Sampling temperature of the responses; 0 = greedy.")
    max_new_tokens: int = Field(128, ge=1, description="Longest response.")
    batch_size: int = Field(16, ge=1, description="Prompts per generation batch.")
    score_batch_size: int = Field(4, ge=1, description="Queries per scoring forward pass.")
    variant_seed: int = Field(0, description="Seed of the eval queries' constitution variants (the same in every job).")
    score_with_base: bool = Field(
        True, description="evaluate-t also scores its responses with the base model (figures under label `base`)."
    )
    n_boot: int = Field(2000, ge=1, description="Bootstrap resamples of the queries for the 95% intervals.")
    seed: int = Field(0, description="Seeds the sampling and the bootstrap.")


TRACKERS = ("mlflow", "wandb")  # tracker name -> the Python module that must be importable is the same name
_SECRET_KEYS = {"api_key": "WANDB_API_KEY", "token": "MLFLOW_TRACKING_TOKEN", "password": "MLFLOW_TRACKING_PASSWORD",
                "username": "MLFLOW_TRACKING_USERNAME"}
_URI_SCHEMES = ("http", "https", "file", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def _refuse_secrets(data: Any) -> Any:
    """A key/token/password written into the spec: refused, naming the variable to set instead."""
    if isinstance(data, dict):
        for key, env in _SECRET_KEYS.items():
            if key in data:
                raise ValueError(f"{key}: secrets are never stored with an experiment; set ${env} "
                                 "in the environment of the workers (and remove the key)")
    return data


class MLflowTrackingSpec(StrictModel):
    """Mirror to MLflow: one parent run per experiment, a nested run per iteration."""

    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI: http(s)://host:port of a tracking server, sqlite:///path.db or a "
                          "folder (a local store; a relative one is made absolute at submit); default: the workers' "
                          "$MLFLOW_TRACKING_URI, else MLflow's own default. Credentials come from the environment "
                          "(MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD).")
    experiment: str = Field("sami", min_length=1, max_length=500,
                            description="The MLflow experiment the runs go to (created when missing).")
    artifact_location: str | None = Field(
        None, description="Where a newly created MLflow experiment keeps its artifacts (default: the server's or "
                          "MLflow's own choice); a relative folder is made absolute at submit.")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data)

    @field_validator("tracking_uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v:
            raise ValueError("empty; leave it out to use the workers' $MLFLOW_TRACKING_URI")
        m = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", v)
        if m:
            scheme = m[1].lower().split("+")[0]
            if scheme not in _URI_SCHEMES:
                raise ValueError(f"{v!r}: unknown scheme {m[1]!r}; use http(s)://host:port, sqlite:///path.db, "
                                 "file:///folder or a folder")
            if re.match(r"[^:]+://[^/@\s]*:[^/@\s]*@", v):
                raise ValueError("credentials in the URI would be stored with the experiment; set "
                                 "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) "
                                 "in the workers' environment instead")
        return v


class WandbTrackingSpec(StrictModel):
    """Mirror to Weights & Biases: one run per iteration grouped by the experiment (and a run
    of job type ``experiment`` with the per-iteration series)."""

    project: str = Field(..., min_length=1, max_length=128, description="The W&B project.")
    entity: str | None = Field(None, min_length=1, description="The W&B team or user (default: the key's own).")
    mode: Literal["online", "offline", "disabled"] = Field(
        "online", description="online: sent as it is logged (WANDB_API_KEY in the workers' environment); offline: "
                              "written under $WANDB_DIR for `wandb sync`; disabled: nothing is logged.")

    @model_validator(mode="before")
    @classmethod
    def _no_secrets(cls, data: Any) -> Any:
        return _refuse_secrets(data)

    @field_validator("project", "entity")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' or '-' (a W&B project or entity name)")
        return v


class TrackingSpec(StrictModel):
    """Optional mirroring of an experiment to experiment trackers (installable extras); the
    workbench's own database stays the record, a tracker that fails never fails a job."""

    mlflow: MLflowTrackingSpec | None = Field(None, description="Mirror to MLflow (pip install "
                                              "'sami-workbench[mlflow]').")
    wandb: WandbTrackingSpec | None = Field(None, description="Mirror to Weights & Biases (pip install "
                                            "'sami-workbench[wandb]').")

    @model_validator(mode="before")
    @classmethod
    def _known(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in TRACKERS]
            if unknown:
                raise ValueError(f"unknown tracker {unknown[0]!r}; the trackers are {', '.join(TRACKERS)} "
                                 "(e.g. tracking: {mlflow: {tracking_uri: ..., experiment: ...}})")
        elif data is not None:
            raise ValueError("must be a mapping such as {mlflow: {...}} or {wandb: {project: ...}}")
        return data

    def requested(self) -> list[str]:
        """The trackers this experiment mirrors to (a W&B section in mode disabled is none)."""
        return [name for name in TRACKERS if getattr(self, name) is not None
                and not (name == "wandb" and self.wandb.mode == "disabled")]


MAX_ITERATIONS = 100  # the paper runs a handful; more is a typo, and would enqueue thousands of jobs


class ExperimentSpec(StrictModel):
    """A whole SAMI experiment: T iterations of generate -> train -> sample, plus a baseline."""

    name: str = Field("experiment", min_length=1)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    constitution: ConstitutionSpec = Field(default_factory=lambda: ConstitutionSpec(path="demo:opus/0"))
    task: Literal["summarization", "dialogue"] = "summarization"
    n_constitutions: int = Field(2, description="N: constitution variants per query.")
    iterations: int = Field(1, description="SAMI iterations (expert iteration rounds).")
    train_from: Literal["previous", "base"] = Field(
        "previous", description="Each iteration trains from the previous checkpoint, or from the base model."
    )
    shuffle_principles: bool = True
    max_prompt_tokens: int | None = Field(
        None, ge=8, description="Prompt budget of the generate, sample and evaluate jobs, in tokens: longer queries "
                                "are cut (never the constitution or the response); default = the model's max length "
                                "- max_new_tokens. The demo model needs 200: it was pretrained on posts of <= 300 "
                                "characters.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    prompts: PromptSpec = Field(default_factory=PromptSpec, description=(
        "Generation and training prompts of every generate, sample and evaluate job: a preset (builtin, "
        "paper-tldr) or templates of your own, and a forced response prefix."))
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    sampling: SamplingSpec = Field(default_factory=SamplingSpec)
    devices: DevicesSpec = Field(default_factory=DevicesSpec)
    max_attempts: int = Field(3, ge=1, description="Attempts per job (transient failures, lost workers).")
    evaluation: EvaluationSpec | None = Field(
        None, description="Held-out MI per iteration and for the base model (jobs `evaluate-base`, `evaluate-t`); "
                          "null = none."
    )
    tracking: TrackingSpec | None = Field(
        None, description="Mirror the experiment to experiment trackers: {mlflow: {tracking_uri, experiment}} and/or "
                          "{wandb: {project, entity, mode}} (installable extras); null = none."
    )
    judge: "ExperimentJudgeSpec | None" = Field(
        None, description="Judge each iteration's samples against baselines (a `judge-t` job per iteration; "
                          "`judge-t-vs-B` with several): the base model, an earlier iteration, or another model "
                          "such as the instruct model (sampled by a `sample-<label>` job); null = no judging."
    )

    @field_validator("n_constitutions")
    @classmethod
    def _n(cls, v: int) -> int:
        return GenerateSpec._n(v)

    @field_validator("iterations")
    @classmethod
    def _iters(cls, v: int) -> int:
        if not 1 <= v <= MAX_ITERATIONS:
            raise ValueError(f"must be between 1 and {MAX_ITERATIONS} (each iteration is a generate, a train and a "
                             "sample job)")
        return v

    @model_validator(mode="after")
    def _prompt_task(self) -> "ExperimentSpec":
        check_prompt_task(self.prompts, self.task)
        return self

    @model_validator(mode="after")
    def _lora_iterations(self) -> "ExperimentSpec":
        lora = self.training.lora
        if lora is not None and lora.continue_adapter and self.train_from == "base":
            raise ValueError("training.lora.continue_adapter: every iteration trains from the base model "
                             "(train_from: base), so there is no adapter to continue; set train_from: previous "
                             "or continue_adapter: false")
        return self

    @model_validator(mode="after")
    def _judge_baselines(self) -> "ExperimentSpec":
        if self.judge is None:
            return self
        seen: dict[str, int] = {}
        for i, b in enumerate(self.judge.baselines):
            where = f"judge.baselines.{i}"
            if isinstance(b, str):
                m = re.fullmatch(r"iteration-(\d+)", b)
                if b != "base" and not (m and 1 <= int(m[1]) <= self.iterations):
                    raise ValueError(f"{where}: {b!r} is neither 'base' nor 'iteration-K' with 1 <= K <= iterations "
                                     f"({self.iterations}); to compare with another model (e.g. an instruct model) "
                                     "give {model: HUB_ID_OR_DIR, label: NAME}")
                label = b
            else:
                label, where = b.label, f"{where}.label"
            if label in seen:
                raise ValueError(f"{where}: {label!r} is already judge.baselines.{seen[label]}; each baseline once")
            seen[label] = i
        return self


def validate_experiment(data: Any, source: str = "experiment spec") -> ExperimentSpec:
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping of keys to values, got {type(data).__name__}", source=source)
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as err:
        raise SpecError(errors=_field_errors(err), source=source) from None


_LABEL = r"[A-Za-z][A-Za-z0-9._-]{0,63}"


class BaselineModelSpec(StrictModel):
    """A model each iteration is compared with (e.g. the instruct model of the same family):
    sampled once on the eval queries exactly as the checkpoints are (same constitution,
    temperatures, limits), by a job ``sample-<label>`` whose responses form a response
    source of kind ``baseline`` named ``<label>``."""

    model: ModelSpec = Field(
        ..., description="The model to sample: a hub id or local directory as a string (e.g. "
                         "mistralai/Mistral-7B-Instruct-v0.2; `demo` = the embedded demo model), or a full model "
                         "entry {path, prompt_format, dtype, trust_remote_code}. A string gets the defaults "
                         "(prompt_format auto: the chat template when the tokenizer has one).",
    )
    label: str | None = Field(
        None, description="Its name in job keys (`sample-<label>`, `judge-t-vs-<label>`), response sources and "
                          "win-rate tables, e.g. `instruct`; letters, digits, `.`, `_`, `-`, starting with a "
                          "letter; not `base` or `iteration-K`. Default: the last part of the model path.",
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(_LABEL, v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' or '-', starting with a letter (at most 64)")
        if v == "base" or re.fullmatch(r"iteration-\d+", v):
            raise ValueError(f"{v!r} names the experiment's own samples; choose another label, e.g. 'instruct'")
        return v

    @model_validator(mode="after")
    def _default_label(self) -> "BaselineModelSpec":
        if self.label is None:
            derived = self.model.path.rstrip("/").rsplit("/", 1)[-1]
            if not re.fullmatch(_LABEL, derived) or derived == "base" or re.fullmatch(r"iteration-\d+", derived):
                raise ValueError(f"no label can be made from model {self.model.path!r}; give `label` "
                                 "(letters, digits, '.', '_', '-'), e.g. label: instruct")
            self.label = derived
        return self


def _baseline_kind(v: Any) -> str | None:
    if isinstance(v, str):
        return "<name>"
    if isinstance(v, (dict, BaselineModelSpec)):
        return "<model>"
    return None


BaselineEntry = Annotated[
    Union[Annotated[str, Tag("<name>")], Annotated[BaselineModelSpec, Tag("<model>")]],
    Discriminator(_baseline_kind, custom_error_type="baseline_entry",
                  custom_error_message="must be 'base', 'iteration-K' or a model entry {model: ..., label: ...}"),
]


AUTO_JUDGE_MODEL = "gpt-4o"  # the GPT-4-class default of provider auto


AZURE_API_VERSION = "2024-06-01"


class ExperimentLLMSpec(LLMSpec):
    """An experiment's judge: an :class:`LLMSpec` that may also say ``provider: auto``."""

    provider: Literal["auto", "openai", "azure", "hf", "rule"] = Field(
        "openai",
        description="auto = chosen when the experiment is submitted: Azure OpenAI when AZURE_OPENAI_API_KEY and "
                    "AZURE_OPENAI_ENDPOINT are set (deployment: $AZURE_OPENAI_DEPLOYMENT or `model`; API version: "
                    "$OPENAI_API_VERSION or " + AZURE_API_VERSION + "), else OpenAI with `model` (default "
                    + AUTO_JUDGE_MODEL + ") when the key variable (`api_key_env`, default OPENAI_API_KEY) is set, "
                    "else the local hf judge on the demo model (mechanics only); the submitted spec records the "
                    "choice. openai = any OpenAI-compatible endpoint; azure = Azure OpenAI; hf = a local causal LM; "
                    "rule = a deterministic rule on the two responses, named by `model` (concision: the demo's "
                    "offline judge, fewer filler phrases then fewer words wins).",
    )


class ExperimentJudgeSpec(StrictModel):
    """An experiment's judging: every iteration's samples against each baseline's, by one judge."""

    judge: ExperimentLLMSpec = Field(
        default_factory=ExperimentLLMSpec,
        description="The judge: an API model, provider hf (a local LM), or provider auto (an API judge when a key "
                    "is in the environment at submit time, else the local demo judge).",
    )
    baselines: list[BaselineEntry] = Field(
        default_factory=lambda: ["base"], min_length=1,
        description="What each iteration is compared with, each once: 'base' (the base model's samples), "
                    "'iteration-K' (iteration K's samples; for later iterations only), or another model as "
                    "{model: HUB_ID_OR_DIR, label: NAME} (e.g. {model: mistralai/Mistral-7B-Instruct-v0.2, "
                    "label: instruct}), sampled once on the eval queries by a job `sample-<label>`.",
    )
    order: Literal["random", "both", "candidate_first", "baseline_first"] = Field(
        "random", description="A/B position: random per pair (seeded), both orders (reports the flip rate), or fixed."
    )
    temperature: float | None = Field(None, ge=0.0, description="Judge only samples at this temperature (default: all).")
    limit: int | None = Field(None, ge=1, description="Judge only the first K pairs per job.")
    allow_tie: bool = Field(False, description="Offer 'Tie' in the prompt (the paper forces A or B).")
    template: JudgeTemplateSpec | None = Field(
        None, description="A judge template: a shipped name (`paper`) or a YAML file (system, user, answer_pattern), "
                          "read and checked at submit and stored with its text; null = the built-in template."
    )
    unparseable: Literal["apart", "tie"] = Field(
        "apart", description="Answers with no readable choice: counted apart (`invalid`) or as ties (the paper's "
                             "choice)."
    )
    seed: int = Field(0, description="Seeds the A/B order and the principle shuffle.")
    shared_cache: str | None = Field(
        "judge-cache", description="Judgment cache shared between judge jobs (relative: to the workspace); null = none."
    )

    def baseline_labels(self) -> list[str]:
        """Each baseline's name: 'base', 'iteration-K', or a model baseline's label."""
        return [b if isinstance(b, str) else b.label for b in self.baselines]

    def model_baselines(self) -> list[BaselineModelSpec]:
        return [b for b in self.baselines if isinstance(b, BaselineModelSpec)]


def resolve_auto_judge(llm: LLMSpec, env: Mapping[str, str]) -> tuple[LLMSpec, str | None]:
    """Resolve ``provider: auto`` against the environment ``env`` (names of variables are
    read, and only whether they are set; no key value is ever copied into the spec).

    Returns the judge spec with a concrete provider and a one-line note saying which judge
    was chosen and why (None when the provider was not auto)."""
    if llm.provider != "auto":
        return llm, None
    data = llm.model_dump(mode="json")
    key_env = llm.api_key_env or "OPENAI_API_KEY"
    if env.get("AZURE_OPENAI_API_KEY") and env.get("AZURE_OPENAI_ENDPOINT"):
        data.update(provider="azure", model=env.get("AZURE_OPENAI_DEPLOYMENT") or llm.model,
                    azure_endpoint=env["AZURE_OPENAI_ENDPOINT"],
                    api_version=env.get("OPENAI_API_VERSION") or AZURE_API_VERSION, api_key_env="AZURE_OPENAI_API_KEY")
        note = (f"judge: provider auto -> Azure OpenAI deployment {data['model']!r} at {data['azure_endpoint']} "
                "(AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT are set; the key stays in the environment)")
    elif env.get(key_env):
        data.update(provider="openai", api_key_env=key_env)
        note = (f"judge: provider auto -> OpenAI {llm.model!r} ({key_env} is set; the key stays in the environment, "
                "and the workers that run the judge jobs need it too)")
    else:
        data.update(provider="hf", model="demo", api_key_env=None)
        note = (f"judge: provider auto -> the local hf judge on the demo model, because {key_env} is not set: "
                "its verdicts show the mechanics only and mean nothing; set "
                f"{key_env} (or AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT) for a GPT-4-class judge")
    return type(llm).model_validate(data), note


def resolve_experiment_judge(exp: "ExperimentSpec", env: Mapping[str, str]) -> tuple["ExperimentSpec", str | None]:
    """``exp`` with its judge's ``provider: auto`` resolved (see :func:`resolve_auto_judge`)."""
    if exp.judge is None or exp.judge.judge.provider != "auto":
        return exp, None
    llm, note = resolve_auto_judge(exp.judge.judge, env)
    return exp.model_copy(update={"judge": exp.judge.model_copy(update={"judge": llm})}), note


ExperimentSpec.model_rebuild()
