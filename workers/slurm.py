"""The Slurm executor: a claimed job's stage runs as a Slurm batch job, not as a child.

Why plain ``sbatch`` / ``scontrol`` / ``scancel`` and not ``submitit``: the worker
already has the stage's command line (sami_core.contract) and a run directory on the
shared file system; what it needs from Slurm is a job id, its state and exit code, and
a cancel. The command-line tools give exactly that with no extra dependency, no pickled
Python callables (a stage is a plain command anyone can rerun by hand), and they work
with any Python on the compute nodes.

What the worker submits (:func:`batch_script`, :func:`sbatch_args`):

- ``--job-name=sami-<job id>``, ``--output`` appended to ``RUN_DIR/stage.log`` (so the
  log tail and the relay work as for a local stage), ``--chdir`` the workspace,
  ``--requeue`` (a preempted or node-failed job goes back to Slurm's queue and, when
  it starts again, resumes from the run directory as every stage does), and the
  operator's ``--partition`` / ``--account`` / ``--time`` / extra arguments.
- GPUs: ``--gres=gpu:G`` per node for a job that needs G > 0 (a train job over several
  nodes needs G on each: ``devices.train``); a CPU-only job asks for no GRES (a CPU
  train job asks ``--cpus-per-task`` for its gloo ranks).
- ``train`` over K nodes: ``--nodes=K --ntasks-per-node=1``, and the script runs
  ``srun`` + ``torchrun`` on every node, all joining one c10d rendezvous at the first
  node of the allocation, with the Slurm job id as its id. One node: ``torchrun
  --standalone`` under ``srun``.

The Slurm job id is recorded in ``RUN_DIR/slurm_job.json`` (:data:`RECORD_FILE`) as soon
as ``sbatch`` answers. A worker that claims or re-adopts a job first reads that record:
a Slurm job still pending or running is watched again instead of submitted twice.

State comes from ``scontrol show job`` (the controller keeps finished jobs for
``MinJobAge``), then ``sacct`` where accounting is set up; a job neither knows is
treated as lost (failed, transient: retried).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sami_core import contract

RECORD_FILE = contract.SLURM_JOB_FILE
COMMANDS = contract.SLURM_COMMANDS
RDZV_PORT_BASE = 29400  # + job id % 1000: two multi-node jobs on one head node get different ports

# Slurm job states (squeue/scontrol spelling) that mean "not finished yet". A requeued
# job passes through REQUEUED / PENDING and runs again.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD",
    "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT", "POWER_UP_NODE",
})
# Finished states a resumed run may get past: retried as transient failures.
TRANSIENT_STATES = frozenset({"TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE"})


class SlurmError(RuntimeError):
    """A Slurm command failed; the message holds its own error line."""


@dataclass
class SlurmOptions:
    """What ``sami worker --executor slurm`` passes to every ``sbatch``."""

    partition: str | None = None
    account: str | None = None
    time: str | None = None  # Slurm's time format, e.g. 4:00:00
    qos: str | None = None
    gpus_per_node: int | None = None  # default: the job's GPUs (per node: devices.train over train_nodes)
    extra: list[str] = field(default_factory=list)  # further sbatch arguments, as given


@dataclass(frozen=True)
class SlurmState:
    state: str  # e.g. RUNNING, COMPLETED, FAILED, CANCELLED
    exit_code: int | None = None  # the batch script's exit code
    signal: int | None = None  # the signal that ended it, if any
    reason: str | None = None
    restarts: int = 0

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def missing_commands() -> list[str]:
    return [c for c in COMMANDS if shutil.which(c) is None]


# --- what is submitted ------------------------------------------------------------------------


def nodes_of(kind: str, spec: Mapping) -> int:
    """Nodes a job runs on: a train job's ``launch.nodes`` (default 1), every other kind 1."""
    if kind != "train":
        return 1
    n = (spec.get("launch") or {}).get("nodes", 1)
    return n if isinstance(n, int) and not isinstance(n, bool) and n >= 1 else 1


def sbatch_args(options: SlurmOptions, *, job_id: int, kind: str, devices_required: int, nodes: int,
                run_dir: Path, workdir: Path) -> list[str]:
    """The ``sbatch`` options of one job (the script comes on stdin)."""
    # A job's devices_required is per node (a train job over K nodes runs that many ranks on each).
    gpus = options.gpus_per_node if options.gpus_per_node is not None else devices_required
    args = [f"--job-name=sami-{job_id}", f"--output={run_dir / contract.LOG_FILE}", "--open-mode=append",
            f"--chdir={workdir}", "--requeue", "--parsable", f"--nodes={nodes}", "--ntasks-per-node=1"]
    if gpus > 0:
        args.append(f"--gres=gpu:{gpus}")
    elif kind == "train":
        args.append(f"--cpus-per-task={contract.CPU_TRAIN_PROCS}")
    for flag, value in (("partition", options.partition), ("account", options.account),
                        ("time", options.time), ("qos", options.qos)):
        if value:
            args.append(f"--{flag}={value}")
    return args + list(options.extra)


