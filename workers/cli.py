"""The ``sami`` command line: workspace, queue and worker.

    sami init [--no-demo-model]
    sami submit SPEC.yaml [--name N] [--dry-run] [--json]
    sami enqueue KIND [--param key=value ...] [--spec FILE] [--depends-on ID ...]
    sami jobs [--experiment ID|latest] [--json] [--check]
    sami cancel ID | sami retry ID | sami logs ID [--follow]
    sami worker [--devices 0,1] [--exit-when-idle] [--lease-seconds S]
    sami import-results FILE|FOLDER... | --shipped;  sami sources
    sami judge --candidate SRC --baseline SRC [--judge-model M] [--now] ...
    sami winrates [--experiment ID] [--csv FILE]
    sami export responses|judgments|winrates --out FILE.csv [--out-dir DIR]
    sami ui [--port P] [--host 127.0.0.1] [--with-worker]

Every command finds the workspace at ``$SAMI_HOME`` (default ``./.sami``) and the
database at ``$SAMI_DATABASE_URL`` (default: the workspace's SQLite file); the schema
is migrated on first use. A subcommand is a handler registered with :func:`command`
(its ``configure`` adds the arguments); add new ones (judge, ui) the same way.

Exit codes: 0 = done; 1 = `sami jobs --check` found jobs that did not succeed, or the
database failed; 2 = refused (a bad spec or argument, named with its field; nothing
was written).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

Handler = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Handler


COMMANDS: dict[str, Command] = {}


def _no_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def command(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None] = _no_arguments
) -> Callable[[Handler], Handler]:
    """Register ``fn(args) -> exit code`` as ``sami NAME``; ``configure(parser)`` adds its
    arguments. Example (see `sami submit` below)::

        def _configure_submit(p): p.add_argument("spec", type=Path)

        @command("submit", "expand an experiment spec into jobs", _configure_submit)
        def cmd_submit(args): ...
    """

    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, configure, fn)
        return fn

    return register


class CliError(Exception):
    """A usage or state error: printed as ``sami: error: ...`` with exit code 2."""


def _workspace():  # noqa: ANN202 (db.workspace.Workspace)
    from db.workspace import Workspace

    return Workspace.from_env()


@functools.lru_cache(maxsize=1)
def _engine():  # noqa: ANN202 (sqlalchemy Engine)
    from db.engine import open_database

    return open_database(_workspace().database_url)


def _transact(fn: Callable[[Any], Any], *, write: bool = True) -> Any:
    from db.engine import transact

    return transact(_engine(), fn, write=write)


# --- init -----------------------------------------------------------------------------------


def _configure_init(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-demo-model", action="store_true",
                   help="do not build the embedded demo model (built once per checkout, about half a minute; "
                        "`model.path: demo` needs it)")


@command("init", "create the workspace ($SAMI_HOME or ./.sami): database, runs folder, demo model",
         _configure_init)
def cmd_init(args: argparse.Namespace) -> int:
    import subprocess

    from db.migrations import current_revision
    from db.workspace import redacted_url

    ws = _workspace()
    ws.create()
    engine = _engine()
    print(f"workspace: {ws.home}")
    print(f"database:  {redacted_url(ws.database_url)} (schema {current_revision(engine)})")
    print(f"runs:      {ws.runs_dir}", flush=True)
    if not args.no_demo_model:
        # sami_core runs as a subprocess: the CLI never imports the ML stack. Instant
        # when the model is already built.
        rc = subprocess.call([sys.executable, "-m", "sami_core", "make-demo-model"], stderr=subprocess.DEVNULL)
        if rc != 0:
            raise CliError("could not build the demo model: run `python -m sami_core make-demo-model` to see why")
    return 0


# --- submit ---------------------------------------------------------------------------------


def _configure_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="an experiment spec, YAML or JSON (see sami_core/examples/)")
    p.add_argument("--name", help="the experiment's name (overrides the spec's `name`)")
    p.add_argument("--dry-run", action="store_true", help="validate and show the jobs; enqueue nothing")
    p.add_argument("--json", action="store_true", help="print JSON: the experiment id and its jobs")


@command("submit", "expand an experiment spec into its jobs and enqueue them (prints the experiment id)",
         _configure_submit)
def cmd_submit(args: argparse.Namespace) -> int:
    from workers import submit

    prepared = submit.prepare(args.spec, name=args.name)  # SpecError: exit 2, nothing written
    try:
        if args.dry_run:
            result = _transact(lambda c: submit.dry_run(c, prepared), write=False)
        else:
            result = _transact(lambda c: submit.submit(c, prepared))
    except submit.SubmitError as err:
        raise CliError(f"{args.spec}: {err}") from None
    for w in result.warnings:
        print(f"sami: warning: {w}", file=sys.stderr)
    if args.json:
        print(json.dumps(result.as_dict(), indent=1))
    else:
        print(submit.format_table(result))
    return 0


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
    from workers.stages import KNOWN_KINDS

    p.add_argument("kind", help=f"job kind: {', '.join(KNOWN_KINDS)}")
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a spec field (repeatable; dotted keys nest; values parsed as JSON when possible)")
    p.add_argument("--spec", type=Path, help="a YAML/JSON file with the job's spec (--param overrides it)")
    p.add_argument("--name", help="a display label")
    p.add_argument("--depends-on", action="append", default=[], metavar="ID[,ID]",
                   help="job(s) that must succeed first")
    p.add_argument("--experiment", type=int, help="experiment id")
    p.add_argument("--devices", type=int, default=0, help="GPUs the job needs (0 = runs on CPU)")
    p.add_argument("--priority", type=int, default=0, help="higher runs first")
    p.add_argument("--max-attempts", type=int, default=3)
    p.add_argument("--run-dir", help="run directory (default runs/job-<id>-<kind> in the workspace)")


@command("enqueue", "add one job to the queue; prints its id", _configure_enqueue)
def cmd_enqueue(args: argparse.Namespace) -> int:
    from db import queue
    from workers.stages import KindError, validate_spec

    spec: dict[str, Any] = {}
    if args.spec:
        import yaml

        try:
            spec = yaml.safe_load(args.spec.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise CliError(f"--spec {args.spec}: {err}") from None
        if not isinstance(spec, dict):
            raise CliError(f"--spec {args.spec}: expected a mapping at the top level")
    spec = _merge(spec, parse_params(args.param))
    try:
        spec = validate_spec(args.kind, spec)
    except KindError as err:
        raise CliError(str(err)) from None
    job_id = _transact(lambda c: queue.enqueue(
        c, args.kind, spec, depends_on=_ids(args.depends_on), name=args.name, experiment_id=args.experiment,
        devices_required=args.devices, priority=args.priority, max_attempts=args.max_attempts,
        run_dir=args.run_dir))
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
    p.add_argument("--status", action="append", help="only jobs in this state (repeatable)")
    p.add_argument("--limit", type=int, default=None, help="at most this many (newest first)")
    p.add_argument("--json", action="store_true", help="print JSON (one array of objects)")


def row_dict(row: Any) -> dict[str, Any]:
    """A database row as plain JSON-able data (timestamps in ISO 8601)."""
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}


def job_dict(row: Any, depends_on: list[int]) -> dict[str, Any]:
    """What `sami jobs --json` prints for one job: its columns and its dependencies."""
    return {**row_dict(row), "depends_on": depends_on}


def _age(ts: datetime | None) -> str:
    if ts is None:
        return "-"
    s = (datetime.now(timezone.utc) - ts).total_seconds()
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f}m" if s < 7200 else f"{s / 3600:.0f}h"


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
    from db import queue

    def read(conn: Any) -> tuple[list, dict]:
        experiment = args.experiment
        if experiment == "latest":
            from sqlalchemy import func, select

            from db.models import Experiment

            experiment = conn.execute(select(func.max(Experiment.id))).scalar_one()
            if experiment is None:
                raise CliError("--experiment latest: no experiment has been submitted yet")
        rows = queue.list_jobs(conn, experiment_id=experiment, statuses=args.status, limit=args.limit)
        return rows, queue.dependencies(conn, [r.id for r in rows])

    rows, edges = _transact(read, write=False)
    if args.json:
        print(json.dumps([job_dict(r, edges[r.id]) for r in rows], indent=1))
        return _check_succeeded(rows) if args.check else 0
    header = ("ID", "KIND", "STATUS", "TRY", "PROGRESS", "WORKER", "DEPS", "UPDATED", "NAME / ERROR")
    table = [header]
    for r in rows:
        status = "cancelling" if r.status == "running" and r.cancel_requested_at else r.status
        note = r.name or ""
        if r.error and r.status != "succeeded":
            note = (note + ": " if note else "") + r.error.strip().splitlines()[-1][:80]
        table.append((str(r.id), r.kind, status, f"{r.attempts}/{r.max_attempts}", _progress(r),
                      str(r.worker_id or "-"), ",".join(map(str, edges[r.id])) or "-", _age(r.updated_at), note))
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
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
    p.add_argument("id", type=int)
    p.add_argument("--wait", type=float, default=15.0,
                   help="seconds to wait for a running job's worker to confirm (0 = do not wait)")


@command("cancel", "cancel a job (a running one: its worker kills the whole process tree)", _configure_cancel)
def cmd_cancel(args: argparse.Namespace) -> int:
    from db import queue

    try:
        result = _transact(lambda c: queue.cancel(c, args.id))
    except queue.QueueError as err:
        raise CliError(str(err)) from None
    if result == "cancelled":
        print(f"job {args.id}: cancelled")
        return 0
    if result != "cancelling":
        print(f"job {args.id}: {result}, nothing to cancel")
        return 0
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        row = _transact(lambda c: queue.get_job(c, args.id), write=False)
        if row.status != "running":
            print(f"job {args.id}: {row.status}" + (f" ({row.error})" if row.error else ""))
            return 0
        time.sleep(0.2)
    print(f"job {args.id}: cancellation requested; its worker kills it at its next heartbeat")
    return 0


def _configure_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int)


@command("retry", "re-queue a failed, cancelled or blocked job (and unblock its dependants)", _configure_id)
def cmd_retry(args: argparse.Namespace) -> int:
    from db import queue

    try:
        unblocked = _transact(lambda c: queue.retry(c, args.id))
    except queue.QueueError as err:
        raise CliError(str(err)) from None
    row = _transact(lambda c: queue.get_job(c, args.id), write=False)
    print(f"job {args.id}: {row.status}" + (f"; unblocked {', '.join(map(str, unblocked))}" if unblocked else ""))
    return 0


# --- logs -------------------------------------------------------------------------------------


def _configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", type=int)
    p.add_argument("--follow", "-f", action="store_true", help="keep printing until the job finishes")
    p.add_argument("--lines", "-n", type=int, default=None, help="start with only the last N lines")


@command("logs", "print a job's stage.log", _configure_logs)
def cmd_logs(args: argparse.Namespace) -> int:
    from db import queue
    from db.workspace import default_run_dir

    def job() -> Any:
        row = _transact(lambda c: queue.get_job(c, args.id), write=False)
        if row is None:
            raise CliError(f"no job {args.id}")
        return row

    row = job()
    path = _workspace().resolve(row.run_dir or default_run_dir(row.id, row.kind)) / "stage.log"
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


# --- worker -----------------------------------------------------------------------------------


def _configure_worker(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--name", help="worker name (default host:pid)")
    p.add_argument("--stats-file", type=Path, help="write claim latencies here on exit (benchmarks)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR")


@command("worker", "run a worker daemon: claim jobs and run them", _configure_worker)
def cmd_worker(args: argparse.Namespace) -> int:
    from workers.daemon import Worker, WorkerConfig, detect_devices
    from workers.stages import KNOWN_KINDS

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.lease_seconds <= 0 or args.tick_interval <= 0:
        raise CliError("--lease-seconds and --tick-interval must be > 0")
    if args.tick_interval * 3 > args.lease_seconds:
        raise CliError("--lease-seconds must be at least 3 x --tick-interval (heartbeats renew the lease)")
    devices = detect_devices() if args.devices is None else [d for d in args.devices.split(",")
                                                             if d.strip() and d != "cpu"]
    kinds = None
    if args.kinds:
        kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
        unknown = sorted(set(kinds) - set(KNOWN_KINDS))
        if unknown:
            raise CliError(f"--kinds: unknown kind(s) {', '.join(unknown)}; known: {', '.join(KNOWN_KINDS)}")
    ws = _workspace()
    ws.create()
    config = WorkerConfig(
        devices=devices, kinds=kinds, lease_seconds=args.lease_seconds, poll_interval=args.poll_interval,
        tick_interval=args.tick_interval, kill_grace_s=args.kill_grace, exit_when_idle=args.exit_when_idle,
        name=args.name, stats_file=args.stats_file,
    )
    return Worker(_engine(), ws, config, database_url=ws.database_url).run()


@command("workers", "list registered workers", lambda p: p.add_argument("--json", action="store_true"))
def cmd_workers(args: argparse.Namespace) -> int:
    from sqlalchemy import select

    from db.models import Worker

    rows = _transact(lambda c: c.execute(select(Worker.__table__).order_by(Worker.id.desc())).all(), write=False)
    if args.json:
        print(json.dumps([row_dict(r) for r in rows], indent=1))
        return 0
    for r in rows:
        print(f"{r.id:>4}  {r.status:<8} {r.name:<30} devices={','.join(r.devices) or 'cpu'}  "
              f"last seen {_age(r.last_seen_at)} ago")
    return 0


# --- response sources, judging, win rates, exports -------------------------------------------


def _configure_import_results(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="*", type=Path, metavar="FILE|FOLDER",
                   help="published results files (<checkpoint>-<model>-<constitution source>-constitution-"
                        "temperature-<t>.json) or folders of them")
    p.add_argument("--shipped", action="store_true",
                   help="import the responses shipped in sami_core/data/sami_tldr/responses/")


@command("import-results", "import published response files as response sources (idempotent)",
         _configure_import_results)
def cmd_import_results(args: argparse.Namespace) -> int:
    from workers import judging

    try:
        files = (judging.shipped_results() if args.shipped else []) + judging.results_files(args.paths)
        if not files:
            raise CliError("name results files or folders, or pass --shipped")
        for f in files:
            info = _transact(lambda c, f=f: judging.import_results_file(c, f))
            print(f"{info['source_id']:>4}  {info['source']}  ({info['n_responses']} responses, "
                  f"checkpoint {info['checkpoint']}, model {info['model']}, constitution "
                  f"{info['constitution_source']}, temperature {info['temperature']:g})")
    except judging.JudgingError as err:
        raise CliError(str(err)) from None
    return 0


@command("sources", "list response sources (sampled, baseline, imported)",
         lambda p: p.add_argument("--json", action="store_true"))
def cmd_sources(args: argparse.Namespace) -> int:
    from db import ingest

    rows = _transact(ingest.list_sources, write=False)
    if args.json:
        print(json.dumps(rows, default=str, indent=1))
        return 0
    table = [("id", "kind", "experiment", "responses", "constitution", "model", "label")] + [
        (str(r["id"]), r["kind"], "-" if r["experiment_id"] is None else str(r["experiment_id"]),
         str(r["n_responses"]), ingest.source_constitution(r), r.get("model") or "-", r["label"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    right = {0, 2, 3}  # numbers
    for row in table:
        print("  ".join(c.rjust(w) if i in right else c.ljust(w)
                        for i, (c, w) in enumerate(zip(row, widths, strict=True))).rstrip())
    return 0


def _configure_judge(p: argparse.ArgumentParser) -> None:
    p.add_argument("--candidate", required=True, metavar="SRC",
                   help="a response source (id, label or label#id; see `sami sources`) or a file/run directory")
    p.add_argument("--baseline", required=True, metavar="SRC", help="the source it is compared with")
    p.add_argument("--judge-model", default="gpt-4o", help="judge model (deployment on Azure; hub id/dir for hf)")
    p.add_argument("--provider", choices=("openai", "azure", "hf", "auto"), default="openai",
                   help="auto = OpenAI (--judge-model) when the key variable is set, Azure OpenAI when "
                        "AZURE_OPENAI_API_KEY and AZURE_OPENAI_ENDPOINT are, else the local hf judge on the demo model")
    p.add_argument("--base-url", help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    p.add_argument("--azure-endpoint", help="Azure: https://NAME.openai.azure.com")
    p.add_argument("--api-version", help="Azure: the API version")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="NAME of the environment variable holding the key ('' = no key); never the key itself")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight at once")
    p.add_argument("--max-attempts", type=int, help="attempts per request (429, 5xx, timeouts; default 6)")
    p.add_argument("--backoff", type=float, metavar="S", help="first retry wait in seconds (doubles; default 1)")
    p.add_argument("--both-orders", action="store_true", help="judge every pair in both A/B orders")
    p.add_argument("--limit", type=int, help="judge only the first N pairs")
    p.add_argument("--temperature", type=float,
                   help="compare only responses sampled at this temperature (both sides)")
    p.add_argument("--experiment", type=int, help="resolve labels in this experiment first; the job belongs to it")
    p.add_argument("--now", action="store_true", help="judge in this process (with progress) instead of queueing")
    p.add_argument("--run-dir", help="run directory (default: runs/ in the workspace)")


def _judge_side(conn: Any, ref: str, experiment_id: int | None, home: Path) -> tuple[dict, dict | None]:
    from db import ingest
    from workers import judging

    p = Path(ref)
    src = None if p.suffix == ".json" and p.is_file() else ingest.find_source(conn, ref, experiment_id=experiment_id)
    if src is None:
        if p.suffix == ".json" and p.is_file():  # a published results file: imported first (idempotent)
            info = judging.import_results_file(conn, p)
            src = ingest.find_source(conn, str(info["source_id"]))
        elif p.exists():
            return {"path": str(p.resolve())}, None  # judged, but not stored: no response rows to link
        else:
            raise CliError(f"{ref!r} is neither a response source (see `sami sources`) nor a file")
    return judging.source_side(src, home), src


@command("judge", "judge a candidate's responses against a baseline's (queued, or --now)", _configure_judge)
def cmd_judge(args: argparse.Namespace) -> int:
    import os
    import subprocess

    from db import queue
    from sami_core.judge.stage import estimate_judge_job
    from sami_core.spec import JudgeSpec
    from workers import judging
    from workers.stages import validate_spec

    ws = _workspace()
    ws.create()
    try:
        cand, cand_src = _transact(lambda c: _judge_side(c, args.candidate, args.experiment, ws.home))
        base, base_src = _transact(lambda c: _judge_side(c, args.baseline, args.experiment, ws.home))
    except judging.JudgingError as err:
        raise CliError(str(err)) from None
    stored = cand_src is not None and base_src is not None
    if not stored and not args.now:
        raise CliError("a queued judge job compares response sources in the database (see `sami sources`, "
                       "`sami import-results`); judge other files with --now")
    if args.temperature is not None:
        cand["temperature"] = base["temperature"] = args.temperature
    judge: dict[str, Any] = {"provider": args.provider, "model": args.judge_model, "concurrency": args.concurrency,
                             "api_key_env": args.api_key_env or None}
    for key in ("base_url", "azure_endpoint", "api_version"):
        if getattr(args, key):
            judge[key] = getattr(args, key)
    if args.max_attempts is not None:
        judge["max_attempts"] = args.max_attempts
    if args.backoff is not None:
        judge["backoff_initial_s"] = args.backoff
    if args.provider == "auto":
        from sami_core.spec import ExperimentLLMSpec, resolve_auto_judge

        try:
            llm, note = resolve_auto_judge(ExperimentLLMSpec.model_validate(judge), os.environ)
        except ValueError as err:  # pydantic's ValidationError
            raise CliError(f"--provider auto: {err}") from None
        judge = llm.model_dump(mode="json")
        print(f"sami: {note}", file=sys.stderr)
    spec = {"judge": judge, "candidate": cand, "baseline": base, "order": "both" if args.both_orders else "random",
            "limit": args.limit, "shared_cache": str(ws.home / "judge-cache")}
    spec = validate_spec("judge", spec)
    est = estimate_judge_job(JudgeSpec.model_validate(spec))
    print(f"judge: {est.pairs} pairs, {est.judgments} judgments: {est.cached} cached, "
          f"{est.to_send} requests to send", flush=True)
    if est.to_send and judge["api_key_env"] and judge["provider"] != "hf" and not os.environ.get(judge["api_key_env"]):
        raise CliError(f"${judge['api_key_env']} is not set (the judge's API key; --api-key-env names another "
                       "variable, '' for none)")
    if not args.now:
        job_id = _transact(lambda c: queue.enqueue(c, "judge", spec, name="judge", experiment_id=args.experiment,
                                                   run_dir=args.run_dir))
        print(f"queued judge job {job_id}")
        return 0
    run_dir = Path(args.run_dir) if args.run_dir else ws.runs_dir / f"judge-{time.strftime('%Y%m%d-%H%M%S')}"
    if not run_dir.is_absolute():
        run_dir = ws.home / run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_file = run_dir / "job_spec.json"
    spec_file.write_text(json.dumps(spec, indent=1))
    # The stage runs as a child (the CLI never imports the ML stack); its progress.json is
    # polled for a progress line, and its own messages go to stderr as they come.
    proc = subprocess.Popen([sys.executable, "-m", "sami_core", "judge", "--spec", str(spec_file),
                             "--run-dir", str(run_dir)], cwd=ws.home)
    last = None
    while True:
        try:
            rc = proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            rc = None
        try:
            prog = json.loads((run_dir / "progress.json").read_text())
            seen = (prog.get("done"), prog.get("total"))
        except (OSError, ValueError):
            seen = None
        if seen is not None and seen != last and seen[1]:
            last = seen
            print(f"judge: {seen[0]}/{seen[1]} judgments", file=sys.stderr, flush=True)
        if rc is not None:
            break
    if rc != 0:
        raise CliError(f"the judge stage failed (exit {rc}); see its messages above; run directory {run_dir}")
    n = 0
    if stored:
        try:
            n = _transact(lambda c: judging.ingest_judge_run(c, run_dir, spec, experiment_id=args.experiment))
        except judging.JudgingError as err:
            raise CliError(str(err)) from None
    outputs = json.loads((run_dir / "outputs.json").read_text())
    print(f"judge: {outputs['n_judgments']} judgments ({outputs['requests_sent']} requests sent, "
          f"{outputs['cached']} cached); {n} stored in the database"
          f"{'' if stored else ' (a side is no response source there)'}; run directory {run_dir}")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _configure_winrates(p: argparse.ArgumentParser) -> None:
    p.add_argument("--experiment", type=int, help="only this experiment's judgments")
    p.add_argument("--csv", help="also write the table to this CSV file (in the current directory)")
    p.add_argument("--json", action="store_true", help="print JSON")


@command("winrates", "win rates of judged candidates against their baselines", _configure_winrates)
def cmd_winrates(args: argparse.Namespace) -> int:
    from db import ingest
    from workers import judging

    rows = judging.winrates(_transact(lambda c: ingest.judgment_rows(c, experiment_id=args.experiment),
                                      write=False))
    if args.csv:
        try:
            path = judging.write_csv(rows, judging.WINRATE_COLUMNS, Path.cwd(), args.csv)
        except judging.JudgingError as err:
            raise CliError(str(err)) from None
        print(f"wrote {path}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    cols = judging.WINRATE_COLUMNS
    print("\t".join(cols))
    for r in rows:
        print("\t".join(_fmt(r[c]) for c in cols))
    return 0


def _configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("what", choices=("responses", "judgments", "winrates"))
    p.add_argument("--out", required=True, help="CSV file name, inside --out-dir")
    p.add_argument("--out-dir", type=Path, default=None, help="folder to write into (default: current directory)")
    p.add_argument("--experiment", type=int, help="only this experiment's rows")
    p.add_argument("--source", help="only this response source (id, label or label#id)")


@command("export", "export responses, judgments or win rates as CSV (UTF-8, formula-safe)", _configure_export)
def cmd_export(args: argparse.Namespace) -> int:
    from db import ingest
    from workers import judging

    def read(conn: Any) -> list[dict]:
        source = None
        if args.source:
            src = ingest.find_source(conn, args.source, experiment_id=args.experiment)
            if src is None:
                raise CliError(f"--source {args.source!r}: no such response source")
            source = src["id"]
        if args.what == "responses":
            return ingest.response_rows(conn, experiment_id=args.experiment, source=source)
        return ingest.judgment_rows(conn, experiment_id=args.experiment, source=source)

    folder = args.out_dir if args.out_dir is not None else Path.cwd()
    try:
        judging.safe_output_path(folder, args.out)  # refuse before reading anything
        rows = _transact(read, write=False)
        if args.what == "winrates":
            rows, cols = judging.winrates(rows), judging.WINRATE_COLUMNS
        else:
            cols = judging.RESPONSE_COLUMNS if args.what == "responses" else judging.JUDGMENT_COLUMNS
        path = judging.write_csv(rows, cols, folder, args.out)
    except (judging.JudgingError, ValueError) as err:
        raise CliError(str(err)) from None
    print(f"wrote {len(rows)} rows to {path}")
    return 0


# --- ui ---------------------------------------------------------------------------------------

# The app's entry file (app/ is installed next to workers/; the CLI never imports it).
APP_ENTRY = Path(__file__).resolve().parents[1] / "app" / "streamlit_app.py"
MAX_UPLOAD_MB = 20  # as app.state.MAX_UPLOAD_MB and .streamlit/config.toml


def _configure_ui(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default 8501)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; the app has no login, so "
                        "reach it from elsewhere through an SSH tunnel rather than binding 0.0.0.0)")
    p.add_argument("--with-worker", action="store_true",
                   help="also run one local `sami worker` (log: $SAMI_HOME/worker.log), stopped with the UI")


@command("ui", "serve the workbench in the browser (Streamlit) on 127.0.0.1", _configure_ui)
def cmd_ui(args: argparse.Namespace) -> int:
    import os
    import signal
    import subprocess

    if not APP_ENTRY.is_file():
        raise CliError(f"the app's entry file {APP_ENTRY} is missing: reinstall the project (`make install`)")
    ws = _workspace()
    ws.create()
    _engine()  # migrate before the first page renders
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP_ENTRY),
           "--server.address", args.host, "--server.port", str(args.port), "--server.headless", "true",
           "--server.maxUploadSize", str(MAX_UPLOAD_MB), "--browser.gatherUsageStats", "false"]
    env = {**os.environ, "SAMI_HOME": str(ws.home)}
    children: list[subprocess.Popen] = []

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    # SIGTERM (a service manager, `kill`) stops the UI and its worker like Ctrl-C does.
    signal.signal(signal.SIGTERM, stop)
    try:
        if args.with_worker:
            log_path = ws.home / "worker.log"
            with open(log_path, "ab") as log:
                children.append(subprocess.Popen([sys.executable, "-m", "workers", "worker"], env=env,
                                                 stdout=log, stderr=subprocess.STDOUT))
            print(f"worker: pid {children[-1].pid} (log {log_path}; stops with the UI)", flush=True)
        print(f"SAMI Workbench: http://{args.host}:{args.port}  (workspace {ws.home}; Ctrl-C stops it)",
              flush=True)
        children.append(subprocess.Popen(cmd, env=env))
        return children[-1].wait()
    except KeyboardInterrupt:
        return 0
    finally:
        # The worker hands a running job back to the queue on SIGTERM (another worker or
        # the next `make run` takes it over); the UI holds no state.
        for child in reversed(children):
            if child.poll() is None:
                child.terminate()
        for child in reversed(children):
            try:
                child.wait(timeout=60)
            except subprocess.TimeoutExpired:
                child.kill()


# --- entry point -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sami", description="SAMI Workbench: queue, workers and experiments.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        cmd.configure(sub.add_parser(cmd.name, help=cmd.help, description=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from sqlalchemy.exc import DBAPIError

    from db.queue import QueueError
    from db.workspace import redacted_url
    from sami_core.errors import SamiError
    from workers.stages import KindError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except (CliError, QueueError, KindError, SamiError) as err:  # errors the user can act on: no traceback
        parser.exit(2, f"sami: error: {err}\n")
    except DBAPIError as err:
        where = redacted_url(_workspace().database_url)
        first = str(err.orig or err).strip().splitlines()[0]
        parser.exit(1, f"sami: error: database {where}: {first}\n")
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `sami jobs --json | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
