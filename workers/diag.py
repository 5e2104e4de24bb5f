"""The diagnostic ``sleep`` stage, for tests and benchmarks of the queue and workers.

    python -m workers.diag sleep --spec RUN_DIR/job_spec.json --run-dir RUN_DIR
    python -m workers.diag sleep --seconds 5 --exit-code 0 --run-dir RUN_DIR

It follows the stage contract (sami_core.contract): progress.json, metrics.jsonl,
outputs.json (written last, on success), exit code. It also appends one line per execution to
``RUN_DIR/executions.log`` (proof of how many times a job ran, and on which GPUs) and the pids of its
processes to ``RUN_DIR/pids.log``. (A `sleep 0` job runs inside the worker instead:
see :func:`record_inline_execution`.) Test switches: ``grandchild`` starts a process
that leaves the stage's process group (a tree that a process-group kill would miss);
``ignore_sigterm`` makes the stage and that grandchild ignore SIGTERM (so only SIGKILL
stops them); ``checkpoints`` N writes N fake checkpoints into outputs.json;
``metrics`` N logs N records; ``fail_attempts`` N applies ``exit_code`` only to the
first N executions in the run dir (a stage that succeeds when resumed); ``log_ticks``
prints a line per tick to the stage's log (``sleep: tick K/N``, flushed); ``no_outputs``
exits 0 without writing outputs.json (a stage that did not finish, as the worker sees it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sami_core.contract import METRICS_FILE, OUTPUTS_FILE, PROGRESS_FILE

EXECUTIONS_FILE = "executions.log"
PIDS_FILE = "pids.log"
INLINE_EXECUTIONS_FILE = "inline-executions.log"  # in the workspace's runs/ folder

_GRANDCHILD = (
    "import os, signal, sys, time\n"
    "os.setpgid(0, 0)  # leave the stage's process group (still in its session)\n"
    "if sys.argv[1] == '1': signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "time.sleep(float(sys.argv[2]))\n"
)


def _append(path: Path, line: str) -> None:
    # One write() on an O_APPEND file: lines from concurrent writers never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)  # atomic: readers see the old or the new file, never half


def _progress(run_dir: Path, status: str, done: int, total: int, message: str) -> None:
    _write_json(run_dir / PROGRESS_FILE, {
        "stage": "sleep", "status": status, "done": done, "total": total, "unit": "ticks",
        "message": message, "updated_at": time.time(),
    })


def runs_inline(kind: str, spec: dict[str, Any]) -> bool:
    """Whether the worker runs this job in its own process instead of a child.

    Only ``sleep`` with seconds == 0, exit_code == 0 and no test switches: it does no
    work, so a child process would measure process start-up, not the queue (see
    benchmarks/queue.py). Every other job is a real child process group."""
    return kind == "sleep" and float(spec.get("seconds", 0)) == 0 and int(spec.get("exit_code", 0)) == 0 and not (
        set(spec) - {"seconds", "exit_code"}
    )


def record_inline_execution(runs_dir: Path, job_id: int) -> None:
    """The whole of a `sleep 0` job run inside the worker (:func:`runs_inline`):
    one line ``job_id pid time`` in ``runs/inline-executions.log``. No run directory is
    made for it: creating one costs more than the queue's work on some disks."""
    _append(runs_dir / INLINE_EXECUTIONS_FILE, f"{job_id} {os.getpid()} {time.time():.6f}\n")


def count_executions(runs_dir: Path, run_dirs: dict[int, Path]) -> dict[int, int]:
    """How many times each job ran: lines of its executions.log plus its lines in the
    inline log (tests and benchmarks use this as proof of exactly-once execution)."""
    counts = {job_id: 0 for job_id in run_dirs}
    for job_id, run_dir in run_dirs.items():
        path = run_dir / EXECUTIONS_FILE
        if path.exists():
            counts[job_id] += len(path.read_text().splitlines())
    inline = runs_dir / INLINE_EXECUTIONS_FILE
    if inline.exists():
        for line in inline.read_text().splitlines():
            job_id = int(line.split()[0])
            if job_id in counts:
                counts[job_id] += 1
    return counts


