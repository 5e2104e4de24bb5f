"""Stage specs: what a stage is asked to do, validated up front.

This module imports no torch/transformers so that the CLI, the workers and the app can
validate specs without the ML stack. A spec file is YAML or JSON; unknown keys and wrong
types are refused with every problem at once: :class:`sami_core.errors.SpecError`
carries them as (field path, reason) pairs and says them as ``field.path: reason`` lines.

Paths may use two shorthands resolved by the stages (see :func:`resolve_shipped`):
``model.path: demo`` is the embedded demo model, and ``constitution.path: demo:opus/0``
is a constitution shipped with the project (``sami_core/data/sami_tldr/constitutions``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator, model_serializer, model_validator)

from sami_core.errors import SpecError
from sami_core.prompts import PRESETS, check_template, format_fields

DATA_DIR = Path(__file__).parent / "data" / "sami_tldr"
EXAMPLES_DIR = Path(__file__).parent / "examples"


class StrictModel(BaseModel):
    # allow_inf_nan=False: `lr: .inf` or `temperature: nan` is refused with the spec, not hours later.
    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)


class ModelSpec(StrictModel):
    path: str = Field(
        "demo",
        description="Hugging Face model id or local directory; `demo` is the embedded demo model.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Weights dtype; auto = bfloat16 on CUDA, float32 on CPU."
    )
    prompt_format: Literal["auto", "plain", "chat"] = Field(
        "auto",
        description="plain text template (base models) or the tokenizer's chat template "
        "(instruct models); auto = chat when the tokenizer has a chat template.",
    )
    trust_remote_code: bool = Field(False, description="Passed to from_pretrained.")

    @field_validator("path")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model id or directory (or `demo`)")
        return v


_PATH_RE = re.compile(r"[^\s.{}\[\]]+(\.[^\s.{}\[\]]+)*")
EXTRACTORS = ("first_human_turn",)


def template_fields(template: str) -> list[str]:
    """The placeholder names of a query template, in order; ValueError when malformed."""
    names = []
    for name, fmt, conv in format_fields(template):
        if name == "" or name.isdigit():
            raise ValueError("a placeholder must name a field: {query} (the query text) or a field path such as "
                             "{title} or {info.title}")
        if fmt or conv:
            raise ValueError(f"placeholder {{{name}}}: conversions and format specs (! and :) are not supported")
        if not _PATH_RE.fullmatch(name):
            raise ValueError(f"placeholder {{{name}}} is not a field name or dotted field path")
        names.append(name)
    return names


class DataSpec(StrictModel):
    """Where queries come from and which become training and eval queries.

    Rows are read in order; ``field`` (a dotted path into struct/dict columns) holds the text,
    optionally passed through ``extract`` and then ``template``; empty texts are skipped; rows
    whose ``id_field`` repeats an earlier id are collapsed (the first kept, the count reported).
    ``start``/``max_queries`` then keep a window of distinct queries in data order. Without
    ``eval_split`` the window is split by a seeded hash (``eval_size`` held out, the rest for
    training, capped by ``train_size``); with it, training queries are the window (capped by
    ``train_size``) and eval queries are the first ``eval_size`` distinct queries of ``eval_split``.
    """

    source: Literal["demo", "hf", "file"] = Field(
        "demo", description="demo = the shipped 250 TL;DR posts; hf = a hub dataset; file = local JSON/JSONL/CSV/Parquet."
    )
    dataset: str | None = Field(None, description="Hub dataset id (source: hf).")
    config: str | None = Field(None, description="Hub dataset config name (source: hf).")
    data_dir: str | None = Field(
        None, description="A folder of the hub dataset's repository (source: hf), e.g. harmless-base of Anthropic/hh-rlhf."
    )
    split: str = Field("train", description="Split to read queries from (source: hf; source: file with {split} in path).")
    path: str | None = Field(
        None, description="Local file (source: file); `{split}` in it is replaced by `split` or `eval_split`."
    )
    field: str = Field("post", description="Field holding the query text; a dotted path into nested fields (info.post).")
    id_field: str | None = Field(
        None, description="Field (dotted path) holding a stable query id; repeated ids are collapsed, the first "
        "kept (default: row index; the demo set's `id`)."
    )
    extract: Literal["first_human_turn"] | None = Field(
        None, description="first_human_turn: the query is the first `Human:` turn of a `\\n\\nHuman: … "
        "\\n\\nAssistant: …` dialogue in `field` (HH-RLHF)."
    )
    template: str | None = Field(
        None, description="Query text from a template: {query} is the (extracted) field, other placeholders are "
        "field paths from the row ({info.title}) or siblings of `field` ({title}). E.g. 'POST: {query}'."
    )
    start: int = Field(0, ge=0, description="Skip this many distinct queries (in data order) first.")
    max_queries: int | None = Field(
        None, ge=1, description="Keep at most this many distinct queries after `start` (before the train/eval split)."
    )
    eval_split: str | None = Field(
        None, description="Eval queries from this split (its first eval_size distinct queries) instead of a "
        "hashed hold-out of `split`."
    )
    eval_size: int = Field(50, ge=0, description="Held-out queries for sampling/evaluation.")
    train_size: int | None = Field(None, ge=1, description="Cap on training queries (default: all the rest).")
    seed: int = Field(0, description="Seed of the deterministic train/eval split.")

    @field_validator("field", "id_field")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and not _PATH_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a field name or dotted field path (e.g. post, info.post)")
        return v

    @field_validator("template")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                raise ValueError("is empty: give a template with {query}, e.g. 'POST: {query}', or leave it out")
            template_fields(v)
        return v

    @model_validator(mode="after")
    def _source_fields(self) -> "DataSpec":
        if self.source == "hf" and not self.dataset:
            raise ValueError("source 'hf' needs `dataset` (a hub dataset id)")
        if self.source == "file" and not self.path:
            raise ValueError("source 'file' needs `path` (a JSON/JSONL/CSV/Parquet file)")
        if self.data_dir is not None and self.source != "hf":
            raise ValueError("data_dir: a folder of a hub dataset; only with source 'hf'")
        if self.eval_split is not None:
            if self.source == "demo":
                raise ValueError("eval_split: the demo set has one split; use source hf or file")
            if self.source == "file" and "{split}" not in (self.path or ""):
                raise ValueError("eval_split: with source 'file', `path` must contain {split} (e.g. "
                                 "data/{split}.parquet) so that each split names its own file")
            if self.eval_split == self.split:
                raise ValueError(f"eval_split: {self.eval_split!r} is also `split`; name another split, or leave "
                                 "eval_split out for a hashed hold-out")
        return self


class PrincipleSpec(StrictModel):
    principle: str
    antithesis: str | None = None


class ConstitutionMemberSpec(StrictModel):
    """One constitution of a set, inline: what submitting ``paths`` stores."""

    name: str = Field(..., min_length=1, description="Its name (recorded per query as the drawn constitution).")
    principles: list[PrincipleSpec] = Field(..., min_length=1)


class ConstitutionSpec(StrictModel):
    """One constitution (``path`` or ``principles``), or a set of them (``paths``, or
    ``members`` inline) from which each query draws one, seeded by ``seed`` and the query
    id, so the same query draws the same constitution in every stage and on every resume."""

    path: str | None = Field(
        None, description="Reference JSON (positive/negative/identifiers) or native JSON list; `demo:opus/0` for a shipped one."
    )
    principles: list[PrincipleSpec] | None = Field(None, description="Inline principles (instead of path).")
    paths: list[str] | str | None = Field(
        None, description="A constitution set: a list of references (files, `demo:opus/0`) or a folder (every *.json "
                          "in it, sorted; `demo:opus` for a shipped one); each query draws one of them."
    )
    members: list[ConstitutionMemberSpec] | None = Field(
        None, description="A constitution set inline ({name, principles} each; what submitting `paths` stores)."
    )
    seed: int = Field(0, description="Seed of the per-query draw from a set (the same in every stage).")
    name: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> "ConstitutionSpec":
        given = [k for k in ("path", "principles", "paths", "members") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of `path` or `principles` (one constitution) or `paths` (a set)"
                             + (f"; got {' and '.join(given)}" if given else ""))
        if self.principles is not None and not self.principles:
            raise ValueError("`principles` is empty: a constitution needs at least one principle")
        if isinstance(self.paths, list):
            if not self.paths:
                raise ValueError("`paths` is empty: list the set's constitutions (e.g. [demo:opus/0, demo:opus/1]) "
                                 "or name a folder (e.g. demo:opus)")
            if dup := sorted({p for p in self.paths if self.paths.count(p) > 1}):
                raise ValueError(f"`paths` lists {dup[0]!r} twice: name each constitution of the set once")
        if isinstance(self.paths, str) and not self.paths.strip():
            raise ValueError("`paths` is empty: name a folder of constitution files (e.g. demo:opus) or list them")
        if self.members is not None:
            if not self.members:
                raise ValueError("`members` is empty: a set needs at least one constitution")
            names = [m.name for m in self.members]
            if dup := sorted({n for n in names if names.count(n) > 1}):
                raise ValueError(f"`members`: the name {dup[0]!r} is used twice: each constitution of a set "
                                 "needs its own name")
        return self

    @property
    def is_set(self) -> bool:
        return self.paths is not None or self.members is not None

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict:
        """Without a set, dumped as before sets existed: the spec fingerprints of run
        directories made by earlier versions still match, so their runs resume."""
        data = handler(self)
        if not self.is_set:
            for key in ("paths", "members", "seed"):
                data.pop(key, None)
        return data


VLLM_OPTIONS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len")


class GenerationSpec(StrictModel):
    temperature: float = Field(1.0, ge=0.0, description="0 = greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
    backend: Literal["auto", "transformers", "vllm"] = Field(
        "auto", description="auto = vLLM when installed (and on CUDA), else transformers."
    )
    # vLLM engine options for large models (used only where generation runs on vLLM).
    tensor_parallel_size: int | None = Field(
        None, ge=1, description="vLLM: GPUs one model is split over (e.g. 8 for a 70B model on one node); "
        "default: vLLM's (1)."
    )
    gpu_memory_utilization: float | None = Field(
        None, gt=0.0, le=1.0, description="vLLM: share of each GPU's memory the engine may take (weights + KV "
        "cache), in (0, 1]; default: vLLM's (0.9)."
    )
    max_model_len: int | None = Field(
        None, ge=1, description="vLLM: longest sequence (prompt + response) the engine plans its KV cache for; "
        "lower it when a long-context model's KV cache does not fit. Default: the model's."
    )

    @model_validator(mode="after")
    def _vllm_options(self) -> "GenerationSpec":
        given = [k for k in VLLM_OPTIONS if getattr(self, k) is not None]
        if given and self.backend == "transformers":
            raise ValueError(f"{given[0]}: a vLLM engine option, but backend is 'transformers'; set backend to "
                             "'vllm' (or 'auto') or remove it")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict:
        """vLLM options left unset are not dumped: spec fingerprints of run directories
        made before they existed still match, so those runs resume."""
        data = handler(self)
        for key in VLLM_OPTIONS:
            if data.get(key, 0) is None:
                data.pop(key)
        return data


class FilterSpec(StrictModel):
    stop_sequences: list[str] = Field(
        default_factory=lambda: ["\n\nPOST:", "\nHuman:", "\n\nHuman:"],
        description="A response is cut at the first of these.",
    )
    drop_substrings: list[str] = Field(
        default_factory=list, description="A response containing any of these is invalid."
    )
    ends_with: list[str] = Field(
        default_factory=list, description="A response must end with one of these (e.g. ['.'], as the paper "
        "required); empty = any ending."
    )
    min_chars: int = Field(1, ge=0, description="Shorter responses (after stripping) are invalid.")
    require_distinct: bool = Field(True, description="Drop a query unless its N responses are distinct.")


class PromptSpec(StrictModel):
    """The prompts of generate, sample and evaluate: a preset, or templates of your own.

    The generation prompt (followed by `response_prefix`, which the model continues) is what
    the policy samples from; the training prompt is what train and evaluate score the
    response under, log p(response | training prompt). Templates take {constitution} and
    {query} only; a chat model gets a template as its one user turn."""

    preset: Literal[tuple(PRESETS)] = Field(  # type: ignore[valid-type]
        "builtin", description="builtin = this project's prompt per task (chat template with the constitution in "
        "the system turn for instruct models); paper-tldr = the SAMI paper's TL;DR scaffold to generate (forced "
        "start 'The post') and its short prompt to train (summarization only).",
    )
    generation: str | None = Field(
        None, description="Generation template with {constitution} and {query}; default: the preset's.",
    )
    training: str | None = Field(
        None, description="Training template with {constitution} and {query}; default: the preset's, or the "
        "generation template when that one is given.",
    )
    response_prefix: str | None = Field(
        None, description="Forced start of every response, appended to the generation prompt (after a space) "
        "for the model to continue, e.g. 'The post'; default: the preset's ('' for builtin).",
    )
    keep_prefix: bool = Field(
        True, description="Keep the forced prefix in the stored response (so it is trained on and judged), or "
        "strip it.",
    )

    @field_validator("generation", "training")
    @classmethod
    def _template(cls, v: str | None) -> str | None:
        if v is not None:
            if not v.strip():
                raise ValueError("is empty: give a template with {constitution} and {query}, or leave it out")
            check_template(v)
        return v


def check_prompt_task(prompts: PromptSpec, task: str) -> None:
    """A preset written for other tasks is refused (ValueError naming the field)."""
    preset = PRESETS[prompts.preset]
    if task not in preset.tasks:
        raise ValueError(f"prompts.preset: {prompts.preset!r} is written for task {', '.join(preset.tasks)}, not "
                         f"{task!r}; use preset builtin or templates of your own (prompts.generation / "
                         "prompts.training)")


class GenerateSpec(StrictModel):
    """Stage `generate`: SAMI training data for one iteration from the current policy."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    constitution: ConstitutionSpec = Field(default_factory=lambda: ConstitutionSpec(path="demo:opus/0"))
    task: Literal["summarization", "dialogue"] = "summarization"
    n_constitutions: int = Field(2, description="N: constitution variants (and responses) per query.")
    shuffle_principles: bool = Field(True, description="Shuffle principle order per query (seeded).")
    variant_seed: int = Field(0, description="Seed for choosing variants and principle order.")
    generation: GenerationSpec = Field(default_factory=GenerationSpec)
    filters: FilterSpec = Field(default_factory=FilterSpec)
    prompts: PromptSpec = Field(default_factory=PromptSpec, description="Generation and training prompts; "
                                "data.jsonl records each response's training prompt.")
    max_prompt_tokens: int | None = Field(
        None, ge=8, description="Prompt budget; default = model max length - max_new_tokens. Queries are truncated, never responses."
    )

    @field_validator("n_constitutions")
    @classmethod
    def _n(cls, v: int) -> int:
        if v < 2:
            raise ValueError("must be >= 2: SAMI contrasts at least two constitutions per query")
        return v

    @model_validator(mode="after")
    def _prompt_task(self):
        check_prompt_task(self.prompts, self.task)
        return self


