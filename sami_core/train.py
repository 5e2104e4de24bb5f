"""The SAMI training recipe: one iteration, in one process or under torchrun with FSDP2.

Read in order: setup (process group, data, model, sharding, optimizer, resume) -> train
(optimizer steps over the generated data) -> save (HF checkpoints + resumable state) ->
cleanup. The same code runs as ``python -m sami_core train`` (one process) and as
``torchrun --nproc_per_node=K -m sami_core train`` (FSDP2: ``fully_shard`` on every
decoder layer, then the root; gloo on CPU, nccl on GPU, bf16 mixed precision on GPU).

Data order is a deterministic function of (seed, step), so the resumable state only
needs the model, the optimizer, the scheduler, the step and the RNG. A run killed and
restarted on its run directory continues from the last state to the same final step;
metrics after that state are dropped and recomputed.

With ``training.lora`` the model is wrapped with peft LoRA adapters before it is sharded
(:mod:`sami_core.lora`): only the adapters train, the KL reference is the same model with
its adapters off, checkpoints hold the merged model and ``adapter/``, and the resumable
state holds the adapters only.

Per optimizer step each process consumes ``grad_accum × queries_per_microbatch``
queries; the loss of each micro-batch is ``sami_loss(L) + beta · kl_penalty`` divided by
``grad_accum`` (FSDP averages gradients over processes).
"""

from __future__ import annotations

import json
import math
import random
from contextlib import nullcontext
import os
import shutil
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sami_core.contract import CHECKPOINTS_DIR, DATA_FILE, FINAL_CHECKPOINT, METRICS_FILE, OUTPUTS_FILE
from sami_core.errors import DataError, ModelLoadError, ModelUnreachable, TrainingDiverged, is_unreachable
from sami_core.logprobs import MatrixBatch, logprob_matrix
from sami_core.loss import kl_penalty, kl_to_reference, sami_loss
from sami_core.prompts import response_separator
from sami_core.rundir import RunDir, atomic_write_json, atomic_write_text
from sami_core.spec import ModelSpec, TrainingSpec, TrainSpec
from sami_core.stages import resolve_model_path

STATE_DIR = "state"
CHECKPOINT_DIR = CHECKPOINTS_DIR


# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------
@dataclass
class Example:
    query_id: str
    prompt_ids: list[list[int]]  # (N, P_i)
    response_ids: list[list[int]]  # (N, R_j)


def read_training_data(path: str | Path) -> list[dict]:
    """Rows of a generate stage's data.jsonl (or a directory holding one)."""
    p = Path(path)
    if p.is_dir():
        p = p / DATA_FILE
    if not p.is_file():
        raise DataError(f"data.path: {str(p)!r} does not exist; point it at a finished generate run directory")
    rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        raise DataError(f"data.path: {p} has no training queries (did every query get filtered out?)")
    n = {len(r["prompts"]) for r in rows} | {len(r["responses"]) for r in rows}
    if len(n) != 1 or min(n) < 2:
        raise DataError(f"data.path: {p}: every row needs the same N >= 2 prompts and responses; found {sorted(n)}")
    return rows


def scores_eos(append_eos: bool | str, row: dict, j: int) -> bool:
    """Whether response j of ``row`` is scored with an EOS token after it. ``auto``: only
    where generate recorded that the model ended it with its EOS (``row["eos"][j]``); a
    response cut at a stop string or at the length cap, or one whose ending is unknown (data
    without ``eos``, e.g. the paper's), is scored on its own tokens, as the paper does."""
    if append_eos == "auto":
        return bool((row.get("eos") or [False] * (j + 1))[j])
    return bool(append_eos)


