"""``sami worker`` (the daemon, which runs as ``python -m workers``) and ``sami workers``."""

from __future__ import annotations

import argparse
import json
import os
import sys

from cli.registry import age, command, row_dict, tx
from db.reads.jobs import all_workers


@command("worker", "run a worker daemon: claim jobs and run them (`sami worker --help` lists its options)",
         passthrough=True)
def cmd_worker(args: argparse.Namespace) -> int:
    """The daemon is its own program (workers/): this process becomes it, so signals
    (Ctrl-C, SIGTERM from a service manager) reach the daemon itself."""
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [sys.executable, "-m", "workers", *args.rest]
    os.execv(sys.executable, argv)
    return 0  # not reached


@command("workers", "list registered workers", lambda p: p.add_argument("--json", action="store_true"))
def cmd_workers(args: argparse.Namespace) -> int:
    rows = tx(all_workers, write=False)
    if args.json:
        print(json.dumps([row_dict(r) for r in rows], indent=1))
        return 0
    for r in rows:
        print(f"{r.id:>4}  {r.status:<8} {r.name:<30} devices={','.join(r.devices) or 'cpu'}  "
              f"last seen {age(r.last_seen_at)} ago")
    return 0