class TrainDataSpec(StrictModel):
    path: str = Field(..., description="A generate run directory or its data.jsonl.")


class LoraSpec(StrictModel):
    """LoRA adapters (peft) instead of full fine-tuning: only the adapters train, under
    FSDP2 like the full model; every checkpoint holds the adapter (`adapter/`, peft format)
    and the merged model (Hugging Face format, what the other stages load)."""

    r: int = Field(16, ge=1, description="Rank of each adapter (the low-rank update B·A has rank <= r).")
    alpha: float = Field(32.0, gt=0.0, description="Scale: the update added to a weight is (alpha / r)·B·A.")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the adapters' input (0 = none).")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear", description="Names of the linear layers that get adapters (the last part of the module "
        "name, e.g. [q_proj, k_proj, v_proj, o_proj]); all-linear = every linear layer but the output head.",
    )
    continue_adapter: bool = Field(
        False, description="When model.path is a LoRA checkpoint of an earlier run (it has `adapter/`), keep "
        "training that adapter on its base model; false = a fresh adapter on the merged model. A model "
        "without `adapter/` (the first iteration) always gets a fresh one.",
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise ValueError("is empty: name the linear layers to adapt (e.g. [q_proj, v_proj]) or use all-linear")
            if bad := [t for t in v if not re.fullmatch(r"[A-Za-z0-9_.]+", t)]:
                raise ValueError(f"{bad[0]!r} is not a module name (letters, digits, '_' and '.', e.g. q_proj)")
        return v


class TrainingSpec(StrictModel):
    optimizer: Literal["rmsprop", "adamw"] = "rmsprop"
    lr: float = Field(5e-7, description="Peak learning rate (paper: 5e-7 with RMSprop).")
    weight_decay: float = Field(0.0, ge=0.0)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "linear", "cosine"] = Field("constant", description="After warmup.")
    grad_accum: int = Field(16, ge=1, description="Micro-batches per optimizer step (per process).")
    queries_per_microbatch: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; default = one pass (epochs).")
    epochs: float = Field(1.0, gt=0.0)
    clip_grad_norm: float | None = Field(1.0, gt=0.0)
    save_every: int = Field(32, ge=1, description="Checkpoint every K optimizer steps (and at the end).")
    beta: float = Field(0.0, ge=0.0, description="Weight of the KL to the frozen reference model (paper: 0).")
    reduction: Literal["mean", "sum"] = Field("mean", description="Token log-probs per response: mean or sum.")
    logprob_impl: Literal["auto", "prefix", "naive"] = "auto"
    activation_checkpointing: bool = True
    mixed_precision: Literal["auto", "bf16", "no"] = Field("auto", description="auto = bf16 on CUDA, none on CPU.")
    fsdp: Literal["auto", "yes", "no"] = Field("auto", description="auto = FSDP2 when world size > 1.")

    @field_validator("mixed_precision", "fsdp", mode="before")
    @classmethod
    def _yaml_booleans(cls, v: Any, info: Any) -> Any:
        """YAML 1.1 reads a bare `no` / `off` / `yes` / `on` as a boolean: take it as the word
        written (off = no, on = yes); `mixed_precision` has no `yes`, so true is refused saying why."""
        if v is False:
            return "no"
        if v is True:
            if info.field_name == "fsdp":
                return "yes"
            raise ValueError("YAML read a bare yes/on/true as the boolean true, which names no precision: "
                             "write bf16 (or auto; no for full float32)")
        return v
    seed: int = 0
    append_eos: bool | Literal["auto"] = Field("auto", description=(
        "Score an EOS token after each response. auto = only where the model ended the response with its EOS "
        "(generate records it); a response cut at a stop string or at max_new_tokens is scored on its own "
        "tokens, as in the paper."))
    eval_fraction: float = Field(0.0, ge=0.0, lt=1.0, description=(
        "Hold out this fraction of the generated queries (at least one), scored without gradients: "
        "eval_loss, eval_mi_lower_bound, eval_row_accuracy, eval_col_accuracy in metrics.jsonl. 0 = no evaluation."))
    eval_every: int | None = Field(None, ge=1, description=(
        "Score the held-out queries every K optimizer steps (and after the last); default: after the last only."))
    eval_before_training: bool = Field(False, description="Also score them before the first step (logged as step 0).")
    lora: LoraSpec | None = Field(None, description=(
        "Train LoRA adapters (peft) instead of every weight: {r, alpha, dropout, target_modules, "
        "continue_adapter}; null = full fine-tuning. The KL reference (beta > 0) is the model with its "
        "adapters disabled."))

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict:
        """Without LoRA, dumped as before it existed: fingerprints of earlier run directories match."""
        data = handler(self)
        if data.get("lora", 0) is None:
            data.pop("lora")
        return data

    @field_validator("lr")
    @classmethod
    def _lr(cls, v: float) -> float:
        if not 0 < v < float("inf"):
            raise ValueError("must be > 0 (e.g. 5e-7 for RMSprop on a 7B model)")
        return v

    @model_validator(mode="after")
    def _eval_needs_a_slice(self) -> "TrainingSpec":
        if self.eval_fraction == 0 and (self.eval_every is not None or self.eval_before_training):
            raise ValueError("eval_fraction: set it > 0 (e.g. 0.1) to hold out queries for eval_every / "
                             "eval_before_training")
        return self