def tokenize_rows(rows: list[dict], tokenizer, append_eos: bool | str) -> list[Example]:
    """Token ids of each row's training prompts and responses (prompt_i, then a separator
    and response_j: :func:`sami_core.prompts.response_separator`), EOS per :func:`scores_eos`."""
    out = []
    bos = tokenizer.bos_token
    for r in rows:
        prompt_ids, response_ids = [], []
        for prompt in r["prompts"]:
            # Chat-templated prompts already carry the BOS text; plain ones get it here.
            special = not (bos and prompt.startswith(bos))
            prompt_ids.append(tokenizer(prompt, add_special_tokens=special)["input_ids"])
        for j, (prompt, resp) in enumerate(zip(r["prompts"], r["responses"])):
            ids = tokenizer(response_separator(prompt) + resp, add_special_tokens=False)["input_ids"]
            if scores_eos(append_eos, r, j) and tokenizer.eos_token_id is not None:
                ids = ids + [tokenizer.eos_token_id]
            response_ids.append(ids)
        out.append(Example(r["query_id"], prompt_ids, response_ids))
    return out


def split_held_out(examples: list[Example], fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: ``fraction`` of them (at least one when > 0), drawn
    with ``seed``; both keep the file's order. Refuses a split that leaves nothing to train on."""
    if fraction <= 0:
        return examples, []
    n_eval = max(1, round(fraction * len(examples)))
    if n_eval >= len(examples):
        raise DataError(f"training.eval_fraction: {fraction} of {len(examples)} queries leaves none to train on; "
                        "lower it or generate more data")
    held = set(random.Random(f"held-out-{seed}").sample(range(len(examples)), n_eval))
    return ([e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held])


def example_order(n_examples: int, seed: int, start: int, count: int) -> list[int]:
    """Indices of the global example stream [start, start+count): a fresh seeded
    permutation per epoch, so the order is a pure function of (seed, position)."""
    out = []
    for pos in range(start, start + count):
        epoch, k = divmod(pos, n_examples)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n_examples, generator=g)[k]))
    return out


# ---------------------------------------------------------------------------------------
# One micro-batch
# ---------------------------------------------------------------------------------------
def batch_loss(model, batch: MatrixBatch, cfg: TrainingSpec, pad_token_id: int, reference=None):
    """Loss and metrics of one micro-batch. Returns (loss, metrics dict, L detached).

    The reference is scored first, without gradients: with LoRA it is the policy itself
    with its adapters switched off, so its forward must not fall between the policy's
    forward and backward."""
    L_ref = None
    if reference is not None and cfg.beta > 0:
        with torch.no_grad():
            L_ref = logprob_matrix(reference, batch, impl=cfg.logprob_impl, reduction=cfg.reduction,
                                   pad_token_id=pad_token_id)
    L = logprob_matrix(model, batch, impl=cfg.logprob_impl, reduction=cfg.reduction, pad_token_id=pad_token_id)
    out = sami_loss(L)  # L: (B, N, N)
    loss = out.loss
    metrics = out.metrics()
    if L_ref is not None:
        penalty = kl_penalty(L, L_ref)
        loss = loss + cfg.beta * penalty
        metrics["kl"] = float(kl_to_reference(L, L_ref).detach())
        metrics["kl_penalty"] = float(penalty.detach())
    metrics["total_loss"] = float(loss.detach())
    return loss, metrics, L.detach().float()


def lr_lambda(cfg: TrainingSpec, max_steps: int):
    def f(step: int) -> float:  # step = optimizer steps taken so far
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return 1.0
        frac = (step - cfg.warmup_steps) / max(1, max_steps - cfg.warmup_steps)
        frac = min(max(frac, 0.0), 1.0)
        return 1.0 - frac if cfg.lr_schedule == "linear" else 0.5 * (1 + math.cos(math.pi * frac))

    return f


