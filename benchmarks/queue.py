"""Queue benchmark: W `sami worker` processes draining N `sleep 0` jobs.

What it measures, per database (a SQLite file; PostgreSQL when a private server can be
started here):

* jobs/s: N / (last job's finished_at - first job's started_at). The W workers are
  started and registered first (idle, polling every 50 ms); then the jobs are enqueued
  in transactions of ENQUEUE_BATCH, back to back. Process start-up is not counted.
  Also printed: the wall time from the first enqueue until the benchmark saw all N
  succeeded. The workers are then stopped with SIGTERM.
* claim latency p50 / p90 / p99 / max: the wall time of each worker transaction that
  returned a job (db.queue.claim in db.engine.transact: waiting for SQLite's write
  lock or PostgreSQL's row locks, and retries, included), from the workers' stats
  files. For a `sleep 0` job that transaction also records the previous job's success
  (one write transaction per job; see Worker._claim).
* double claims: executions beyond the first of any job (each execution appends a line
  to a log, see workers.diag.count_executions) plus jobs claimed more than once
  (attempts > 1).

A `sleep` job with seconds == 0 runs inside the worker (workers.diag.runs_inline):
it does no work, so a child process per job would measure Python start-up (20-50 ms
each on a small machine), not the queue. It is claimed and marked succeeded like any
other job, and its execution is one line appended to runs/inline-executions.log; it
gets no run directory (creating a directory costs about 1.5 ms on this machine's disk,
more than the queue's own work per job). Jobs with seconds > 0 are real child process
groups with run directories.

Settings: SQLite as the workbench uses it (WAL, synchronous=NORMAL, the writer lock of
db.engine); PostgreSQL with its default durability (fsync on, synchronous commit).

    .venv/bin/python benchmarks/queue.py [--jobs 1000] [--workers 8] [--backend sqlite|postgres|all]

The last line is ``jobs_per_s: X`` for SQLite, the workbench's default database.
"""

from __future__ import annotations

import sys
from pathlib import Path

# This file is named queue.py: keep its folder off the import path so that it does not
# shadow the standard library's `queue` module, and put the project root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from sqlalchemy import func, select  # noqa: E402

from db import queue  # noqa: E402
from db.engine import open_database, transact  # noqa: E402
from db.models import Job, Worker  # noqa: E402
from db.testing import PostgresServer, postgres_unavailable_reason  # noqa: E402
from db.workspace import Workspace  # noqa: E402
from workers.diag import count_executions  # noqa: E402


