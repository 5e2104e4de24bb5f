"""What each job kind is: the known kinds, their spec checks, their command lines.

This is the one place that knows how a kind is run. A stage kind K runs as

    python -m sami_core K --spec RUN_DIR/job_spec.json --run-dir RUN_DIR

and ``train`` under torchrun (``python -m torch.distributed.run``, the module behind
the ``torchrun`` script, so that the worker's own interpreter is used):

    python -m torch.distributed.run --standalone --nproc_per_node=D -m sami_core train ...

with D = the number of GPUs claimed, or :data:`CPU_TRAIN_PROCS` (gloo) on a CPU-only
worker, where ``OMP_NUM_THREADS=1`` keeps the ranks from oversubscribing the cores
(:func:`stage_env`). The diagnostic ``sleep`` kind runs ``python -m workers.diag sleep``.

The worker writes the job's spec to ``RUN_DIR/job_spec.json`` and starts the command
with the workspace as its working directory, so relative paths in a spec (an
experiment's run directories and checkpoints) are relative to the workspace.

Stage exit codes: 0 = success; :data:`EXIT_BAD_INPUT` (2) = bad input (a spec, model
or data the stage refuses): failed, not retried; :data:`EXIT_TRANSIENT` (75,
``EX_TEMPFAIL``) = a transient failure, retried while the job has attempts left;
anything else = failed. (torchrun reports any failed rank as exit code 1.)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAGE_KINDS = ("write_constitution", "generate", "train", "sample", "judge")
DIAG_KINDS = ("sleep",)
KNOWN_KINDS = STAGE_KINDS + DIAG_KINDS
CPU_TRAIN_PROCS = 2
EXIT_BAD_INPUT = 2
EXIT_TRANSIENT = 75

_SLEEP_KEYS = {"seconds", "exit_code", "grandchild", "ignore_sigterm", "checkpoints", "metrics", "fail_attempts",
               "log_ticks", "no_outputs"}
_SLEEP_SWITCHES = ("grandchild", "ignore_sigterm", "log_ticks", "no_outputs")


class KindError(ValueError):
    """An unknown kind or a spec the kind cannot run; the message says what to fix."""


def validate_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Check a job's spec before it is enqueued; return it (normalised).

    ``sleep``: seconds (>= 0), exit_code (0-255), and test switches grandchild,
    ignore_sigterm, log_ticks, no_outputs (booleans), checkpoints, metrics, fail_attempts (counts; see
    workers.diag). Stage kinds: their schema in sami_core.spec (unknown keys and wrong
    types refused with ``field.path: reason``); returned with the defaults filled in,
    so the job's spec is exactly what the stage will run."""
    if kind not in KNOWN_KINDS:
        raise KindError(f"unknown job kind {kind!r}; known kinds: {', '.join(KNOWN_KINDS)}")
    if kind != "sleep":
        return _validate_stage_spec(kind, spec)
    unknown = set(spec) - _SLEEP_KEYS
    if unknown:
        raise KindError(
            f"sleep: unknown param(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_SLEEP_KEYS))}"
        )
    out = dict(spec)
    try:
        out["seconds"] = float(spec.get("seconds", 0))
        out["exit_code"] = int(spec.get("exit_code", 0))
        for k in ("checkpoints", "metrics", "fail_attempts"):
            if k in spec:
                out[k] = int(spec[k])
    except (TypeError, ValueError) as err:
        raise KindError(f"sleep: {err}") from None
    if out["seconds"] < 0:
        raise KindError("sleep: seconds must be >= 0")
    if not 0 <= out["exit_code"] <= 255:
        raise KindError("sleep: exit_code must be in 0..255")
    for k in _SLEEP_SWITCHES:
        if k in spec and not isinstance(spec[k], bool):
            raise KindError(f"sleep: {k} must be true or false")
    return out


def _validate_stage_spec(kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    from sami_core.errors import SpecError
    from sami_core.spec import STAGE_SPECS
    from sami_core.spec import validate_spec as validate_stage_spec

    if kind not in STAGE_SPECS:
        raise KindError(f"{kind}: this stage cannot run yet (sami_core has no spec schema for it); "
                        f"runnable stages: {', '.join(sorted(STAGE_SPECS))}")
    try:
        return validate_stage_spec(kind, spec, source=f"{kind} spec").model_dump(mode="json")
    except SpecError as err:
        raise KindError(str(err)) from None


def stage_env(kind: str, devices: Sequence[str]) -> dict[str, str]:
    """Environment variables a kind needs on top of the worker's (workers.launch.child_env)."""
    if kind == "train" and not devices:
        # CPU_TRAIN_PROCS ranks share the cores: one OpenMP thread each to start with
        # (the recipe sets torch's thread count from the cores per rank).
        return {"OMP_NUM_THREADS": "1"}
    return {}


def runs_inline(kind: str, spec: dict[str, Any]) -> bool:
    """Whether the worker runs this job in its own process instead of a child.

    Only ``sleep`` with seconds == 0, exit_code == 0 and no test switches: it does no
    work, so a child process would measure process start-up, not the queue (see
    benchmarks/queue.py). Every other job is a real child process group."""
    return kind == "sleep" and float(spec.get("seconds", 0)) == 0 and int(spec.get("exit_code", 0)) == 0 and not (
        set(spec) - {"seconds", "exit_code"}
    )


def build_command(
    kind: str, spec: dict[str, Any], *, spec_path: Path, run_dir: Path, devices: Sequence[str],
    python: str = sys.executable,
) -> list[str]:
    """The command line that runs one job of ``kind`` on ``devices`` (GPU ids; empty = CPU)."""
    io = ["--spec", str(spec_path), "--run-dir", str(run_dir)]
    if kind == "sleep":
        cmd = [python, "-m", "workers.diag", "sleep", *io]
        return cmd
    if kind == "train":
        nproc = len(devices) or CPU_TRAIN_PROCS
        return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                "-m", "sami_core", "train", *io]
    if kind in STAGE_KINDS:
        return [python, "-m", "sami_core", kind, *io]
    raise KindError(f"unknown job kind {kind!r}; known kinds: {', '.join(KNOWN_KINDS)}")
