"""The ``sami`` command line: workspace, experiments, queue, worker, results.

    sami init [--no-demo-model]
    sami submit SPEC.yaml [--name N] [--dry-run] [--json]
    sami enqueue KIND [--param key=value ...] [--spec FILE] [--depends-on ID ...]
    sami jobs [--experiment ID|latest] [--json] [--check]
    sami cancel ID | sami retry ID | sami logs ID [--follow]
    sami worker [--devices 0,1] [--exit-when-idle] [--lease-seconds S]   (the daemon: python -m workers)
    sami workers [--json]
    sami import-results FILE|FOLDER... | --shipped;  sami sources
    sami judge --candidate SRC --baseline SRC [--judge-model M] [--now] ...
    sami winrates [--experiment ID] [--csv FILE]
    sami export responses|judgments|winrates|mi --out FILE.csv [--out-dir DIR]
    sami ui [--port P] [--host 127.0.0.1] [--with-worker]
    sami doctor [--executor slurm]

Every command finds the workspace at ``$SAMI_HOME`` (default ``./.sami``) and the
database at ``$SAMI_DATABASE_URL`` (default: the workspace's SQLite file); the schema
is migrated on first use. A subcommand is a handler registered with
cli.registry.command in one of the command modules.

Exit codes: 0 = done; 1 = `sami jobs --check` found jobs that did not succeed, or the
environment failed (the database, a folder that cannot be written, a write lock held
past its deadline); 2 = refused (a bad spec or argument, named with its field; nothing
was written).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sqlalchemy.exc import DBAPIError

from cli import doctor, experiments, jobs, results, training_data, worker  # noqa: F401 (each registers its commands)
from cli import workspace as workspace_commands  # noqa: F401
from cli.jobs import parse_params  # noqa: F401 (part of the command line's interface)
from cli.registry import COMMANDS, CliError, workspace
from cli.registry import engine as _engine  # noqa: F401 (tests reset its cache)
from db.engine import WriteLockTimeout
from db.queue import QueueError
from db.workspace import redacted_url
from sami_core.errors import SamiError

# The order `sami --help` lists them in.
ORDER = ("init", "submit", "enqueue", "jobs", "cancel", "retry", "logs", "worker", "workers", "import-results",
         "sources", "judge", "winrates", "export", "import-training-data", "ui", "doctor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sami", description="SAMI Workbench: queue, workers and experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in sorted(COMMANDS, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        cmd = COMMANDS[name]
        if cmd.passthrough:
            p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help, add_help=False)
            p.add_argument("rest", nargs=argparse.REMAINDER)
        else:
            cmd.configure(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS and COMMANDS[argv[0]].passthrough:
        args = argparse.Namespace(command=argv[0], rest=argv[1:])  # its own program parses the rest
    else:
        args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (CliError, QueueError, SamiError) as err:  # errors the user can act on: no traceback
        parser.exit(getattr(err, "exit_code", 2), f"sami: error: {err}\n")
    except WriteLockTimeout as err:
        parser.exit(1, f"sami: error: {err}\n")
    except BrokenPipeError:  # e.g. `sami jobs --json | head`
        sys.stderr.close()
        return 0
    except OSError as err:  # the machine: a file that cannot be read or written (last resort)
        what = f"{err.filename}: " if err.filename else ""
        parser.exit(1, f"sami: error: {what}{err.strerror or err}\n")
    except DBAPIError as err:
        where = redacted_url(workspace().database_url)
        first = str(err.orig or err).strip().splitlines()[0]
        if "readonly" in first.replace("-", "").replace(" ", "").lower():
            first += "; make the database file and its folder writable, or point SAMI_HOME at a writable workspace"
        parser.exit(1, f"sami: error: database {where}: {first}\n")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
