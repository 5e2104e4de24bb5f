"""``sami doctor``: can this machine be a worker? One line per check.

    ok    workspace   /shared/sami (writable)
    ok    database    sqlite:////shared/sami/sami.db: reachable, schema at 0007 (current)
    ok    torch       2.13.0, torchrun present
    info  gpus        0 visible to torch (CPU worker: train runs 2 gloo ranks)
    FAIL  slurm       sbatch, srun not found on PATH (needed for --executor slurm)

Checks: the workspace (``$SAMI_HOME``: a writable folder; on a cluster, the shared one),
the database (``$SAMI_DATABASE_URL``: reachable, its schema at this code's migration
head; one that is behind is brought up to date by the first worker or command), torch
and torchrun in this Python (asked in a child process: the CLI imports no torch), the
GPUs torch sees, and with ``--executor slurm`` the Slurm client commands and the
controller (``scontrol ping``). Exit code 0 when everything a worker needs is there;
otherwise the first problem's code (1: the machine; 2: a setting), named on stderr.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from cli.registry import CliError, EnvironmentProblem, checked_database_url, command, workspace
from db.engine import make_engine
from db.migrations import HEAD, current_revision
from db.workspace import redacted_url
from sami_core.contract import CPU_TRAIN_PROCS, SLURM_COMMANDS

_TORCH_PROBE = """
import importlib.util, json
r = {"torchrun": importlib.util.find_spec("torch.distributed.run") is not None}
try:
    import torch
    r.update(version=torch.__version__, gpus=torch.cuda.device_count(), dist=torch.distributed.is_available())
except Exception as err:
    r["error"] = f"{type(err).__name__}: {err}"
print(json.dumps(r))
"""


def _configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="the executor the worker will use: slurm also checks Slurm's commands and controller")


class _Report:
    def __init__(self) -> None:
        self.problem: CliError | None = None

    def line(self, status: str, name: str, text_: str) -> None:
        print(f"{status:<5} {name:<10} {text_}", flush=True)

    def fail(self, name: str, err: CliError) -> None:
        self.line("FAIL", name, str(err))
        self.problem = self.problem or err


@command("doctor", "check that this machine can run a worker: workspace, database, torch, GPUs, Slurm", _configure)
def cmd_doctor(args: argparse.Namespace) -> int:
    r = _Report()
    try:
        ws = workspace(create=True)
        r.line("ok", "workspace", f"{ws.home} (writable)")
    except CliError as err:
        r.fail("workspace", err)
    if r.problem is None:
        _check_database(r)
    _check_torch(r)
    _check_slurm(r, required=args.executor == "slurm")
    if r.problem is not None:
        raise r.problem
    return 0


def _check_database(r: _Report) -> None:
    try:
        url = checked_database_url()
    except CliError as err:
        r.fail("database", err)
        return
    where = redacted_url(url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
            rev = current_revision(conn)
    except DBAPIError as err:
        first = str(err.orig or err).strip().splitlines()[0]
        r.fail("database", EnvironmentProblem(f"database {where}: not reachable: {first}; check SAMI_DATABASE_URL, "
                                              "the server and the network"))
        return
    finally:
        engine.dispose()
    if rev == HEAD:
        r.line("ok", "database", f"{where}: reachable, schema at {rev} (current)")
    elif rev is None or rev < HEAD:
        r.line("ok", "database", f"{where}: reachable, schema at {rev or 'none'} (behind {HEAD}: migrated by the "
                                 "first worker or command that opens it)")
    else:
        r.fail("database", EnvironmentProblem(
            f"database {where}: schema at {rev}, newer than this code's {HEAD}; upgrade sami on this machine"))


def _check_torch(r: _Report) -> None:
    try:
        out = subprocess.run([sys.executable, "-c", _TORCH_PROBE], capture_output=True, text=True, timeout=300)
        probe = json.loads(out.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError) as err:
        probe = {"error": f"the probe failed ({err})", "torchrun": False}
    if "error" in probe:
        r.fail("torch", EnvironmentProblem(f"torch: not importable in {sys.executable}: {probe['error']}; "
                                           "install the worker's dependencies (pip install -e .)"))
        return
    if not probe.get("torchrun") or not probe.get("dist"):
        r.fail("torch", EnvironmentProblem(f"torch {probe['version']}: torch.distributed / torchrun missing; "
                                           "install a torch build with distributed support"))
        return
    r.line("ok", "torch", f"{probe['version']}, torchrun present")
    gpus = probe.get("gpus", 0)
    r.line("info", "gpus", f"{gpus} visible to torch" if gpus else
           f"0 visible to torch (CPU worker: train runs {CPU_TRAIN_PROCS} gloo ranks)")


def _check_slurm(r: _Report, *, required: bool) -> None:
    missing = [c for c in SLURM_COMMANDS if shutil.which(c) is None]
    if not required:
        r.line("info", "slurm", "not needed (local executor); " + (
            f"{', '.join(missing)} not found" if missing else "its commands are present"))
        return
    if missing:
        r.fail("slurm", EnvironmentProblem(f"slurm: {', '.join(missing)} not found on PATH; install Slurm's client "
                                           "commands (Debian: slurm-client) to use --executor slurm"))
        return
    try:
        p = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        said = (p.stdout or p.stderr).strip().splitlines()
        up = p.returncode == 0 and "UP" in p.stdout
    except (OSError, subprocess.SubprocessError) as err:
        said, up = [str(err)], False
    if not up:
        r.fail("slurm", EnvironmentProblem(f"slurm: the controller does not answer `scontrol ping` "
                                           f"({said[0] if said else 'no output'}); check SLURM_CONF and slurmctld"))
        return
    r.line("ok", "slurm", f"{', '.join(SLURM_COMMANDS)} present; {said[0]}")
