"""The stage contract: what a stage and whoever runs it (a worker, `sami judge --now`, a
person at a shell, Slurm) agree on. Standard library only (and sami_core.errors), so
every layer may import it.

A stage kind K runs as

    python -m sami_core K --spec RUN_DIR/job_spec.json --run-dir RUN_DIR

and ``train`` under torchrun (``python -m torch.distributed.run``, the module behind the
``torchrun`` script, so that the caller's own interpreter is used):

    python -m torch.distributed.run --standalone --nproc_per_node=D -m sami_core train ...

with D = the number of GPUs given, or :data:`CPU_TRAIN_PROCS` (gloo) on CPU, where
``OMP_NUM_THREADS=1`` keeps the ranks from oversubscribing the cores (:func:`stage_env`).
The diagnostic ``sleep`` kind (the queue's own tests and benchmarks) runs
``python -m workers.diag sleep``. The caller starts the command with the workspace as its
working directory, so relative paths in a spec are relative to the workspace.

While it runs, a stage rewrites :data:`PROGRESS_FILE` atomically and appends records to
:data:`METRICS_FILE`; on success it writes :data:`OUTPUTS_FILE` (a stage that exits 0
without it has failed). Exit codes: :data:`EXIT_OK`; :data:`EXIT_BAD_INPUT` (a spec, model
or data the stage refuses: failed, not retried); :data:`EXIT_TRANSIENT` (``EX_TEMPFAIL``:
retried while attempts are left); anything else failed. torchrun reports any failed rank
as 1, so a stage that knows why it fails also writes :data:`EXIT_STATUS_FILE`
(``{"code", "reason", "rank"}``), which the caller reads.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from sami_core.errors import SamiError

# --- kinds ------------------------------------------------------------------------------------

STAGE_KINDS = ("write_constitution", "generate", "train", "sample", "judge", "evaluate")
DIAG_KINDS = ("sleep",)  # the queue's diagnostic kind (workers.diag)
KNOWN_KINDS = STAGE_KINDS + DIAG_KINDS
# The order in which an experiment's stage kinds run (what a submit checks devices for).
EXPERIMENT_KINDS = ("generate", "train", "sample", "judge", "evaluate")
CPU_TRAIN_PROCS = 2  # training ranks on a CPU-only caller (gloo)
# The Slurm client commands a worker with `--executor slurm` runs (workers.slurm; `sami doctor` checks them).
SLURM_COMMANDS = ("sbatch", "squeue", "scontrol", "scancel", "srun")

# --- exit codes -------------------------------------------------------------------------------

EXIT_OK = 0
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75  # EX_TEMPFAIL

# --- run-directory files ------------------------------------------------------------------------

JOB_SPEC_FILE = "job_spec.json"  # the spec as the caller wrote it (the stage's --spec)
SPEC_FILE = "spec.json"  # the stage's validated spec, with defaults (a resumed run must match it)
PROGRESS_FILE = "progress.json"  # {"stage", "done", "total", "unit", "message", "status", ...}
METRICS_FILE = "metrics.jsonl"  # one JSON record per line, each with a "step"
OUTPUTS_FILE = "outputs.json"  # written last, on success: what the stage produced
EXIT_STATUS_FILE = "exit_status.json"  # written by a stage that fails knowing why
LOG_FILE = "stage.log"  # the stage's stdout and stderr (written by the caller)
SLURM_JOB_FILE = "slurm_job.json"  # the Slurm job running this stage (written by a Slurm executor)
# What the stages produce (named in outputs.json too), read by other stages and by ingest.
GENERATIONS_FILE = "generations.jsonl"  # generate: every sampled response, kept or not
DATA_FILE = "data.jsonl"  # generate: the training data (kept queries)
FILTERED_FILE = "filtered.jsonl"  # generate: every response as finished, kept or not, and the filter that dropped it
RESPONSES_FILE = "responses.jsonl"  # sample: one record per (query, temperature)
JUDGMENTS_FILE = "judgments.jsonl"  # judge: one record per judgment
MI_FILE = "mi.jsonl"  # evaluate: one N×N log-prob matrix per (query, scoring model)
WINRATES_FILE = "winrates.json"  # judge: the run's own win-rate table
CONSTITUTION_FILE = "constitution.json"  # write_constitution: the drafted principles
CHECKPOINTS_DIR = "checkpoints"  # train: Hugging Face checkpoints (step-000032, ..., final)
ADAPTER_DIR = "adapter"  # train with LoRA: in each checkpoint, the adapter in peft format (beside the merged model)
FINAL_CHECKPOINT = "final"  # train: checkpoints/final links to the last one
# Files the caller writes into a run directory before the stage starts; a fresh run
# directory may already hold them.
CALLER_FILES = (JOB_SPEC_FILE, LOG_FILE, SLURM_JOB_FILE)


class KindError(SamiError, ValueError):
    """An unknown kind or a spec the kind cannot run; the message says what to fix."""


def check_kind(kind: str) -> str:
    if kind not in KNOWN_KINDS:
        raise KindError(f"unknown job kind {kind!r}; known kinds: {', '.join(KNOWN_KINDS)}")
    return kind


def build_command(kind: str, *, spec_path: Path, run_dir: Path, devices: Sequence[str],
                  python: str = sys.executable, nodes: int = 1,
                  rendezvous: tuple[str, str] | None = None, procs_per_node: int | None = None) -> list[str]:
    """The command line that runs one stage of ``kind`` on ``devices`` (GPU ids; empty = CPU).

    A train job over ``nodes`` > 1 machines runs this same line on each of them, all
    joining one c10d rendezvous ``(endpoint host:port, rendezvous id)`` instead of
    ``--standalone``; torchrun numbers the nodes as they join. ``procs_per_node``
    overrides the ranks per node (default: one per GPU, else :data:`CPU_TRAIN_PROCS`)."""
    io = ["--spec", str(spec_path), "--run-dir", str(run_dir)]
    check_kind(kind)
    if kind == "sleep":
        return [python, "-m", "workers.diag", "sleep", *io]
    if kind == "train":
        nproc = procs_per_node or len(devices) or CPU_TRAIN_PROCS
        if nodes > 1:
            if rendezvous is None:
                raise KindError(f"a train job over {nodes} nodes needs a rendezvous endpoint and id")
            where = [f"--nnodes={nodes}", "--rdzv_backend=c10d", f"--rdzv_endpoint={rendezvous[0]}",
                     f"--rdzv_id={rendezvous[1]}"]
        else:
            where = ["--standalone"]
        return [python, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}",
                "-m", "sami_core", "train", *io]
    return [python, "-m", "sami_core", kind, *io]


def stage_env(kind: str, devices: Sequence[str]) -> dict[str, str]:
    """Environment variables a kind needs on top of the caller's (sami_core.launch.child_env)."""
    if kind == "train" and not devices:
        # CPU_TRAIN_PROCS ranks share the cores: one OpenMP thread each to start with
        # (the recipe sets torch's thread count from the cores per rank).
        return {"OMP_NUM_THREADS": "1"}
    return {}


def read_exit_status(run_dir: Path) -> dict | None:
    """A failed stage's :data:`EXIT_STATUS_FILE` ({"code": int, "reason": str, "rank"}),
    or None when absent or unreadable."""
    import json

    try:
        data = json.loads((Path(run_dir) / EXIT_STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("code"), int) else None


def stage_exit_code(returncode: int, run_dir: Path) -> tuple[int, dict | None]:
    """The stage's exit code as its caller should read it, and its recorded account of
    why it failed (None on success or when it wrote none): torchrun folds a rank's
    :data:`EXIT_BAD_INPUT` or :data:`EXIT_TRANSIENT` into 1, the record keeps it."""
    if returncode == EXIT_OK:
        return returncode, None
    recorded = read_exit_status(run_dir)
    if returncode == 1 and recorded is not None and recorded["code"] in (EXIT_BAD_INPUT, EXIT_TRANSIENT):
        return recorded["code"], recorded
    return returncode, recorded