class LaunchSpec(StrictModel):
    """How a train job is launched over several machines (torchrun's c10d rendezvous). Read
    by the worker that launches it, not by the recipe: it is left out of the run
    directory's fingerprint, so a run may resume on another number of nodes."""

    nodes: int = Field(1, ge=1, le=1024, description="Machines (workers) the job trains on, each running its "
                       "devices ranks: torchrun --nnodes.")
    endpoint: str | None = Field(None, description="host:port of the rendezvous; default: the host of the worker "
                                 "that claims the job, port 29400 + job id % 1000.")
    procs_per_node: int | None = Field(None, ge=1, le=1024, description="Ranks per node (default: one per GPU "
                                       "of the job, or 2 gloo ranks on a CPU node).")
    member_of: int | None = Field(None, ge=1, description="Set by the queue on a member node's job: the job it "
                                  "joins (the leader, node 0).")
    attempt: int | None = Field(None, ge=1, description="Set with member_of: the leader's attempt it joins.")

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str | None) -> str | None:
        return check_endpoint(v)


def check_endpoint(v: str | None) -> str | None:
    """A rendezvous endpoint ``host:port`` (None passes)."""
    if v is not None:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{v!r} is not host:port; e.g. node01:29400")
    return v


class TrainSpec(StrictModel):
    """Stage `train`: one SAMI iteration."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    reference_model: ModelSpec | None = Field(None, description="Frozen reference for the KL term; default = model.")
    data: TrainDataSpec
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    launch: LaunchSpec | None = Field(None, description="Several nodes: see LaunchSpec (default: one node).")

    @model_validator(mode="after")
    def _lora_reference(self) -> "TrainSpec":
        if self.training.lora is not None and self.reference_model is not None:
            raise ValueError("reference_model: with training.lora the KL reference is the model with its adapters "
                             "disabled (no second copy); remove reference_model")
        return self


class SampleSpec(StrictModel):
    """Stage `sample`: a model's responses on the eval queries, for each temperature."""

    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec = Field(default_factory=DataSpec)
    constitution: ConstitutionSpec = Field(default_factory=lambda: ConstitutionSpec(path="demo:opus/0"))
    task: Literal["summarization", "dialogue"] = "summarization"
    split: Literal["eval", "train"] = "eval"
    limit: int | None = Field(None, ge=1, description="Use only the first K queries of the split.")
    temperatures: list[float] = Field(default_factory=lambda: [0.0])
    generation: GenerationSpec = Field(default_factory=lambda: GenerationSpec(temperature=0.0))
    filters: FilterSpec = Field(default_factory=FilterSpec)
    prompts: PromptSpec = Field(default_factory=PromptSpec, description="The generation prompt (and forced "
                                "prefix) samples; the prefix is kept in or stripped from the response as in generate.")
    max_prompt_tokens: int | None = Field(None, ge=8)
    constitution_variant: Literal["positive", "antithesis"] = Field("positive", description=(
        "Sample under the constitution as written, or under its antithesis (every principle flipped), "
        "to see whether a model follows the principles in both directions."))

    @field_validator("temperatures")
    @classmethod
    def _temps(cls, v: list[float]) -> list[float]:
        if not v:
            raise ValueError("give at least one temperature, e.g. [0.0]")
        if any(t < 0 for t in v):
            raise ValueError("temperatures must be >= 0")
        return v

    @model_validator(mode="after")
    def _prompt_task(self):
        check_prompt_task(self.prompts, self.task)
        return self


