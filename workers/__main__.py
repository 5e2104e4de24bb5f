"""``python -m workers`` (what ``sami worker`` runs): the worker daemon.

    python -m workers [--devices 0,1] [--kinds train,generate] [--exit-when-idle]
                      [--lease-seconds S] [--poll-interval S] [--tick-interval S] ...

It finds the workspace at ``$SAMI_HOME`` (default ``./.sami``) and the database at
``$SAMI_DATABASE_URL`` (default: the workspace's SQLite file). Exit codes: 0 = stopped
(signal, or idle with --exit-when-idle); 2 = a bad option; 1 = the database failed.
"""

from __future__ import annotations

import argparse
import logging
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
    p.add_argument("--name", help="worker name (default host:pid)")
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
    ws = Workspace.from_env()
    try:
        ws.create()
        config = WorkerConfig(
            devices=devices, kinds=kinds, lease_seconds=args.lease_seconds, poll_interval=args.poll_interval,
            tick_interval=args.tick_interval, kill_grace_s=args.kill_grace, exit_when_idle=args.exit_when_idle,
            name=args.name, stats_file=args.stats_file, allow_remote_code=args.allow_remote_code,
            retry_backoff_s=args.retry_backoff,
        )
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