# Jobs per enqueue transaction. One transaction of 1,000 inserts holds SQLite's write
# lock for ~60 ms, which every claim waiting behind it would count; an experiment's
# submission is a few dozen jobs, so batches of 50 (~4 ms each) are closer to real use.
ENQUEUE_BATCH = 50


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(url: str, home: Path, n_jobs: int, n_workers: int, timeout_s: float = 300.0) -> dict:
    engine = open_database(url)
    ws = Workspace(home)
    ws.create()
    env = {**os.environ, "SAMI_HOME": str(home), "SAMI_DATABASE_URL": url,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    stats_dir = home / "stats"
    stats_dir.mkdir()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "worker", "--devices", "", "--poll-interval", "0.05",
             "--log-level", "WARNING", "--stats-file", str(stats_dir / f"w{i}.json")],
            env=env, cwd=str(home), stdout=subprocess.DEVNULL, stderr=open(home / f"worker{i}.err", "wb"),
        )
        for i in range(n_workers)
    ]
    deadline = time.monotonic() + 120
    while transact(engine, lambda c: c.execute(select(func.count()).select_from(Worker)).scalar_one(),
                   write=False) < n_workers:
        if time.monotonic() > deadline:
            raise RuntimeError("workers did not start")
        time.sleep(0.05)

    t_enqueued = time.time()
    ids: list[int] = []
    for start in range(0, n_jobs, ENQUEUE_BATCH):
        batch = [{"kind": "sleep", "spec": {"seconds": 0}}] * min(ENQUEUE_BATCH, n_jobs - start)
        ids += transact(engine, lambda c: queue.enqueue_many(c, batch))  # noqa: B023
    deadline = time.monotonic() + timeout_s
    while transact(engine, lambda c: queue.status_counts(c).get("succeeded", 0), write=False) < n_jobs:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            break
        time.sleep(0.1)
    t_done = time.time()
    for p in procs:
        p.send_signal(signal.SIGTERM)  # workers write their stats files on exit
    for p in procs:
        p.wait(timeout=60)

    rows = transact(engine, lambda c: c.execute(
        select(Job.id, Job.status, Job.attempts, Job.started_at, Job.finished_at, Job.run_dir)
        .where(Job.id.in_(ids))).all(), write=False)
    succeeded = sum(r.status == "succeeded" for r in rows)
    first = min(r.started_at for r in rows).timestamp()
    last = max(r.finished_at for r in rows if r.finished_at).timestamp()
    executions = list(count_executions(ws.runs_dir, {r.id: ws.resolve(r.run_dir) for r in rows}).values())
    double = sum(max(0, e - 1) for e in executions) + sum(r.attempts > 1 for r in rows)
    latencies = []
    for f in stats_dir.glob("*.json"):
        latencies += json.loads(f.read_text())["claim_latency_ms"]
    engine.dispose()
    return {
        "jobs": n_jobs, "succeeded": succeeded, "never_ran": executions.count(0),
        "jobs_per_s": n_jobs / (last - first), "drain_wall_s": t_done - t_enqueued,
        "claim_p50_ms": percentile(latencies, 50), "claim_p99_ms": percentile(latencies, 99),
        "claim_mean_ms": statistics.fmean(latencies) if latencies else float("nan"),
        "claim_p90_ms": percentile(latencies, 90), "claim_max_ms": max(latencies, default=float("nan")),
        "double_claims": double, "worker_exit_codes": [p.returncode for p in procs],
        "drain_s": last - first,
    }


def report(name: str, r: dict) -> None:
    print(f"[{name}] {r['succeeded']}/{r['jobs']} succeeded, never ran {r['never_ran']}, "
          f"double claims {r['double_claims']}, worker exit codes {r['worker_exit_codes']}")
    print(f"[{name}] jobs/s {r['jobs_per_s']:.0f} (drain wall {r['drain_wall_s']:.2f} s); claim latency "
          f"p50 {r['claim_p50_ms']:.1f} ms, p90 {r['claim_p90_ms']:.1f} ms, p99 {r['claim_p99_ms']:.1f} ms, "
          f"max {r['claim_max_ms']:.1f} ms, mean {r['claim_mean_ms']:.1f} ms")
    ok = r["jobs_per_s"] >= 200 and r["claim_p99_ms"] < 50 and r["double_claims"] == 0 and r["succeeded"] == r["jobs"]
    print(f"[{name}] targets (>= 200 jobs/s, p99 < 50 ms, 0 double claims): {'met' if ok else 'NOT met'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--backend", choices=["sqlite", "postgres", "all"], default="all")
    args = parser.parse_args()
    print(f"{args.workers} workers, {args.jobs} sleep-0 jobs, {os.cpu_count()} CPU cores")

    results = {}
    if args.backend in ("postgres", "all"):
        reason = postgres_unavailable_reason()
        if reason:
            print(f"[postgresql] skipped: {reason}")
        else:
            server = PostgresServer(fast=False).start()
            home = Path(tempfile.mkdtemp(prefix="sami-bench-pg-"))
            try:
                results["postgresql"] = run(server.create_database("bench"), home, args.jobs, args.workers)
                report("postgresql", results["postgresql"])
            finally:
                server.stop()
                shutil.rmtree(home, ignore_errors=True)
    if args.backend in ("sqlite", "all"):
        home = Path(tempfile.mkdtemp(prefix="sami-bench-sqlite-"))
        try:
            results["sqlite"] = run(f"sqlite:///{home / 'sami.db'}", home, args.jobs, args.workers)
            report("sqlite", results["sqlite"])
        finally:
            shutil.rmtree(home, ignore_errors=True)
    headline = results.get("sqlite") or results.get("postgresql")
    print(f"jobs_per_s: {headline['jobs_per_s']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