_SCORER_LABEL = r"[A-Za-z][A-Za-z0-9._-]{0,63}"


class EvalGenerationSpec(GenerationSpec):
    """Sampling of an evaluation's responses: greedy unless a temperature is given."""

    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (the default).")


class ScoreModelSpec(StrictModel):
    """Another model that scores the same responses (e.g. the base model beside a checkpoint)."""

    model: ModelSpec = Field(
        ..., description="The scoring model: a hub id or directory as a string (`demo` = the demo model), or a "
                         "full model entry {path, dtype, trust_remote_code}. It must share the evaluated model's "
                         "tokenizer: prompts and responses are tokenized once.",
    )
    label: str | None = Field(
        None, description="Its name in mi.jsonl and outputs.json (letters, digits, '.', '_', '-'); "
                          "default: the last part of the model path.",
    )

    @model_validator(mode="before")
    @classmethod
    def _entry(cls, v: Any) -> Any:
        return {"model": v} if isinstance(v, str) else v  # a bare model path

    @field_validator("model", mode="before")
    @classmethod
    def _model_path(cls, v: Any) -> Any:
        return {"path": v} if isinstance(v, str) else v

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None, info: ValidationInfo) -> str | None:
        model = info.data.get("model")
        if v is None and model is None:
            return v  # the missing model is reported
        label = v if v is not None else model.path.rstrip("/").rsplit("/", 1)[-1]
        if not re.fullmatch(_SCORER_LABEL, label):
            raise ValueError(f"{label!r} is not a usable label"
                             f"{' (made from the model path)' if v is None else ''}; give `label` with letters, "
                             "digits, '.', '_' or '-', starting with a letter (at most 64)")
        return label