def run_sleep(
    run_dir: Path,
    seconds: float = 0.0,
    exit_code: int = 0,
    *,
    grandchild: bool = False,
    ignore_sigterm: bool = False,
    checkpoints: int = 0,
    metrics: int = 0,
    fail_attempts: int | None = None,
    log_ticks: bool = False,
    no_outputs: bool = False,
) -> int:
    """Sleep ``seconds`` in ticks of 0.1 s reporting progress; return ``exit_code``
    (only on the first ``fail_attempts`` executions in this run dir, if given)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    devices = os.environ.get("CUDA_VISIBLE_DEVICES", "-")
    _append(run_dir / EXECUTIONS_FILE, f"{os.getpid()} {time.time():.6f} devices={devices}\n")
    if fail_attempts is not None and len((run_dir / EXECUTIONS_FILE).read_text().splitlines()) > fail_attempts:
        exit_code = 0  # a later execution in the same run dir: the "resumed" stage succeeds
    if ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    if grandchild:
        child = subprocess.Popen(
            [sys.executable, "-c", _GRANDCHILD, "1" if ignore_sigterm else "0", str(max(seconds, 0.0) + 600)]
        )
        pids.append(child.pid)
    _append(run_dir / PIDS_FILE, "".join(f"{p}\n" for p in pids))

    ticks = max(int(round(seconds * 10)), 0)
    step = 0
    if metrics:  # an earlier execution's records are all logged again: none twice
        (run_dir / METRICS_FILE).unlink(missing_ok=True)

    def log_metric() -> None:
        nonlocal step
        if step < metrics:
            record = {"step": step, "loss": 1.0 / (step + 1), "matrix": [[0.0, -1.0], [-1.0, 0.0]]}
            _append(run_dir / METRICS_FILE, json.dumps(record) + "\n")
            step += 1

    for i in range(ticks):
        _progress(run_dir, "running", i, ticks, f"sleeping {seconds:g} s")
        log_metric()
        if log_ticks:
            print(f"sleep: tick {i + 1}/{ticks}", flush=True)
        time.sleep(0.1)
    while step < metrics:
        log_metric()
    if exit_code != 0:
        for i in range(3):
            print(f"sleep: working line {i}", flush=True)
        print(f"sleep: failing on purpose with exit code {exit_code}", file=sys.stderr, flush=True)
        _progress(run_dir, "failed", ticks, max(ticks, 1), f"exit code {exit_code}")
        return exit_code
    outputs: dict[str, Any] = {"ticks": ticks}
    if checkpoints:
        ckpts = []
        for k in range(1, checkpoints + 1):
            path = run_dir / "checkpoints" / f"step-{k:06d}"
            path.mkdir(parents=True, exist_ok=True)
            ckpts.append({"step": k, "path": str(path.relative_to(run_dir)), "final": k == checkpoints})
        outputs["checkpoints"] = ckpts
    if not no_outputs:
        _write_json(run_dir / OUTPUTS_FILE, outputs)
    _progress(run_dir, "succeeded", max(ticks, 1), max(ticks, 1), "done")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.diag", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    p = sub.add_parser("sleep", help="sleep, report progress, exit with a given code")
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--spec", type=Path, help="job_spec.json holding the params below")
    p.add_argument("--seconds", type=float)
    p.add_argument("--exit-code", type=int)
    args = parser.parse_args(argv)
    params: dict[str, Any] = json.loads(args.spec.read_text()) if args.spec else {}
    if args.seconds is not None:
        params["seconds"] = args.seconds
    if args.exit_code is not None:
        params["exit_code"] = args.exit_code
    return run_sleep(
        args.run_dir, float(params.get("seconds", 0)), int(params.get("exit_code", 0)),
        grandchild=bool(params.get("grandchild")), ignore_sigterm=bool(params.get("ignore_sigterm")),
        checkpoints=int(params.get("checkpoints", 0)), metrics=int(params.get("metrics", 0)),
        fail_attempts=None if params.get("fail_attempts") is None else int(params["fail_attempts"]),
        log_ticks=bool(params.get("log_ticks")), no_outputs=bool(params.get("no_outputs")),
    )


if __name__ == "__main__":
    sys.exit(main())
