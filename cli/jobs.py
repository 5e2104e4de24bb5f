"""``sami enqueue``, ``jobs``, ``cancel``, ``retry``, ``logs``: single jobs in the queue."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cli.registry import INT_MAX, CliError, age, command, integer, number, print_table, row_dict, tx, workspace
from db.models import JOB_STATUSES
from sami_core.contract import KNOWN_KINDS
from sami_core.errors import SpecError
from sami_core.judge.usage import job_usage_text
from sami_core.spec import read_spec_file
from services import jobs

# --- enqueue --------------------------------------------------------------------------------


def parse_params(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs into a dict. Values are JSON when they parse as JSON (numbers,
    true/false/null, lists, quoted strings), else strings; dotted keys nest
    (``training.lr=1e-6`` -> {"training": {"lr": 1e-6}})."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--param {pair!r}: expected key=value")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise CliError(f"--param {pair!r}: {p} is already a value, not a mapping")
        node[leaf] = value
    return out


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _ids(values: Sequence[str]) -> list[int]:
    try:
        return [int(x) for v in values for x in v.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"job ids must be integers: {' '.join(values)}") from None


def _configure_enqueue(p: argparse.ArgumentParser) -> None:
    p.add_argument("kind", help=f"job kind: {', '.join(KNOWN_KINDS)}")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a spec field (repeatable; dotted keys nest; values parsed as JSON when possible)")
    p.add_argument("--spec", type=Path, help="a YAML/JSON file with the job's spec (--param overrides it)")
    p.add_argument("--name", help="a display label")
    p.add_argument("--depends-on", action="append", default=[], metavar="ID[,ID]",
                   help="job(s) that must succeed first")
    p.add_argument("--experiment", type=integer(1), help="experiment id")
    p.add_argument("--devices", type=integer(0, 1024), default=0, help="GPUs the job needs (0 = runs on CPU)")
    p.add_argument("--priority", type=integer(-INT_MAX, INT_MAX), default=0, help="higher runs first")
    p.add_argument("--max-attempts", type=integer(1, 1000), default=3)
    p.add_argument("--run-dir", help="run directory (default runs/job-<id>-<kind> in the workspace)")


@command("enqueue", "add one job to the queue; prints its id", _configure_enqueue)
def cmd_enqueue(args: argparse.Namespace) -> int:
    spec: dict[str, Any] = {}
    if args.spec:
        try:
            spec = read_spec_file(args.spec)
        except SpecError as err:
            raise CliError(f"--spec: {err}") from None
        if not isinstance(spec, dict):
            raise CliError(f"--spec {args.spec}: expected a mapping at the top level")
    spec = jobs.validate_job_spec(args.kind, _merge(spec, parse_params(args.param)))  # before any transaction
    job_id = tx(lambda c: jobs.enqueue_job(
        c, args.kind, spec, depends_on=_ids(args.depends_on), name=args.name, experiment_id=args.experiment,
        devices_required=args.devices, priority=args.priority, max_attempts=args.max_attempts,
        run_dir=args.run_dir, workspace=workspace()))
    print(job_id)
    return 0


# --- jobs -----------------------------------------------------------------------------------


def _experiment_ref(value: str) -> int | str:
    if value == "latest":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError("expected an experiment id or `latest`") from None


def _configure_jobs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", type=_experiment_ref, metavar="ID|latest",
                   help="only this experiment's jobs (`latest`: the newest experiment)")
    p.add_argument("--check", action="store_true",
                   help="exit 1 unless every listed job succeeded (e.g. after `sami worker --exit-when-idle`)")
    p.add_argument("--status", action="append", choices=JOB_STATUSES, help="only jobs in this state (repeatable)")
    p.add_argument("--limit", type=integer(1), default=None, help="at most this many (newest first)")
    p.add_argument("--json", action="store_true", help="print JSON (one array of objects)")


def job_dict(row: Any, depends_on: list[int]) -> dict[str, Any]:
    """What `sami jobs --json` prints for one job: its columns and its dependencies."""
    return {**row_dict(row), "depends_on": depends_on}


def _progress(row: Any) -> str:
    if row.progress_total:
        done = row.progress_done or 0
        text = f"{done}/{row.progress_total} ({100 * done / row.progress_total:.0f}%)"
        if row.status == "running" and row.progress_eta_s is not None:
            text += f" eta {row.progress_eta_s:.0f}s"
        return text
    return "-"


@command("jobs", "list jobs, newest first", _configure_jobs)
def cmd_jobs(args: argparse.Namespace) -> int:
    rows, edges = tx(lambda c: jobs.list_jobs(c, experiment=args.experiment, statuses=args.status,
                                              limit=args.limit), write=False)
    if args.json:
        print(json.dumps([job_dict(r, edges[r.id]) for r in rows], indent=1))
        return _check_succeeded(rows) if args.check else 0
    table = [("ID", "KIND", "STATUS", "TRY", "PROGRESS", "WORKER", "DEPS", "UPDATED", "NAME / ERROR")]
    for r in rows:
        status = "cancelling" if r.status == "running" and r.cancel_requested_at else r.status
        note = r.name or ""
        if r.error and r.status != "succeeded":
            note = (note + ": " if note else "") + r.error.strip().splitlines()[-1][:80]
        elif r.kind == "judge" and (usage := job_usage_text(r.outputs, r.spec)):
            note = (note + ": " if note else "") + usage
        table.append((str(r.id), r.kind, status, f"{r.attempts}/{r.max_attempts}", _progress(r),
                      str(r.worker_id or "-"), ",".join(map(str, edges[r.id])) or "-", age(r.updated_at), note))
    print_table(table, last_free=True)
    return _check_succeeded(rows) if args.check else 0


def _check_succeeded(rows: Sequence[Any]) -> int:
    """``sami jobs --check``: 0 when there are jobs and every one succeeded, else 1."""
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.status] = counts.get(r.status, 0) + 1
    ok = bool(rows) and counts.get("succeeded", 0) == len(rows)
    detail = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
    print(f"{'ok' if ok else 'not done'}: {len(rows)} job(s): {detail}", file=sys.stderr)
    return 0 if ok else 1


# --- cancel, retry ---------------------------------------------------------------------------


def _configure_cancel(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=integer(1))
    p.add_argument("--wait", type=number(0), default=15.0,
                   help="seconds to wait for a running job's worker to confirm (0 = do not wait)")


@command("cancel", "cancel a job (a running one: its worker kills the whole process tree)", _configure_cancel)
def cmd_cancel(args: argparse.Namespace) -> int:
    result = tx(lambda c: jobs.cancel(c, args.id))
    if result == "cancelled":
        print(f"job {args.id}: cancelled")
        return 0
    if result != "cancelling":
        print(f"job {args.id}: {result}, nothing to cancel")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        row = tx(lambda c: jobs.get_job(c, args.id), write=False)
        if row.status != "running":
            print(f"job {args.id}: {row.status}" + (f" ({row.error})" if row.error else ""))
            return 0
        time.sleep(0.2)
    print(f"job {args.id}: cancellation requested; its worker kills it at its next heartbeat")
    return 0


@command("retry", "re-queue a failed, cancelled or blocked job (and unblock its dependants)",
         lambda p: p.add_argument("id", type=integer(1)))
def cmd_retry(args: argparse.Namespace) -> int:
    row, unblocked = tx(lambda c: jobs.retry(c, args.id))
    print(f"job {args.id}: {row.status}" + (f"; unblocked {', '.join(map(str, unblocked))}" if unblocked else ""))
    return 0


# --- logs -------------------------------------------------------------------------------------


def _configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=integer(1))
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job finishes")
    p.add_argument("--lines", "-n", type=integer(0), default=None, help="start with only the last N lines")


@command("logs", "print a job's stage.log", _configure_logs)
def cmd_logs(args: argparse.Namespace) -> int:
    def job() -> Any:
        return tx(lambda c: jobs.get_job(c, args.id), write=False)

    row = job()
    path = jobs.log_path(workspace(), row.id, row.kind, row.run_dir)
    offset = 0
    if path.exists() and args.lines is not None:
        lines = path.read_bytes().splitlines(keepends=True)
        sys.stdout.buffer.write(b"".join(lines[-args.lines:]) if args.lines else b"")
        offset = path.stat().st_size
    elif not path.exists() and not args.follow:
        print(f"job {args.id} has no log yet ({path})", file=sys.stderr)
        return 0
    last_check = 0.0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
                offset += len(chunk)
        if not args.follow:
            return 0
        if time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            if job().status not in ("queued", "running"):
                if not path.exists() or path.stat().st_size == offset:
                    return 0
                continue
        time.sleep(0.25)