class EvaluateSpec(StrictModel):
    """Stage `evaluate`: held-out mutual information between constitutions and responses.

    Per eval query: the N constitution variants exactly as `generate` makes them (same
    `variant_seed`, `shuffle_principles`), one response sampled per variant, and the N×N
    matrix L[i, j] = log p(y_j | x, c_i) scored with the training code; reported: the
    InfoNCE lower bound log N - loss, row and column accuracy, each with a bootstrap 95%
    interval over queries."""

    model: ModelSpec = Field(default_factory=ModelSpec, description="The model (or checkpoint) that samples and scores.")
    label: str = Field("model",
                       description="The model's name in mi.jsonl and outputs.json (e.g. `iteration-2`, `base`).")
    data: DataSpec = Field(default_factory=DataSpec)
    constitution: ConstitutionSpec = Field(default_factory=lambda: ConstitutionSpec(path="demo:opus/0"))
    task: Literal["summarization", "dialogue"] = "summarization"
    split: Literal["eval", "train"] = Field("eval", description="Query split: the held-out queries the sample stage uses.")
    limit: int | None = Field(None, ge=1, description="Use only the first K queries of the split.")
    n_constitutions: int = Field(2, description="N: constitution variants (and responses) per query, as in training.")
    shuffle_principles: bool = Field(True, description="Shuffle principle order per query (seeded), as generate does.")
    variant_seed: int = Field(0, description="Seed for choosing variants and principle order (generate's).")
    generation: EvalGenerationSpec = Field(
        default_factory=EvalGenerationSpec,
        description="Sampling of the responses; temperature 0 (the default) = greedy.",
    )
    filters: FilterSpec = Field(default_factory=FilterSpec, description="Only stop_sequences apply: responses are cut "
                                "at them; no query is dropped (an evaluation scores every query).")
    prompts: PromptSpec = Field(default_factory=PromptSpec, description="As generate: responses are sampled "
                                "under the generation prompt and scored under the training prompt.")
    max_prompt_tokens: int | None = Field(None, ge=8, description="Prompt budget; default = model max length - max_new_tokens.")
    reduction: Literal["mean", "sum"] = Field("mean", description="Token log-probs per response: mean (as training) or sum.")
    append_eos: bool | Literal["auto"] = Field("auto", description="Score an EOS after each response (as training; "
                                               "auto = only where the model ended the response with its EOS).")
    logprob_impl: Literal["auto", "prefix", "naive"] = Field(
        "auto", description="auto = the prefix-shared matrix where the model supports it, else the naive N² one.")
    score_batch_size: int = Field(4, ge=1, description="Queries per scoring forward pass.")
    score_models: list[ScoreModelSpec] = Field(
        default_factory=list,
        description="Other models that score the same responses (e.g. [{model: demo, label: base}]); "
                    "their figures are reported beside the model's.",
    )
    n_boot: int = Field(2000, ge=1, description="Bootstrap resamples of the queries for the 95% intervals.")
    seed: int = Field(0, description="Seed of the bootstrap.")

    @field_validator("n_constitutions")
    @classmethod
    def _n(cls, v: int) -> int:
        return GenerateSpec._n(v)

    @field_validator("label")
    @classmethod
    def _label(cls, v: str) -> str:
        if not re.fullmatch(_SCORER_LABEL, v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_' or '-', starting with a letter (at most 64)")
        return v

    @model_validator(mode="after")
    def _prompt_task(self):
        check_prompt_task(self.prompts, self.task)
        return self

    @model_validator(mode="after")
    def _labels(self) -> "EvaluateSpec":
        seen = {self.label: "label"}
        for k, s in enumerate(self.score_models):
            if s.label in seen:
                raise ValueError(f"score_models.{k}.label: {s.label!r} is already {seen[s.label]}; "
                                 "each scoring model needs its own label")
            seen[s.label] = f"score_models.{k}.label"
        return self


STAGE_SPECS: dict[str, type[StrictModel]] = {
    "generate": GenerateSpec,
    "train": TrainSpec,
    "sample": SampleSpec,
    "evaluate": EvaluateSpec,
}


def _field_errors(err: ValidationError) -> list[tuple[str, str]]:
    """pydantic's errors as (field path, reason) pairs, in its order ("" = the spec as a whole)."""
    pairs = []
    for e in err.errors():
        # Union tags ("<model>") are pydantic's bookkeeping, not keys of the spec.
        loc = ".".join(str(p) for p in e["loc"] if not (isinstance(p, str) and p.startswith("<")))
        if not loc and (m := re.match(r"(?:Value error, )?([\w.]+): (.*)", e["msg"], re.DOTALL)):
            pairs.append((m[1], m[2]))  # a cross-field check that names its own field
            continue
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check its spelling and where it is nested)"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg = e["msg"].removeprefix("Value error, ")
        pairs.append((loc, msg))
    return pairs


