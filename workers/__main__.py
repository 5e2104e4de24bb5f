"""``python -m workers`` (what ``sami worker`` runs): the worker daemon.

    python -m workers [--devices 0,1] [--kinds train,generate] [--exit-when-idle]
                      [--lease-seconds S] [--poll-interval S] [--tick-interval S] ...
                      [--executor slurm [--partition P] [--account A] [--time T] ...]

It finds the workspace at ``$SAMI_HOME`` (default ``./.sami``) and the database at
``$SAMI_DATABASE_URL`` (default: the workspace's SQLite file). Exit codes: 0 = stopped
(signal, or idle with --exit-when-idle); 2 = a bad option; 1 = the database failed.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sami worker", description="Run a worker daemon: claim jobs and run them.")
    p.add_argument("--devices", help="GPU ids this worker uses, e.g. 0,1 ('' = CPU only; "
                                     "default: $CUDA_VISIBLE_DEVICES, else all GPUs nvidia-smi lists)")
    p.add_argument("--kinds", help="only claim these job kinds, e.g. train,generate (default: all)")
    p.add_argument("--exit-when-idle", action="store_true",
                   help="exit once no job it could run is queued or running")
    p.add_argument("--lease-seconds", type=float, default=60.0,
                   help="a job is requeued if its worker misses heartbeats this long (default 60)")
    p.add_argument("--poll-interval", type=float, default=0.5, help="idle seconds between claims")
    p.add_argument("--tick-interval", type=float, default=1.0,
                   help="seconds between heartbeats / progress relays while a job runs")
    p.add_argument("--kill-grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--allow-remote-code", action="store_true",
                   help="run jobs whose spec sets trust_remote_code: true (model code from the hub runs on "
                        "this machine); without it such jobs fail with a message saying so")
    p.add_argument("--retry-backoff", type=float, default=30.0,
                   help="seconds before a transiently failed job (exit 75: endpoint unreachable, timeout, rate "
                        "limit, hub offline) may run again; doubles per attempt, at most 600 (default 30)")
    s = p.add_argument_group("executor", "where a claimed job's stage runs")
    s.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="local: a child process on this host (default); slurm: a Slurm batch job submitted "
                        "with sbatch (this host only claims, watches and relays; the run directories must be "
                        "on a file system the compute nodes share, at the same path)")
    s.add_argument("--partition", help="slurm: sbatch --partition")
    s.add_argument("--account", help="slurm: sbatch --account")
    s.add_argument("--time", help="slurm: sbatch --time, e.g. 4:00:00 (a job that runs out of time is retried "
                                  "and resumes from its run directory)")
    s.add_argument("--qos", help="slurm: sbatch --qos")
    s.add_argument("--gpus-per-node", type=int, help="slurm: --gres=gpu:N per node (default: the GPUs the job "
                                                     "needs on each node)")
    s.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="slurm: one more sbatch argument, e.g. --sbatch-arg=--constraint=a100 (repeatable)")
    p.add_argument("--name", help="worker name (default host:pid; with --executor slurm host:slurm, the name a "
                                  "restarted worker adopts its running Slurm jobs by)")
    p.add_argument("--stats-file", type=Path, help="write claim latencies here on exit (benchmarks)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import DBAPIError

    from db.engine import DatabaseUrlError, open_database
    from db.workspace import Workspace, redacted_url
    from sami_core.contract import KNOWN_KINDS
    from workers.daemon import Worker, WorkerConfig, detect_devices

    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # e.g. `python -m workers submit spec.yaml`
        parser.exit(2, f"sami worker: error: {argv[0]!r} is no worker option: this is the worker daemon; "
                       f"the command line is `sami {argv[0]} ...` (or `python -m cli {argv[0]} ...`)\n")
    args = parser.parse_args(argv)
    if not 0 <= args.retry_backoff < float("inf"):
        parser.exit(2, "sami worker: error: --retry-backoff must be a number of seconds >= 0\n")
    if args.lease_seconds <= 0 or args.tick_interval <= 0:
        parser.exit(2, "sami worker: error: --lease-seconds and --tick-interval must be > 0\n")
    if args.tick_interval * 3 > args.lease_seconds:
        parser.exit(2, "sami worker: error: --lease-seconds must be at least 3 x --tick-interval "
                       "(heartbeats renew the lease)\n")
    kinds = None
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(KNOWN_KINDS))
        if unknown:
            parser.exit(2, f"sami worker: error: --kinds: unknown kind(s) {', '.join(unknown)}; "
                           f"known: {', '.join(KNOWN_KINDS)}\n")
    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        parser.exit(2, f"sami worker: error: --log-level {args.log_level!r}: use DEBUG, INFO, WARNING or ERROR\n")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    devices = detect_devices() if args.devices is None else [d.strip() for d in args.devices.split(",")
                                                             if d.strip() and d.strip() != "cpu"]
    bad = [d for d in devices if not (d.isdigit() or d.startswith(("GPU-", "MIG-")))]
    if bad or len(set(devices)) != len(devices):
        what = f"{', '.join(map(repr, bad))} is no GPU id" if bad else "a GPU is listed twice"
        parser.exit(2, f"sami worker: error: --devices {args.devices!r}: {what}; give GPU indices such as 0,1 "
                       f"(or GPU-/MIG- UUIDs; '' = CPU only)\n")
    if args.executor == "slurm":
        from workers.slurm import SlurmOptions, missing_commands

        if missing := missing_commands():
            parser.exit(2, f"sami worker: error: --executor slurm: {', '.join(missing)} not found on PATH; "
                           "install Slurm's client commands here (or run `sami doctor --executor slurm`)\n")
        if args.gpus_per_node is not None and args.gpus_per_node < 0:
            parser.exit(2, "sami worker: error: --gpus-per-node must be >= 0\n")
        if args.devices is None:
            devices = []  # Slurm allocates the GPUs, not this host
        bad_arg = [a for a in args.sbatch_arg if not a.startswith("-")]
        if bad_arg:
            parser.exit(2, f"sami worker: error: --sbatch-arg {bad_arg[0]!r}: give an sbatch option such as "
                           "--sbatch-arg=--constraint=a100\n")
        slurm_options = SlurmOptions(partition=args.partition, account=args.account, time=args.time, qos=args.qos,
                                     gpus_per_node=args.gpus_per_node, extra=list(args.sbatch_arg))
    else:
        given = [f for f in ("partition", "account", "time", "qos", "gpus_per_node") if getattr(args, f) is not None]
        if given or args.sbatch_arg:
            flag = "--" + (given[0] if given else "sbatch_arg").replace("_", "-")
            parser.exit(2, f"sami worker: error: {flag} is a Slurm option: add --executor slurm\n")
        slurm_options = None
    name = args.name or (f"{socket.gethostname()}:slurm" if args.executor == "slurm" else None)
    ws = Workspace.from_env()
    try:
        ws.create()
        config = WorkerConfig(
            devices=devices, kinds=kinds, lease_seconds=args.lease_seconds, poll_interval=args.poll_interval,
            tick_interval=args.tick_interval, kill_grace_s=args.kill_grace, exit_when_idle=args.exit_when_idle,
            name=name, stats_file=args.stats_file, allow_remote_code=args.allow_remote_code,
            retry_backoff_s=args.retry_backoff, executor=args.executor,
        )
        if slurm_options is not None:
            config.slurm = slurm_options
        return Worker(open_database(ws.database_url), ws, config, database_url=ws.database_url).run()
    except DBAPIError as err:
        first = str(err.orig or err).strip().splitlines()[0]
        parser.exit(1, f"sami worker: error: database {redacted_url(ws.database_url)}: {first}\n")
    except DatabaseUrlError as err:
        parser.exit(2, f"sami worker: error: SAMI_DATABASE_URL: {err}\n")
    except OSError as err:  # the workspace or database folder cannot be created or written
        parser.exit(1, f"sami worker: error: {err.filename or ws.home}: {err.strerror or err}; point SAMI_HOME "
                       f"(or SAMI_DATABASE_URL) at a writable folder\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