def batch_script(cmd: Sequence[str], *, kind: str, job_id: int, nodes: int, gpus: int,
                 env: Mapping[str, str]) -> str:
    """A bash script running the stage ``cmd`` (contract.build_command's line). A train
    job's torchrun is re-launched by ``srun`` on every node of the allocation; on one
    node it keeps ``--standalone``, over several it joins a c10d rendezvous at the first
    node. The script exits with the stage's exit code."""
    lines = ["#!/bin/bash", f"# sami job {job_id} ({kind}), written by `sami worker --executor slurm`"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    lines.append('echo "=== slurm job $SLURM_JOB_ID on $SLURM_JOB_NODELIST (restart ${SLURM_RESTART_COUNT:-0})"')
    if kind == "train":
        cmd = list(cmd)
        i = cmd.index("--standalone")
        if nodes > 1:  # the ranks per node stay as build_command set them
            lines.append('head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)')
            lines.append(f"port=$(({RDZV_PORT_BASE} + SLURM_JOB_ID % 1000))")
            cmd[i:i + 1] = [f"--nnodes={nodes}", "--rdzv_backend=c10d", "--rdzv_endpoint=$head:$port",
                            "--rdzv_id=sami-$SLURM_JOB_ID"]
        line = "srun --kill-on-bad-exit=1 --nodes=$SLURM_NNODES --ntasks-per-node=1 " + " ".join(
            a if a.startswith(("--rdzv_endpoint", "--rdzv_id")) else shlex.quote(a) for a in cmd)
    else:
        line = shlex.join(cmd)
    lines += [line, "rc=$?", 'echo "=== stage exit code $rc"', "exit $rc", ""]
    return "\n".join(lines)


# --- talking to Slurm ---------------------------------------------------------------------------


def _run(cmd: list[str], *, input: str | None = None, env: Mapping[str, str] | None = None,
         timeout: float = 60.0) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout,
                              env=None if env is None else dict(env))
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]}: not found on PATH (install Slurm's client commands on the worker's host)") \
            from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]}: no answer within {timeout:g} s (is slurmctld up?)") from None


def submit(script: str, args: Sequence[str], env: Mapping[str, str]) -> str:
    """``sbatch`` the script; returns the Slurm job id."""
    p = _run(["sbatch", *args], input=script, env=env)
    if p.returncode != 0:
        raise SlurmError(f"sbatch: {(p.stderr or p.stdout).strip().splitlines()[-1:] or ['failed']}"[:500])
    return p.stdout.strip().split(";")[0]  # --parsable: "id" or "id;cluster"


def cancel(slurm_id: str) -> None:
    p = _run(["scancel", slurm_id])
    if p.returncode != 0:
        raise SlurmError(f"scancel {slurm_id}: {p.stderr.strip()}")


def state(slurm_id: str) -> SlurmState | None:
    """The job's state from ``scontrol``, else ``sacct``; None when neither knows it."""
    p = _run(["scontrol", "show", "job", "-o", slurm_id])
    if p.returncode == 0 and p.stdout.strip():
        fields = dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", p.stdout.splitlines()[0]))
        code, sig = _exit(fields.get("ExitCode", ""))
        return SlurmState(fields.get("JobState", "UNKNOWN"), code, sig, fields.get("Reason"),
                          int(fields.get("Restarts", "0") or 0))
    p = _run(["sacct", "-n", "-P", "-X", "-j", slurm_id, "-o", "State,ExitCode"]) if shutil.which("sacct") else None
    if p is not None and p.returncode == 0 and p.stdout.strip():
        st, ec = (p.stdout.strip().splitlines()[-1].split("|") + [""])[:2]
        code, sig = _exit(ec)
        return SlurmState(st.split()[0], code, sig)
    return None


def _exit(text: str) -> tuple[int | None, int | None]:
    m = re.fullmatch(r"(\d+):(\d+)", text.strip())
    return (int(m[1]), int(m[2]) or None) if m else (None, None)


def wait_finished(slurm_id: str, timeout_s: float = 60.0) -> SlurmState | None:
    """Poll until the job has left the active states (or ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    st = state(slurm_id)
    while st is not None and st.active and time.monotonic() < deadline:
        time.sleep(0.5)
        st = state(slurm_id)
    return st


# --- the run directory's record ------------------------------------------------------------------


def write_record(run_dir: Path, slurm_id: str, attempt: int) -> None:
    tmp = run_dir / f".{RECORD_FILE}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"slurm_job_id": slurm_id, "attempt": attempt, "submitted_at": time.time()}))
    os.replace(tmp, run_dir / RECORD_FILE)


def read_record(run_dir: Path) -> dict | None:
    try:
        data = json.loads((run_dir / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("slurm_job_id"), str) else None