def build_optimizer(params, cfg: TrainingSpec) -> torch.optim.Optimizer:
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def decoder_layers(model) -> list[torch.nn.Module]:
    """The repeated transformer blocks (FSDP units).

    Found by the model's own `_no_split_modules` class names (LlamaDecoderLayer,
    MistralDecoderLayer, MixtralDecoderLayer, Qwen2DecoderLayer, GemmaDecoderLayer, ...),
    matched on the class and its bases, so that a block already wrapped by `fully_shard`
    (whose class becomes FSDP<Name>) is still found. A model that names none: the
    longest `nn.ModuleList` whose entries are all of one class (`model.layers`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if any(c.__name__ in names for c in type(m).__mro__)]
    if not layers:
        stacks = [list(m) for m in model.modules() if isinstance(m, torch.nn.ModuleList)
                  and len(m) > 0 and len({type(b) for b in m}) == 1]
        layers = max(stacks, key=len, default=[])
    if not layers:
        raise ValueError(f"could not find decoder layers to shard in {type(model).__name__}")
    return layers


def _log(msg: str) -> None:
    print(f"[sami train] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The recipe
# ---------------------------------------------------------------------------------------
def _load_error(err: BaseException) -> type[ModelLoadError]:
    """ModelUnreachable (transient: the hub out of reach, the model not cached) or
    ModelLoadError (bad input: not a model, not found)."""
    return ModelUnreachable if is_unreachable(err) else ModelLoadError


def _load_rng_state(path: Path) -> "torch.Tensor":
    """A saved CPU RNG state. Loaded with ``weights_only=True``: a state file holds one
    byte tensor and nothing that could run code; anything else is refused."""
    import pickle

    try:
        state = torch.load(path, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise DataError(f"{path}: not an RNG state written by the workbench ({type(err).__name__}); "
                        "remove the run directory's state/ to start the training over") from None
    if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
        raise DataError(f"{path}: not an RNG state (a byte tensor); remove the run directory's state/ "
                        "to start the training over")
    return state


class SamiTrainer:
    def __init__(self, spec: TrainSpec, run_dir: str | Path):
        self.spec = spec
        self.cfg = spec.training
        self.run_dir_path = Path(run_dir)

    # ---- setup ---------------------------------------------------------------------------
    def setup(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        # FSDP asked for by name under torchrun shards even over one process (a one-GPU
        # node runs the same nccl + FSDP2 path as a multi-GPU one); otherwise one process
        # trains without a process group.
        launched = "TORCHELASTIC_RUN_ID" in os.environ
        self.distributed = self.world_size > 1 or (self.cfg.fsdp == "yes" and launched)
        if self.distributed and not dist.is_initialized():
            if not cuda:  # two CPU processes on a small machine: don't oversubscribe cores
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
            dist.init_process_group("nccl" if cuda else "gloo")
        self.is_main = self.rank == 0
        self.rd = RunDir(self.run_dir_path, is_writer=self.is_main)
        resumed = self.rd.open("train", self.spec)
        self._barrier()  # rank 0 has written spec.json
        use_fsdp = self.cfg.fsdp == "yes" or (self.cfg.fsdp == "auto" and self.distributed)
        if use_fsdp and not self.distributed:
            raise ValueError("training.fsdp is 'yes' but this is a single process; run under torchrun")
        self.use_fsdp = use_fsdp
        self.bf16 = self.cfg.mixed_precision == "bf16" or (self.cfg.mixed_precision == "auto" and cuda)
        if self.bf16 and not cuda and self.cfg.mixed_precision == "bf16":
            _log("bf16 mixed precision requested on CPU: it works but is slow")

        import transformers
        from transformers import AutoTokenizer

        transformers.utils.logging.disable_progress_bar()  # the log is per step, not per shard

        model_path = resolve_model_path(self.spec.model.path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=self.spec.model.trust_remote_code)
        except Exception as err:
            raise _load_error(err)(f"model.path: cannot load a tokenizer from {model_path!r} offline: {err}") from None
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else (self.tokenizer.eos_token_id or 0)
        rows = read_training_data(self.spec.data.path)
        self.examples, self.eval_examples = split_held_out(
            tokenize_rows(rows, self.tokenizer, self.cfg.append_eos), self.cfg.eval_fraction, self.cfg.seed)
        self.n = len(self.examples[0].prompt_ids)
        per_step = self.world_size * self.cfg.grad_accum * self.cfg.queries_per_microbatch
        self.queries_per_step = per_step
        self.max_steps = self.cfg.max_steps or max(1, math.ceil(self.cfg.epochs * len(self.examples) / per_step))

        self.model = self._load_model(self.spec.model, trainable=True)
        self.reference = None
        if self.cfg.beta > 0 and self.cfg.lora is not None:  # the same weights, adapters off: no second copy
            from sami_core.lora import WithoutAdapters

            self.reference = WithoutAdapters(self.model)
        elif self.cfg.beta > 0:
            self.reference = self._load_model(self.spec.reference_model or self.spec.model, trainable=False)
        self.optimizer = build_optimizer([p for p in self.model.parameters() if p.requires_grad], self.cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.cfg, self.max_steps))
        self.step = 0
        self.checkpoints: list[dict] = []
        if resumed:
            self._resume()
        if self.is_main:
            _log(f"world={self.world_size} device={self.device} fsdp={self.use_fsdp} bf16={self.bf16} "
                 f"queries={len(self.examples)} held-out={len(self.eval_examples)} N={self.n} steps={self.max_steps} "
                 f"({per_step} queries/step){' resumed at step ' + str(self.step) if self.step else ''}")

    def _load_model(self, mspec: ModelSpec, trainable: bool):
        """The model, ready to train (or frozen as the reference) on this rank.

        Under FSDP only rank 0 reads the weights: every rank builds the model on the meta
        device (no memory), shards it, allocates its own shards, and the full state dict
        is broadcast from rank 0 straight into them. So a node with K ranks holds the full
        model in host memory once, not K times (a 7B model in fp32 is 28 GB per copy)."""
        path = resolve_model_path(mspec.path)
        dtype = {"auto": torch.float32, "float32": torch.float32, "bfloat16": torch.bfloat16,
                 "float16": torch.float16}[mspec.dtype]  # master weights: fp32 unless asked
        lora = self.cfg.lora if trainable else None
        adapter = None
        if lora is not None:
            path, adapter = self._lora_source(path)
        if not self.use_fsdp:
            model = self._prepare(self._from_pretrained(path, dtype, mspec), trainable)
            if lora is not None:
                model = self._with_adapter(model, path, adapter)
            return model.to(self.device)

        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        loaded = self._from_pretrained(path, dtype, mspec) if self.is_main else None
        model = self._prepare(self._on_meta(path, dtype, mspec), trainable)
        if lora is not None:  # the same adapter layers on every rank; their values come from rank 0
            loaded = self._with_adapter(loaded, path, adapter) if self.is_main else None
            model = self._with_adapter(model, path, None)
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if self.bf16 else MixedPrecisionPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)  # root: embeddings, final norm, lm_head
        model.to_empty(device=self.device)  # this rank's shards (and buffers), uninitialised
        set_model_state_dict(model, loaded.state_dict() if self.is_main else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        # Buffers outside the state dict (e.g. the rotary inv_freq) come from rank 0's copy.
        for name, buf in model.named_buffers():
            if self.is_main:
                buf.copy_(loaded.get_buffer(name))
            dist.broadcast(buf, src=0)
        del loaded
        return model

    def _lora_source(self, path: str) -> tuple[str, Path | None]:
        """(the model to put adapters on, the adapter to continue or None). With
        ``continue_adapter`` and a LoRA checkpoint as model.path: its adapter, on the base
        model it was trained on; otherwise a fresh adapter on model.path itself (for a LoRA
        checkpoint, its merged model)."""
        from sami_core.lora import adapter_base, adapter_dir

        adapter = adapter_dir(path) if self.cfg.lora.continue_adapter else None
        if adapter is None:
            if self.cfg.lora.continue_adapter and self.is_main:
                _log(f"{path} holds no adapter/: training a fresh adapter on it")
            return path, None
        base = adapter_base(adapter)
        if self.is_main:
            _log(f"continuing the adapter of {path} on its base model {base}")
        return resolve_model_path(base), adapter

    def _with_adapter(self, model, base_path: str, adapter: Path | None):
        """``model`` with LoRA adapters (peft): fresh (seeded by training.seed) or, when
        ``adapter`` is given, holding that adapter's weights. Only the adapters train."""
        from sami_core.lora import add_adapter, load_adapter_weights, scalings

        wrapped = add_adapter(model, self.cfg.lora, self.cfg.seed)
        # Recorded in adapter/ for continue_adapter: a local folder as an absolute path.
        recorded = os.path.abspath(base_path) if Path(base_path).is_dir() else base_path
        wrapped.peft_config["default"].base_model_name_or_path = recorded
        if adapter is not None:
            load_adapter_weights(wrapped, adapter)
        self.lora_scale = scalings(wrapped)
        if self.is_main and model.device.type != "meta":
            n_train = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
            n_all = sum(p.numel() for p in wrapped.parameters())
            _log(f"LoRA r={self.cfg.lora.r} alpha={self.cfg.lora.alpha} on {len(self.lora_scale)} layers: "
                 f"{n_train} of {n_all} parameters train ({100 * n_train / n_all:.2f}%)")
        return wrapped

    def _prepare(self, model, trainable: bool):
        """Training or frozen mode, no KV cache, activation checkpointing if asked."""
        self.save_dtype = getattr(model.config, "dtype", None) or torch.float32
        model.config.use_cache = False
        if trainable:
            model.train()
            if self.cfg.activation_checkpointing:
                enable = getattr(model, "activation_checkpointing_enable", None)  # transformers >= 5.x
                if enable is not None:
                    enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.eval()
            model.requires_grad_(False)
        return model

    def _from_pretrained(self, path: str, dtype: torch.dtype, mspec: ModelSpec):
        from transformers import AutoModelForCausalLM

        # Every rank says where its weights come from (the tests check that under FSDP
        # only rank 0 reads them): the only place the recipe reads weight files is here.
        _log(f"rank {self.rank}: reading the weights of {path}")
        try:
            return AutoModelForCausalLM.from_pretrained(
                path, dtype=dtype, attn_implementation="sdpa", trust_remote_code=mspec.trust_remote_code
            )
        except Exception as err:
            raise _load_error(err)(
                f"model.path: cannot load {path!r} offline ({type(err).__name__}: {err}). Give a local "
                "directory or a hub id already in the local cache"
            ) from None

    def _on_meta(self, path: str, dtype: torch.dtype, mspec: ModelSpec):
        """The model's architecture with no storage (parameters on the meta device)."""
        from transformers import AutoConfig, AutoModelForCausalLM

        try:
            config = AutoConfig.from_pretrained(path, trust_remote_code=mspec.trust_remote_code)
        except Exception as err:
            raise _load_error(err)(f"model.path: cannot read the config of {path!r} offline "
                                 f"({type(err).__name__}: {err})") from None
        if not self.is_main:
            _log(f"rank {self.rank}: building the model on the meta device; its shards come from rank 0")
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa",
                                                    trust_remote_code=mspec.trust_remote_code)

    # ---- checkpoints -----------------------------------------------------------------------
    def _state_dirs(self) -> list[Path]:
        d = self.run_dir_path / STATE_DIR
        return sorted(p for p in d.glob("step-*") if (p / "COMPLETE").exists()) if d.exists() else []

    def _resume(self) -> None:
        from torch.distributed.checkpoint.state_dict import set_state_dict
        import torch.distributed.checkpoint as dcp

        states = self._state_dirs()
        if not states:  # a fresh start: metrics of an earlier attempt are all recomputed
            if self.is_main and (self.rd / METRICS_FILE).exists():
                atomic_write_text(self.rd / METRICS_FILE, "")
            return
        last = states[-1]
        msd, osd = self._resumable_state()
        state = {"model": msd, "optim": osd}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            dcp.load(state, checkpoint_id=str(last), no_dist=not self.distributed)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=self._state_options())
        meta = json.loads((last / "trainer.json").read_text())
        self.step = meta["step"]
        self.scheduler.load_state_dict(meta["scheduler"])
        self.checkpoints = meta["checkpoints"]
        rng = last / f"rng-rank{self.rank}.pt"
        if rng.exists():
            torch.set_rng_state(_load_rng_state(rng))
        if self.is_main:  # drop metrics of steps after the state; they are recomputed
            kept = [m for m in self.rd.read_metrics() if m["step"] <= self.step]
            atomic_write_text(self.rd / METRICS_FILE, "".join(json.dumps(m) + "\n" for m in kept))
            _log(f"resuming from {last.name}")

    def _state_options(self):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions() if self.cfg.lora is None else StateDictOptions(ignore_frozen_params=True, strict=False)

    def _resumable_state(self) -> tuple[dict, dict]:
        """(model, optimizer) state dicts of the resumable state: every weight, or with LoRA
        the adapters only (the frozen base is read again from model.path), so a 70B run's
        state stays small. A tied head, which is no parameter of its own, is left out too."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        msd, osd = get_state_dict(self.model, self.optimizer, options=self._state_options())
        if self.cfg.lora is not None:
            trainable = {n for n, p in self.model.named_parameters() if p.requires_grad}
            msd = {k: v for k, v in msd.items() if k in trainable}
        return msd, osd

    def save(self, final: bool) -> None:
        """HF-format checkpoint (full state dict, rank 0) + resumable state (all ranks)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        import torch.distributed.checkpoint as dcp

        name = f"step-{self.step:06d}"
        # 1. HF checkpoint: gather the full state dict on rank 0, on the CPU.
        full = get_model_state_dict(
            self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        ckpt = self.run_dir_path / CHECKPOINT_DIR / name
        if self.is_main:
            tmp = ckpt.with_name(f".tmp-{name}")
            shutil.rmtree(tmp, ignore_errors=True)
            if self.cfg.lora is None:
                sd = {k: v.to(self.save_dtype) if v.is_floating_point() else v for k, v in full.items()}
                self.model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
            else:
                self._save_lora(tmp, full)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(ckpt, ignore_errors=True)
            os.replace(tmp, ckpt)
            if final:  # a stable name for the next iteration: checkpoints/final -> step-<N>
                link = ckpt.with_name(FINAL_CHECKPOINT)
                tmp_link = ckpt.with_name(".tmp-final")
                tmp_link.unlink(missing_ok=True)
                tmp_link.symlink_to(name, target_is_directory=True)
                os.replace(tmp_link, link)
        del full
        self.checkpoints = [c for c in self.checkpoints if c["step"] != self.step]
        self.checkpoints.append({"step": self.step, "path": str(ckpt), "final": final})
        # 2. Resumable state: sharded model + optimizer (every rank writes its shard).
        state_root = self.run_dir_path / STATE_DIR
        tmp_state = state_root / f".tmp-{name}"
        if self.is_main:
            shutil.rmtree(tmp_state, ignore_errors=True)
            tmp_state.mkdir(parents=True)
        self._barrier()
        msd, osd = self._resumable_state()
        with warnings.catch_warnings():  # single process: dcp warns that it saves without a group
            warnings.simplefilter("ignore", UserWarning)
            dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp_state), no_dist=not self.distributed)
        torch.save(torch.get_rng_state(), tmp_state / f"rng-rank{self.rank}.pt")
        self._barrier()
        if self.is_main:
            atomic_write_json(tmp_state / "trainer.json", {
                "step": self.step, "scheduler": self.scheduler.state_dict(), "checkpoints": self.checkpoints,
                "max_steps": self.max_steps, "world_size": self.world_size,
            })
            (tmp_state / "COMPLETE").write_text("ok\n")
            final_dir = state_root / name
            shutil.rmtree(final_dir, ignore_errors=True)
            os.replace(tmp_state, final_dir)
            for old in self._state_dirs()[:-1]:  # keep the newest resumable state only
                shutil.rmtree(old, ignore_errors=True)
            _log(f"saved {ckpt}")
        self._barrier()

    def _save_lora(self, ckpt: Path, full: dict) -> None:
        """A LoRA checkpoint (rank 0): the merged model in Hugging Face format at ``ckpt``
        (what the other stages load) and the adapter in peft format in ``ckpt/adapter``."""
        from sami_core.contract import ADAPTER_DIR
        from sami_core.lora import merged_state_dict

        merged = merged_state_dict(full, self.lora_scale)
        sd = {k: v.to(self.save_dtype) if v.is_floating_point() else v for k, v in merged.items()}
        self.model.get_base_model().save_pretrained(ckpt, state_dict=sd, safe_serialization=True)
        self.model.save_pretrained(ckpt / ADAPTER_DIR, state_dict=full, safe_serialization=True,
                                   save_embedding_layers=False)

    # ---- train -----------------------------------------------------------------------------
    def _microbatches(self, step: int) -> list[MatrixBatch]:
        """This rank's micro-batches for optimizer step `step` (0-based)."""
        q, a, w = self.cfg.queries_per_microbatch, self.cfg.grad_accum, self.world_size
        start = step * self.queries_per_step
        idx = example_order(len(self.examples), self.cfg.seed, start, self.queries_per_step)
        out = []
        for k in range(a):
            lo = (k * w + self.rank) * q
            exs = [self.examples[i] for i in idx[lo : lo + q]]
            out.append(MatrixBatch([e.prompt_ids for e in exs], [e.response_ids for e in exs]))
        return out

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The SAMI loss and its metrics on the held-out queries, without gradients, as
        ``eval_<metric>`` (means over queries). Every rank scores its share, one query per
        forward; under FSDP every rank must run as many forwards as the others, so a rank
        with fewer queries repeats one with weight 0."""
        per_rank = math.ceil(len(self.eval_examples) / self.world_size)
        mine = self.eval_examples[self.rank * per_rank:(self.rank + 1) * per_rank]
        sums: dict[str, float] = {}
        count = 0.0
        for k in range(per_rank):
            ex, weight = (mine[k], 1.0) if k < len(mine) else (self.eval_examples[0], 0.0)
            _, metrics, _ = batch_loss(self.model, MatrixBatch([ex.prompt_ids], [ex.response_ids]), self.cfg,
                                       self.pad_id)
            for name, value in metrics.items():
                if name in ("loss", "mi_lower_bound", "row_accuracy", "col_accuracy"):
                    sums[name] = sums.get(name, 0.0) + weight * value
            count += weight
        if self.distributed:
            keys = sorted(sums)
            t = torch.tensor([sums[k] for k in keys] + [count], dtype=torch.float64, device=self.device)
            dist.all_reduce(t)
            sums, count = dict(zip(keys, t[:-1].tolist())), float(t[-1])
        return {f"eval_{k}": v / count for k, v in sums.items()}

    def _evaluates_at(self, step: int) -> bool:
        """Whether the held-out queries are scored after optimizer step ``step`` (0 = before the first)."""
        if not self.eval_examples:
            return False
        if step == 0:
            return self.cfg.eval_before_training
        every = self.cfg.eval_every
        return step == self.max_steps or (every is not None and step % every == 0)

    def _reduce_mean(self, values: dict[str, float]) -> dict[str, float]:
        if not self.distributed:
            return values
        keys = sorted(values)
        t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world_size for k, v in zip(keys, t.tolist())}

    def _last_good(self) -> str:
        return self.checkpoints[-1]["path"] if self.checkpoints else "none (the base model is unchanged)"

    def train(self) -> dict:
        cfg = self.cfg
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if (self.bf16 and not self.use_fsdp) else None
        self.rd.progress("train", self.step, self.max_steps, "steps", "training")
        if self.step == 0 and self._evaluates_at(0):
            before = self.evaluate()
            self.rd.append_metrics({"step": 0, **before, "time": time.time()})
            if self.is_main:
                _log(f"step 0 (before training) eval_loss {before['eval_loss']:.4f} "
                     f"eval_mi {before['eval_mi_lower_bound']:.4f}")
        while self.step < self.max_steps:
            t0 = time.perf_counter()
            sums: dict[str, float] = {}
            matrix = torch.zeros(self.n, self.n)
            tokens = 0
            for mb in self._microbatches(self.step):
                with autocast if autocast is not None else nullcontext():
                    loss, metrics, L = batch_loss(self.model, mb, cfg, self.pad_id, self.reference)
                (loss / cfg.grad_accum).backward()
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + v / cfg.grad_accum
                matrix += L.mean(0).cpu() / cfg.grad_accum
                tokens += sum(len(p) for ps in mb.prompt_ids for p in ps) + sum(
                    len(r) for rs in mb.response_ids for r in rs)
            reduced = self._reduce_mean({**sums, "tokens": float(tokens)})
            if not math.isfinite(reduced["total_loss"]):
                raise TrainingDiverged(
                    f"loss became {reduced['total_loss']} at step {self.step + 1}; the weights were not updated. "
                    f"Last good checkpoint: {self._last_good()}. Lower training.lr or enable clip_grad_norm"
                )
            grad_norm = None
            if cfg.clip_grad_norm is not None:
                gn = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
                grad_norm = float(gn.full_tensor() if hasattr(gn, "full_tensor") else gn)
            lr = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            if self.distributed:
                matrix = matrix.to(self.device)
                dist.all_reduce(matrix)
                matrix = matrix.cpu() / self.world_size
            dt = time.perf_counter() - t0
            held_out = self.evaluate() if self._evaluates_at(self.step) else {}
            record = {"step": self.step, **{k: v for k, v in reduced.items() if k != "tokens"}, **held_out,
                      "lr": lr, "grad_norm": grad_norm, "tokens_per_s": reduced["tokens"] * self.world_size / dt,
                      "step_time_s": dt, "matrix": [[round(x, 5) for x in row] for row in matrix.tolist()],
                      "time": time.time()}
            self.rd.append_metrics(record)
            self.rd.progress("train", self.step, self.max_steps, "steps", f"loss {reduced['loss']:.4f}")
            if self.is_main:
                _log(f"step {self.step}/{self.max_steps} loss {reduced['loss']:.4f} "
                     f"mi {reduced['mi_lower_bound']:.4f} acc {reduced['row_accuracy']:.2f} {dt:.2f}s")
            if self.step % cfg.save_every == 0 or self.step == self.max_steps:
                self.save(final=self.step == self.max_steps)
        outputs = {"checkpoints": self.checkpoints, "final_checkpoint": self.checkpoints[-1]["path"],
                   "steps": self.max_steps, "world_size": self.world_size}
        self.rd.progress("train", self.step, self.max_steps, "steps", "done", "succeeded")
        self.rd.write_outputs(outputs)
        return outputs

    # ---- cleanup ---------------------------------------------------------------------------
    def _barrier(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.barrier()

    def cleanup(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def run_train(spec: TrainSpec, run_dir: str | Path) -> dict:
    done = RunDir(run_dir).outputs() if (Path(run_dir) / OUTPUTS_FILE).exists() else None
    trainer = SamiTrainer(spec, run_dir)
    try:
        trainer.setup()
        if done and trainer.step >= trainer.max_steps:
            if trainer.is_main:
                _log(f"{run_dir} is already complete")
            outputs = done
        else:
            outputs = trainer.train()
        trainer._barrier()  # every rank is done before the group is torn down
        return outputs
    finally:
        trainer.cleanup()