def validate_spec(kind: str, data: Any, source: str = "spec") -> StrictModel:
    """Validate ``data`` (a dict) as the spec of stage ``kind``; raise SpecError with field paths."""
    if kind not in STAGE_SPECS:
        raise SpecError(f"unknown stage {kind!r}; known stages: {', '.join(sorted(STAGE_SPECS))}")
    if not isinstance(data, dict):
        raise SpecError(f"a spec must be a mapping of keys to values, got {type(data).__name__}", source=source)
    try:
        return STAGE_SPECS[kind].model_validate(data)
    except ValidationError as err:
        raise SpecError(errors=_field_errors(err), source=source) from None


def read_text_file(path: Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; SpecError naming the file when it is not UTF-8 or
    cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SpecError(f"{what} {str(path)!r} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
                        f"{err.start}); save it as UTF-8") from None
    except OSError as err:
        raise SpecError(f"{what} {str(path)!r} cannot be read: {err.strerror or err}") from None


_YAML_LOADER: Any = None


def yaml_load(text: str) -> Any:
    """``yaml.safe_load`` that also reads YAML 1.2's floats without a dot (``lr: 1e-5``,
    ``5E-7``): PyYAML follows YAML 1.1, where they are strings, so a learning rate typed the
    way people write it would reach the spec as text."""
    global _YAML_LOADER
    import yaml

    if _YAML_LOADER is None:
        class SpecLoader(yaml.SafeLoader):
            pass

        SpecLoader.add_implicit_resolver(
            "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
            list("-+0123456789"))
        _YAML_LOADER = SpecLoader
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a SafeLoader subclass


def read_spec_file(path: str | Path) -> dict:
    """Parse a YAML or JSON spec file into a dict (no validation)."""
    import yaml

    p = Path(path)
    if p.is_dir():
        raise SpecError(f"spec file {str(p)!r} is a folder; name a YAML or JSON file")
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    text = read_text_file(p, "spec file")
    if not text.strip():
        raise SpecError(f"spec file {str(p)!r} is empty; write the fields to change (see sami_core/examples/), "
                        "or `{}` for every default")
    try:
        data = json.loads(text) if p.suffix == ".json" else yaml_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise SpecError(f"not valid {'JSON' if p.suffix == '.json' else 'YAML'}: {err}", source=str(p)) from None
    return {} if data is None else data


def load_spec(kind: str, path: str | Path) -> StrictModel:
    return validate_spec(kind, read_spec_file(path), source=str(path))


def spec_fingerprint(spec: BaseModel) -> str:
    """A stable hash of a validated spec (defaults filled in), used to guard run dirs."""
    launch_only = {"launch"} if "launch" in type(spec).model_fields else None  # how, not what, it trains
    canon = json.dumps(spec.model_dump(mode="json", exclude=launch_only), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def shipped_constitutions() -> list[str]:
    """The constitutions shipped with the project, as ``demo:<writer>/<k>`` names."""
    return sorted(f"demo:{q.parent.name}/{q.stem}" for q in (DATA_DIR / "constitutions").glob("*/*.json"))


def resolve_shipped(path: str, field: str = "constitution.path") -> str:
    """Resolve `demo:...` shorthands to shipped files; other paths are returned unchanged."""
    if path.startswith("demo:"):
        name = path.removeprefix("demo:")
        p = DATA_DIR / "constitutions" / f"{name}.json"
        if not p.is_file():
            shipped = ", ".join(shipped_constitutions())
            raise SpecError(f"constitution {path!r} is not shipped; shipped ones: {shipped}", path=field)
        return str(p)
    return path


def shipped_constitution_sets() -> list[str]:
    """The shipped folders of constitutions, as ``demo:<writer>`` names (a `paths` value)."""
    return sorted(f"demo:{d.name}" for d in (DATA_DIR / "constitutions").iterdir() if d.is_dir()
                  and any(d.glob("*.json")))


def resolve_shipped_folder(path: str, field: str = "constitution.paths") -> str:
    """Resolve a `demo:<writer>` folder shorthand; other paths are returned unchanged."""
    if path.startswith("demo:"):
        d = DATA_DIR / "constitutions" / path.removeprefix("demo:")
        if not d.is_dir():
            raise SpecError(f"{path!r} is no shipped folder of constitutions; shipped ones: "
                            f"{', '.join(shipped_constitution_sets())}", path=field)
        return str(d)
    return path


# ---------------------------------------------------------------------------------------
# Judging (stage `judge`) and the principle writer (stage `write_constitution`).
# ---------------------------------------------------------------------------------------
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


class LLMSpec(StrictModel):
    """An LLM reached through the `openai` client (OpenAI, Azure OpenAI, vLLM, Ollama, ...)
    or, for judging only, a local Hugging Face causal LM."""

    provider: Literal["openai", "azure", "hf", "rule"] = Field(
        "openai", description="openai = any OpenAI-compatible endpoint; azure = Azure OpenAI; hf = a local causal LM; "
                              "rule = a deterministic rule on the two responses (judging only; `model` names the "
                              "rule, e.g. concision: the demo's judge)."
    )
    model: str = Field("gpt-4o", description="Model name; the deployment name on Azure; a hub id, directory or `demo` "
                                            "for hf; the rule's name for rule (concision).")
    base_url: str | None = Field(None, description="OpenAI-compatible endpoint, e.g. http://localhost:8000/v1 (default: OpenAI's).")
    azure_endpoint: str | None = Field(None, description="Azure: https://NAME.openai.azure.com")
    api_version: str | None = Field(None, description="Azure: the API version, e.g. 2024-06-01.")
    api_key_env: str | None = Field(
        "OPENAI_API_KEY",
        description="Name of the environment variable holding the key (never the key itself); null = no key (local servers).",
    )
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(256, ge=1, description="Longest answer.")
    timeout_s: float = Field(60.0, gt=0.0, description="Per-request timeout.")
    concurrency: int = Field(16, ge=1, le=256, description="Requests in flight at once.")
    max_attempts: int = Field(6, ge=1, le=50, description="Attempts per request (429, 5xx, timeouts, connection errors).")
    backoff_initial_s: float = Field(1.0, ge=0.0, description="First retry wait; doubles per attempt (with jitter).")
    backoff_max_s: float = Field(60.0, ge=0.0, description="Longest wait between attempts, Retry-After included.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="hf only.")
    price_prompt_per_mtok: float | None = Field(
        None, ge=0.0, description="USD per million prompt tokens, for cost estimates (give both prices or neither)."
    )
    price_completion_per_mtok: float | None = Field(
        None, ge=0.0, description="USD per million completion tokens, for cost estimates."
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        import re

        if v is not None and not re.match(_ENV_NAME, v):
            raise ValueError("must be the NAME of an environment variable (e.g. OPENAI_API_KEY), never a key")
        return v

    @model_validator(mode="after")
    def _provider_fields(self) -> "LLMSpec":
        if self.provider == "azure" and not (self.azure_endpoint and self.api_version):
            raise ValueError("provider 'azure' needs `azure_endpoint` and `api_version`")
        if self.provider != "azure" and (self.azure_endpoint or self.api_version):
            raise ValueError("`azure_endpoint` and `api_version` are for provider 'azure' only")
        if self.provider != "openai" and self.base_url:
            raise ValueError("`base_url` is for provider 'openai' (any OpenAI-compatible endpoint) only")
        if not self.model.strip():
            raise ValueError("`model` is empty")
        if (self.price_prompt_per_mtok is None) != (self.price_completion_per_mtok is None):
            raise ValueError("give both `price_prompt_per_mtok` and `price_completion_per_mtok` (USD per million "
                             "tokens), or neither")
        if self.provider == "rule":
            from sami_core.judge.rules import rule_names

            if self.model not in rule_names():
                raise ValueError(f"provider 'rule': `model` names the rule, one of {', '.join(rule_names())} "
                                 f"(got {self.model!r})")
        return self


class ResponseSourceSpec(StrictModel):
    path: str = Field(..., description="A sample run directory, its responses.jsonl, or a published response .json file.")
    name: str | None = Field(None, description="Label in win-rate tables (default: the file or directory name).")
    temperature: float | None = Field(None, ge=0.0, description="Use only responses at this temperature.")


class JudgeTemplateSpec(StrictModel):
    """A judge template (see sami_core/judge/template.py). In a spec: the name of a shipped
    template (`paper`) or the path of a YAML file with system, user and answer_pattern; it
    is read and checked when the spec is validated (at submit) and kept with its text, so
    the job needs no file."""

    name: str = Field("inline", description="Where the text came from (a shipped name or a file path).")
    system: str = Field("", description="The system message ('' = none).")
    user: str = Field(..., description="The user message: {query}, {constitution}, {response_a}, {response_b}.")
    answer_pattern: str = Field(..., description="Regex whose (last) match's group names the choice: A or B.")

    @model_validator(mode="before")
    @classmethod
    def _from_file(cls, v: Any) -> Any:
        if isinstance(v, str):
            from sami_core.judge.template import read_template  # the judge package imports this module

            return read_template(v)
        return v

    @model_validator(mode="after")
    def _checked(self) -> "JudgeTemplateSpec":
        from sami_core.judge.template import check_template

        try:
            check_template(self.system, self.user, self.answer_pattern)
        except ValueError as err:  # name the file it came from
            raise ValueError(str(err) if self.name == "inline" else f"{self.name}: {err}") from None
        return self


class JudgeSpec(StrictModel):
    """Stage `judge`: pairwise judgments of candidate vs baseline responses, cached and resumable."""

    judge: LLMSpec = Field(default_factory=LLMSpec)
    candidate: ResponseSourceSpec
    baseline: ResponseSourceSpec
    task: Literal["summarization", "dialogue"] = "summarization"
    order: Literal["random", "both", "candidate_first", "baseline_first"] = Field(
        "random", description="A/B position: random per pair (seeded), both orders (reports the flip rate), or fixed."
    )
    seed: int = Field(0, description="Seeds the A/B order and the principle shuffle.")
    shuffle_principles: bool = Field(True, description="Shuffle principle order in each prompt (seeded per pair).")
    allow_tie: bool = Field(False, description="Offer 'Tie' in the prompt (the paper forces A or B).")
    parse_retries: int = Field(2, ge=0, le=10, description="Extra requests when an answer names no choice; then `invalid`.")
    limit: int | None = Field(None, ge=1, description="Judge only the first K pairs.")
    shared_cache: str | None = Field(
        None, description="A JSONL file (or a directory, holding judge-cache.jsonl) shared between judge runs."
    )
    ci: Literal["wilson", "bootstrap"] = Field("wilson", description="95% interval of the win rate.")
    template: JudgeTemplateSpec | None = Field(
        None, description="A judge template: a shipped name (`paper`: the paper's system message, a comparison "
                          "of at most 100 words, `Final Response: A|B`) or a YAML file (system, user, "
                          "answer_pattern); null = the built-in template."
    )
    unparseable: Literal["apart", "tie"] = Field(
        "apart", description="Answers with no readable choice (after parse_retries): counted apart as `invalid`, "
                             "outside the win rate, or as ties (the paper's choice)."
    )

    @model_validator(mode="after")
    def _sources(self) -> "JudgeSpec":
        if self.candidate.path == self.baseline.path and self.candidate.temperature == self.baseline.temperature:
            raise ValueError("candidate and baseline are the same responses; judge two different sources")
        if self.allow_tie and self.template is not None:
            raise ValueError("allow_tie: offers 'Tie' in the built-in template only; a template file offers a tie "
                             "in its own text and answer_pattern")
        return self


class WriteConstitutionSpec(StrictModel):
    """Stage `write_constitution`: an LLM drafts principles and their antitheses for a task."""

    writer: LLMSpec = Field(default_factory=lambda: LLMSpec(temperature=0.7, max_tokens=1024))
    task_description: str = Field(..., min_length=1, description="What the model should do, e.g. 'summarise Reddit posts'.")
    n_principles: int = Field(4, ge=1, le=20)
    name: str | None = Field(None, description="Name of the constitution (stored in the file).")
    parse_retries: int = Field(2, ge=0, le=10, description="Extra requests when the answer is no valid constitution.")


STAGE_SPECS["judge"] = JudgeSpec
STAGE_SPECS["write_constitution"] = WriteConstitutionSpec
