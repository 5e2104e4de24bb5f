"""The worker daemon: register, claim, run, relay, finish; recover others' lost jobs.

One worker runs one job at a time on the GPUs it was given (run several workers per
node to split its GPUs). The loop, in order:

1. every few seconds: requeue jobs whose lease expired (any worker does this, so the
   jobs of a dead worker come back) and renew the worker's own ``last_seen_at``;
2. claim the best job it can run (db.queue.claim), or sleep ``poll_interval``;
3. run it: write ``RUN_DIR/job_spec.json``, kill leftovers of earlier attempts of the
   same job on this host, start the stage as a child process group (sami_core.launch)
   logging to ``RUN_DIR/stage.log``; every ``tick_interval`` renew the lease and relay
   progress and new metrics (one transaction), learning meanwhile whether the job was
   cancelled or taken away;
4. finish: on exit 0 ingest ``outputs.json`` and mark it succeeded (one transaction),
   then mirror it to the trackers its experiment names (tracking.mirror_job; a
   tracker's failure is a warning in stage.log, never the job's);
   otherwise record the log's last lines as its error (exit 75 = transient: requeued
   while attempts remain). Cancelled: kill the tree, confirm it gone, mark cancelled.

SIGTERM or SIGINT: stop claiming; a running job's tree is killed and the job handed
back to the queue, its attempt not counted (db.queue.release); then exit.

Beyond one machine (README, "On a cluster"):

- ``--executor slurm``: step 3 submits the stage with sbatch instead (workers.slurm),
  polls its state with scontrol every tick, cancels with scancel; on SIGTERM the Slurm
  job runs on and the job row stays running, for this worker restarted under the same
  name (:meth:`Worker._adopt`) or the next claimer to watch again.
- A train job whose spec's ``launch.nodes`` is K > 1: the claiming worker (the leader)
  queues K-1 member jobs (db.queue.enqueue_members) and runs torchrun with a c10d
  rendezvous; a worker that claims a member joins it, relays progress only, ingests
  nothing, and stops when the leader no longer runs the attempt it joined.

The database may be busy or briefly unreachable: every operation retries
(db.engine.transact); one that still fails is logged and tried again on the next
round, so a locked database slows a worker down but never stops it.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.exc import DBAPIError, OperationalError

from db import ingest, queue
from db.experiments import SLURM_CAPACITY, SLURM_DEVICES
from db.engine import is_retryable, transact
from db.workspace import Workspace, default_run_dir
from sami_core import contract, launch
import tracking
from workers import relay, slurm
from workers.diag import record_inline_execution, runs_inline

log = logging.getLogger("sami.worker")
T = TypeVar("T")

# How long a member node waits for its own ranks to exit once its leader has succeeded.
LEADER_DONE_GRACE_S = 60.0


@dataclass
class WorkerConfig:
    devices: list[str] = field(default_factory=list)  # GPU ids; [] = CPU only
    kinds: list[str] | None = None  # job kinds to run; None = all
    lease_seconds: float = 60.0
    poll_interval: float = 0.5  # idle: seconds between claim attempts
    tick_interval: float = 1.0  # running: seconds between heartbeats / relays
    maintenance_interval: float = 5.0  # seconds between lease-expiry sweeps
    kill_grace_s: float = 3.0  # SIGTERM -> SIGKILL
    exit_when_idle: bool = False
    name: str | None = None
    stats_file: Path | None = None  # write claim latencies here on exit (benchmarks)
    allow_remote_code: bool = False  # run specs with trust_remote_code: true (the operator's choice)
    retry_backoff_s: float = 30.0  # a transient failure (exit 75) waits this, doubling per attempt
    retry_backoff_max_s: float = 600.0
    executor: str = "local"  # "local": a child process group; "slurm": a Slurm batch job (workers.slurm)
    slurm: slurm.SlurmOptions = field(default_factory=slurm.SlurmOptions)

    @property
    def capacity(self) -> int:
        """GPUs a claimed job may need: this host's, or, with Slurm, any number (Slurm allocates)."""
        return SLURM_CAPACITY if self.executor == "slurm" else len(self.devices)


class Worker:
    def __init__(self, engine: Engine, workspace: Workspace, config: WorkerConfig, database_url: str = "") -> None:
        self.engine = engine
        self.workspace = workspace
        self.config = config
        self.database_url = database_url or str(engine.url)
        self.host = socket.gethostname()
        self.name = config.name or f"{self.host}:{os.getpid()}"
        self.id: int | None = None
        self.stopping = False
        self.claim_latencies_ms: list[float] = []
        self.jobs_done = 0
        self._last_maintenance = 0.0
        self._deferred_success: int | None = None  # an inline job done, not yet recorded

    # --- database access -------------------------------------------------------------

    def _db(self, fn: Callable[[Connection], T], *, deadline_s: float | None = 30.0, write: bool = True) -> T:
        def on_retry(err: BaseException, n: int) -> None:
            if n in (1, 10) or n % 50 == 0:
                log.warning("database busy or unreachable (%s); retrying (%d)", _short(err), n)

        return transact(self.engine, fn, write=write, deadline_s=deadline_s, on_retry=on_retry)

    def _db_or_none(self, fn: Callable[[Connection], T], **kw: Any) -> T | None:
        """Like _db, but a failure that outlasted the retries is logged, not raised."""
        try:
            return self._db(fn, **kw)
        except DBAPIError as err:
            log.warning("database operation failed, will try again later: %s", _short(err))
            return None

    def _db_until_done(self, fn: Callable[[Connection], T]) -> T | None:
        """For a job's final state: keep trying (the result must not be lost) unless the
        worker is stopping, in which case give up after a minute (the lease then
        expires and the job runs again: at-least-once)."""
        start = time.monotonic()
        while True:
            try:
                return self._db(fn, deadline_s=30.0)
            except DBAPIError as err:
                if not is_retryable(err):
                    raise
                if self.stopping and time.monotonic() - start > 60:
                    log.error("could not record a job's result; its lease will expire: %s", _short(err))
                    return None
                log.warning("could not record a job's result yet: %s", _short(err))

    # --- main loop -------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("%s: stopping (a running job is handed back to the queue)", signal.Signals(signum).name)
        self.stopping = True

    def run(self) -> int:
        """Run until stopped (SIGTERM/SIGINT) or, with exit_when_idle, out of work."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        cfg = self.config
        self.workspace.runs_dir.mkdir(parents=True, exist_ok=True)
        while self.id is None and not self.stopping:
            registered = cfg.devices if cfg.executor == "local" else list(SLURM_DEVICES)
            self.id = self._db_or_none(lambda c: queue.register_worker(
                c, name=self.name, host=self.host, pid=os.getpid(), devices=registered, kinds=cfg.kinds))
        devices = "allocated by Slurm" if cfg.executor == "slurm" else ",".join(cfg.devices) or "none (CPU)"
        log.info("worker %s (%s) started: devices %s, kinds %s, lease %gs", self.id, self.name, devices,
                 ",".join(cfg.kinds) if cfg.kinds else "all", cfg.lease_seconds)
        try:
            if cfg.executor == "slurm":
                self._adopt()
            while not self.stopping:
                try:
                    if not self._step():
                        break
                except Exception:  # noqa: BLE001 - a worker logs and carries on
                    log.exception("unexpected error in the worker loop; continuing")
                    self._sleep(1.0)
        finally:
            if self.id is not None:
                self._flush_deferred()
                self._db_or_none(lambda c: queue.stop_worker(c, self.id), deadline_s=10.0)
            self._write_stats()
            log.info("worker %s stopped after %d job(s)", self.id, self.jobs_done)
        return 0

    def _adopt(self) -> None:
        """Slurm executor, at start: take over the running jobs of this worker's earlier
        incarnation (same name, stopped or silent), whose Slurm jobs ran on meanwhile,
        and watch each again (its run directory names its Slurm job)."""
        timeout = max(3 * self.config.lease_seconds, 30.0)
        jobs = self._db_or_none(lambda c: queue.adopt(c, self.id, name=self.name,
                                                      lease_seconds=self.config.lease_seconds, stale_s=timeout)) or []
        for job in jobs:
            log.info("job %d (%s): adopted from an earlier worker named %s", job.id, job.kind, self.name)
        for job in jobs:
            if self.stopping:
                break
            self._run_job(job)
            self.jobs_done += 1

    def _step(self) -> bool:
        """One round: maintenance, then claim and run one job or idle. False = exit."""
        self._maintenance()
        job = self._claim()
        if job is not None:
            self._run_job(job)
            self.jobs_done += 1
            # Let workers the kernel just woke (waiting for the SQLite writer lock) run
            # before this one claims again; otherwise a worker finishing instant jobs
            # re-takes the lock first and the others' waits grow long (benchmarks/queue.py).
            os.sched_yield()
            return True
        if self.config.exit_when_idle:
            pending = self._db_or_none(lambda c: queue.has_pending_work(
                c, devices=self.config.capacity, kinds=self.config.kinds), write=False)
            if pending is False:
                log.info("no work left: exiting (--exit-when-idle)")
                return False
        self._sleep(self.config.poll_interval * random.uniform(0.8, 1.2))
        return True

    def _maintenance(self) -> None:
        """Every few seconds: renew this worker's last_seen_at, recover expired leases."""
        now = time.monotonic()
        if now - self._last_maintenance < min(self.config.maintenance_interval, self.config.lease_seconds / 2):
            return
        self._last_maintenance = now
        timeout = max(3 * self.config.lease_seconds, 30.0)

        def sweep(conn: Connection) -> list[tuple[int, str]]:
            queue.touch_worker(conn, self.id)
            return queue.requeue_expired(conn, worker_timeout_s=timeout)

        for job_id, status in self._db_or_none(sweep, deadline_s=10.0) or []:
            log.warning("job %d: lease expired -> %s", job_id, status)

    def _claim(self) -> Row | None:
        """Claim a job, in the same transaction recording the success of the inline job
        run just before (if any)."""
        deferred = self._deferred_success

        def claim(conn: Connection) -> Row | None:
            if deferred is not None:
                queue.succeed(conn, deferred, self.id)
            return queue.claim(conn, self.id, devices=self.config.capacity, kinds=self.config.kinds,
                               lease_seconds=self.config.lease_seconds)

        t0 = time.perf_counter()
        try:
            job = self._db(claim)
        except DBAPIError as err:
            log.warning("could not claim (will try again): %s", _short(err))
            return None
        self._deferred_success = None
        if job is not None:
            self.claim_latencies_ms.append((time.perf_counter() - t0) * 1000)
        return job

    def _flush_deferred(self) -> None:
        if self._deferred_success is not None:
            job_id = self._deferred_success
            if self._db_until_done(lambda c: queue.succeed(c, job_id, self.id)) is not None:
                self._deferred_success = None

    def _sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and (left := end - time.monotonic()) > 0:
            time.sleep(min(left, 0.1))

    # --- one job ---------------------------------------------------------------------

    def _run_job(self, job: Row) -> None:
        try:
            run_dir = self.workspace.resolve(self.workspace.inside(job.run_dir or default_run_dir(job.id, job.kind)))
        except ValueError as err:  # written past the service layer: never run it there
            self._finish_failure(job, f"run_dir: {err}", exit_code=contract.EXIT_BAD_INPUT)
            return
        spec = dict(job.spec or {})
        if not self.config.allow_remote_code and (where := remote_code_fields(spec)):
            self._finish_failure(
                job, f"{where[0]}: trust_remote_code is true, and this worker does not run model code from the hub; "
                     "the operator allows it with `sami worker --allow-remote-code`, or set it false",
                exit_code=contract.EXIT_BAD_INPUT)
            return
        log.debug("job %d (%s) claimed: attempt %d of %d, run dir %s", job.id, job.kind, job.attempts,
                  job.max_attempts, run_dir)
        if runs_inline(job.kind, spec):
            try:
                record_inline_execution(self.workspace.runs_dir, job.id)
            except OSError as err:
                self._finish_failure(job, f"could not run: {err}", exit_code=None)
                return
            # Recorded in the next claim's transaction: one write transaction per job.
            self._deferred_success = job.id
            return
        log.info("job %d (%s) claimed: attempt %d of %d, run dir %s", job.id, job.kind, job.attempts,
                 job.max_attempts, run_dir)
        launch_spec = (spec.get("launch") or {}) if job.kind == "train" else {}
        member_of = launch_spec.get("member_of")  # a member node of another (the leader's) train job
        members: list[int] = []
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            spec_path = run_dir / contract.JOB_SPEC_FILE
            if member_of is None:  # a member runs the leader's job_spec.json, in the leader's run dir
                _write_json_atomic(spec_path, spec)
                (run_dir / contract.EXIT_STATUS_FILE).unlink(missing_ok=True)  # an earlier attempt's
            devices = self.config.devices[: job.devices_required]
            if self.config.executor == "slurm":
                if member_of is not None:
                    raise contract.KindError(f"a member node of job {member_of} (launched by a local worker) "
                                             "cannot run under Slurm; run local workers on the other nodes")
                self._run_slurm(job, spec, run_dir, spec_path)
                return
            nodes = int(launch_spec.get("nodes") or 1)
            rendezvous = None
            if nodes > 1 and member_of is None:
                endpoint = launch_spec.get("endpoint") or f"{self.host}:{slurm.RDZV_PORT_BASE + job.id % 1000}"
                rendezvous = (endpoint, f"sami-{job.id}-{job.attempts}")
                members = self._db_until_done(lambda c: queue.enqueue_members(
                    c, job, spec, nodes=nodes, endpoint=endpoint)) or []
                log.info("job %d: node 0 of %d, rendezvous at %s; member jobs %s queued for the other nodes",
                         job.id, nodes, endpoint, members)
            elif nodes > 1:
                rendezvous = (launch_spec["endpoint"], f"sami-{member_of}-{launch_spec.get('attempt')}")
            cmd = contract.build_command(job.kind, spec_path=spec_path, run_dir=run_dir, devices=devices,
                                         nodes=nodes, rendezvous=rendezvous,
                                         procs_per_node=launch_spec.get("procs_per_node"))
        except (OSError, contract.KindError) as err:
            self._finish_failure(job, f"could not start: {err}", exit_code=None)
            return
        try:
            self._run_local(job, cmd, run_dir, devices, member_of=member_of,
                            leader_attempt=launch_spec.get("attempt"))
        finally:
            if members:  # the leader ended: members that never started are not needed any more
                self._db_or_none(lambda c: [queue.cancel(c, m) for m in members])

    def _run_local(self, job: Row, cmd: list[str], run_dir: Path, devices: list[str], *,
                   member_of: int | None = None, leader_attempt: int | None = None) -> None:
        """Run the stage as a child process group on this host and see it through."""
        # Processes of earlier attempts of this job on this host (their worker died, and
        # a stage that ignores its parent-death signal, or its helpers, live on).
        leftovers = launch.tree_pids(None, key=launch.job_key(self.database_url, job.id))
        if leftovers:
            log.warning("job %d: killing %d process(es) left by an earlier attempt", job.id, len(leftovers))
            survivors = launch.kill_tree(None, key=launch.job_key(self.database_url, job.id),
                                         grace_s=self.config.kill_grace_s)
            if survivors:
                log.error("job %d: processes of an earlier attempt survive: %s", job.id, sorted(survivors))
        key = launch.job_key(self.database_url, job.id, job.attempts)
        log_path = run_dir / contract.LOG_FILE
        with open(log_path, "ab") as log_file:
            header = (f"=== {_iso_now()} worker {self.name}: job {job.id} ({job.kind}), attempt {job.attempts}"
                      f" of {job.max_attempts}\n=== $ {shlex.join(cmd)}\n")
            log_file.write(header.encode())
            log_file.flush()
            start_offset = log_file.tell()
            try:
                env = {**launch.child_env(key, devices), **contract.stage_env(job.kind, devices)}
                proc = launch.start(cmd, env=env, cwd=self.workspace.home,
                                    log_file=log_file)
            except OSError as err:
                self._finish_failure(job, f"could not start: {err}", exit_code=None)
                return
        reader = relay.RunDirReader(run_dir, job.metrics_offset or 0, metrics=member_of is None)
        leader = (member_of, leader_attempt) if member_of is not None else None
        outcome = self._watch(job, proc, reader, leader=leader)
        if outcome == "leader" and self._leader_succeeded(member_of, leader_attempt):
            # The leader finished the attempt this node joined: its ranks end with it (the
            # leader's exit may merely have been seen first). Give them time to exit.
            try:
                proc.wait(timeout=LEADER_DONE_GRACE_S)
                outcome = "exited" if proc.returncode == 0 else outcome
            except subprocess.TimeoutExpired:
                pass

        if outcome == "leader":
            survivors = launch.kill_tree(proc, key=key, grace_s=self.config.kill_grace_s)
            note = f"its leader, job {member_of}, no longer runs the attempt it joined; node stopped"
            _append_log(log_path, f"=== {_iso_now()} worker {self.name}: job {job.id}: {note}\n")
            self._db_until_done(lambda c: queue.mark_cancelled(c, job.id, self.id, note=note))
            log.info("job %d: %s%s", job.id, note, f" (survivors {sorted(survivors)})" if survivors else "")
            return
        if outcome in ("cancel", "lost", "stop"):
            survivors = launch.kill_tree(proc, key=key, grace_s=self.config.kill_grace_s)
            gone = "process tree killed" if not survivors else f"processes still alive: {sorted(survivors)}"
            _append_log(log_path, f"=== {_iso_now()} worker {self.name}: {outcome}: {gone}\n")
            if outcome == "cancel":
                self._db_until_done(lambda c: queue.mark_cancelled(c, job.id, self.id,
                                                                   note=f"cancelled while running: {gone}"))
                log.info("job %d cancelled (%s)", job.id, gone)
            elif outcome == "stop":
                status = self._db_until_done(lambda c: queue.release(c, job.id, self.id))
                log.info("job %d handed back (%s; %s)", job.id, status, gone)
            else:
                log.warning("job %d is no longer ours (lease expired): stopped it (%s)", job.id, gone)
            return

        rc, recorded = contract.stage_exit_code(proc.returncode, run_dir)  # and the stage's own account of why
        strays = launch.kill_tree(proc, key=key, grace_s=self.config.kill_grace_s)  # e.g. a stray helper
        if strays:
            log.error("job %d: processes left after the stage exited survive: %s", job.id, sorted(strays))
        self._tick(job, reader)  # the stage's last progress and metrics
        if rc == 0 and member_of is not None:  # the leader ingests the outputs
            self._db_until_done(lambda c: queue.succeed(c, job.id, self.id))
            log.info("job %d (a node of job %d) succeeded", job.id, member_of)
        elif rc == 0:
            self._finish_success(job, run_dir)
        else:
            self._stage_failed(job, rc, recorded, log_path, start_offset)

    def _leader_succeeded(self, leader_id: int | None, attempt: int | None) -> bool:
        """Whether a member's leader succeeded in the attempt the member joined."""
        row = self._db_or_none(lambda c: queue.get_job(c, leader_id), write=False) if leader_id is not None else None
        return row is not None and row.status == "succeeded" and row.attempts == (attempt or 0)

    def _stage_failed(self, job: Row, rc: int, recorded: dict | None, log_path: Path, start_offset: int,
                      note: str = "") -> None:
        """Record a stage's failure: its exit code (or signal), its own reason, the log's tail."""
        tail = relay.redact(relay.log_tail(log_path, start_offset))
        what = note or (f"exit code {rc}" if rc > 0 else f"killed by {_signame(-rc)}")
        if rc == contract.EXIT_BAD_INPUT:
            what += ": bad input, not retried; fix the spec and enqueue it again"
        why = f": {relay.redact(str(recorded['reason']))}" if recorded and recorded.get("reason") else ""
        transient = rc == contract.EXIT_TRANSIENT
        if transient:
            delay = self.retry_delay_s(job.attempts)
            what += f": transient, retried after {delay:g} s while attempts are left"
        self._finish_failure(job, f"stage failed ({what}){why}; last lines of stage.log:\n{tail}",
                             exit_code=rc, transient=transient)

    def _watch(self, job: Row, proc: subprocess.Popen, reader: relay.RunDirReader,
               leader: tuple[int, int | None] | None = None) -> str:
        """Wait for the stage; heartbeat and relay every tick. Returns "exited",
        "cancel", "lost", "stop", or, for a member node (``leader`` = its leader's job id
        and attempt), "leader" when the leader no longer runs that attempt."""
        next_tick = time.monotonic()
        first = True
        while True:
            try:
                proc.wait(timeout=0.05)
                return "exited"
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                return "stop"
            if time.monotonic() >= next_tick:
                reply = self._tick(job, reader, pid=proc.pid if first else None, leader=leader)
                first = first and reply is None  # the pid is stored with the first tick that lands
                if reply in ("cancel", "lost", "leader"):
                    return reply
                next_tick = time.monotonic() + self.config.tick_interval
                self._maintenance()

    # --- the Slurm executor (workers.slurm) -----------------------------------------------

    def _run_slurm(self, job: Row, spec: dict, run_dir: Path, spec_path: Path) -> None:
        """Run one claimed (or adopted) job as a Slurm batch job and see it through:
        submit it, or watch again the Slurm job its run directory names when that one is
        still pending or running (or finished within this very attempt); heartbeat and
        relay every tick; cancel = scancel. On SIGTERM the Slurm job runs on: the job row
        stays running, and this worker restarted under the same name (or, once the lease
        expired, whoever claims the job) takes it up again."""
        log_path = run_dir / contract.LOG_FILE
        slurm_id = None
        record = slurm.read_record(run_dir)
        if record is not None:
            try:
                st = slurm.state(record["slurm_job_id"])
            except slurm.SlurmError as err:
                log.warning("job %d: cannot ask Slurm about job %s: %s", job.id, record["slurm_job_id"], err)
                st = None
            if st is not None and (st.active or record.get("attempt") == job.attempts):
                slurm_id = record["slurm_job_id"]
                log.info("job %d: watching its Slurm job %s again (%s)", job.id, slurm_id, st.state)
                if record.get("attempt") != job.attempts:
                    slurm.write_record(run_dir, slurm_id, job.attempts)
        start_offset = log_path.stat().st_size if log_path.exists() else 0
        if slurm_id is None:
            nodes = slurm.nodes_of(job.kind, spec)
            gpus = self.config.slurm.gpus_per_node if self.config.slurm.gpus_per_node is not None \
                else job.devices_required  # per node
            cmd = contract.build_command(job.kind, spec_path=spec_path, run_dir=run_dir, devices=["0"] * gpus,
                                         procs_per_node=(spec.get("launch") or {}).get("procs_per_node"))
            key = launch.job_key(self.database_url, job.id, job.attempts)
            extra_env = {launch.JOB_KEY_ENV: key, "PYTHONUNBUFFERED": "1",
                         "PYTHONPATH": launch.child_env(key, None)["PYTHONPATH"],  # this project first
                         **contract.stage_env(job.kind, ["0"] * gpus)}
            if gpus == 0:
                extra_env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU job sees no GPU, as with a local worker
            script = slurm.batch_script(cmd, kind=job.kind, job_id=job.id, nodes=nodes, gpus=gpus, env=extra_env)
            args = slurm.sbatch_args(self.config.slurm, job_id=job.id, kind=job.kind,
                                     devices_required=job.devices_required, nodes=nodes, run_dir=run_dir,
                                     workdir=self.workspace.home)
            _append_log(log_path, f"=== {_iso_now()} worker {self.name}: job {job.id} ({job.kind}), attempt "
                                  f"{job.attempts} of {job.max_attempts}\n=== $ sbatch {shlex.join(args)}\n")
            start_offset = log_path.stat().st_size
            env = {k: v for k, v in os.environ.items() if not (gpus and k == "CUDA_VISIBLE_DEVICES")}
            try:
                slurm_id = slurm.submit(script, args, env)
            except slurm.SlurmError as err:
                self._finish_failure(job, f"could not submit to Slurm: {err}", exit_code=None, transient=True)
                return
            slurm.write_record(run_dir, slurm_id, job.attempts)
            log.info("job %d (%s): submitted as Slurm job %s (%d node(s), %d GPU(s) per node)",
                     job.id, job.kind, slurm_id, nodes, gpus)

        reader = relay.RunDirReader(run_dir, job.metrics_offset or 0)
        st, outcome = self._watch_slurm(job, slurm_id, reader)
        if outcome == "stop":
            log.info("job %d: worker stopping; Slurm job %s runs on (a restarted worker named %s adopts it)",
                     job.id, slurm_id, self.name)
            return
        if outcome == "lost":
            log.warning("job %d is no longer ours (lease expired); its Slurm job %s is left to whoever claims it",
                        job.id, slurm_id)
            return
        if outcome == "cancel":
            try:
                slurm.cancel(slurm_id)
                st = slurm.wait_finished(slurm_id, timeout_s=max(30.0, 10 * self.config.kill_grace_s))
                gone = f"scancel {slurm_id}: {st.state if st else 'gone'}"
            except slurm.SlurmError as err:
                gone = f"scancel {slurm_id} failed: {err}"
            _append_log(log_path, f"=== {_iso_now()} worker {self.name}: cancel: {gone}\n")
            self._db_until_done(lambda c: queue.mark_cancelled(c, job.id, self.id,
                                                               note=f"cancelled while running: {gone}"))
            log.info("job %d cancelled (%s)", job.id, gone)
            return
        self._tick(job, reader)  # the stage's last progress and metrics
        if st is None:
            self._stage_failed(job, contract.EXIT_TRANSIENT, None, log_path, start_offset,
                               note=f"Slurm job {slurm_id} is unknown to scontrol and sacct")
            return
        if st.state == "COMPLETED" and st.exit_code == 0:
            self._finish_success(job, run_dir)
            return
        if st.state in slurm.TRANSIENT_STATES:
            rc, recorded, note = contract.EXIT_TRANSIENT, None, f"Slurm job {slurm_id} ended {st.state}"
        elif st.state == "CANCELLED":
            rc, recorded, note = 1, None, f"Slurm job {slurm_id} was cancelled outside sami (scancel?)"
        else:
            raw = -st.signal if st.signal and not st.exit_code else (st.exit_code if st.exit_code else 1)
            rc, recorded = contract.stage_exit_code(raw, run_dir)
            note = f"Slurm job {slurm_id} {st.state}, exit code {rc}" if rc >= 0 else \
                f"Slurm job {slurm_id} {st.state}, killed by {_signame(-rc)}"
        self._stage_failed(job, rc, recorded, log_path, start_offset, note=note)

    def _watch_slurm(self, job: Row, slurm_id: str, reader: relay.RunDirReader
                     ) -> tuple[slurm.SlurmState | None, str]:
        """Poll the Slurm job and heartbeat every tick until it leaves the active states.
        Returns (its last state, "exited" | "cancel" | "lost" | "stop"). A job Slurm does
        not know for a whole lease counts as ended (state None)."""
        unknown_since: float | None = None
        st: slurm.SlurmState | None = None
        while True:
            if self.stopping:
                return st, "stop"
            try:
                st = slurm.state(slurm_id)
            except slurm.SlurmError as err:  # the controller is busy or down: the job may be fine
                log.warning("job %d: %s", job.id, err)
                st = slurm.SlurmState("UNKNOWN")
            if st is None:
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > self.config.lease_seconds:
                    return None, "exited"
            elif st.state != "UNKNOWN" and not st.active:
                return st, "exited"
            reply = self._tick(job, reader)
            if reply in ("cancel", "lost"):
                return st, reply
            self._maintenance()
            self._sleep(self.config.tick_interval)

    def _tick(self, job: Row, reader: relay.RunDirReader, pid: int | None = None,
              leader: tuple[int, int | None] | None = None) -> str | None:
        """Renew the lease, store progress and new metrics: one transaction. Returns the
        heartbeat's reply, or None if the database could not be reached this time (the
        lease outlives a few missed ticks)."""
        progress = reader.progress()
        records, offset = reader.new_metrics()

        def write(conn: Connection) -> str:
            reply = queue.heartbeat(conn, job.id, self.id, lease_seconds=self.config.lease_seconds,
                                    progress=progress, pid=pid)
            if reply != "lost" and (records or offset != reader.metrics_offset):
                try:  # a savepoint: records the database refuses never cost the lease
                    with conn.begin_nested():
                        ingest.upsert_metrics(conn, job.id, records)
                except OperationalError:
                    raise  # a lock or a lost connection: the whole tick is tried again
                except (DBAPIError, ValueError, TypeError, OverflowError) as err:
                    log.warning("job %s: skipping %d metrics records the database refused: %s",
                                job.id, len(records), str(err).splitlines()[0][:300])
                ingest.set_metrics_offset(conn, job.id, offset)
            if reply == "ok" and leader is not None and not queue.leader_running(conn, leader[0], leader[1] or 0):
                return "leader"
            return reply

        reply = self._db_or_none(write, deadline_s=max(5.0, 3 * self.config.tick_interval))
        if reply is not None:
            reader.metrics_offset = offset
        return reply

    def _finish_success(self, job: Row, run_dir: Path | None) -> None:
        try:
            outputs = relay.read_outputs(run_dir) if run_dir is not None else None
        except relay.OutputsError as err:
            self._finish_failure(job, f"stage succeeded but its outputs are unusable: {err}", exit_code=0)
            return
        if outputs is None:
            # Every stage (the diagnostic `sleep` too) writes outputs.json last; exiting 0
            # without it means it did not finish. (Inline `sleep 0` jobs never get here.)
            self._finish_failure(job, f"stage exited 0 but wrote no {contract.OUTPUTS_FILE}: it did not finish "
                                      "(see stage.log)", exit_code=0)
            return

        def finish(conn: Connection) -> bool:
            if not queue.succeed(conn, job.id, self.id, outputs=outputs):
                return False
            relay.ingest_outputs(conn, job, outputs, run_dir, self.workspace)
            return True

        try:
            done = self._db_until_done(finish)
        except (relay.OutputsError, ValueError, TypeError, KeyError, DBAPIError) as err:
            self._finish_failure(job, f"stage succeeded but its outputs could not be stored: {err}", exit_code=0)
            return
        if done:
            log.log(logging.INFO if run_dir is not None else logging.DEBUG, "job %d succeeded", job.id)
            self._mirror(job)
        elif done is False:
            log.warning("job %d finished but was no longer ours (lease expired); result not recorded", job.id)

    def _mirror(self, job: Row) -> None:
        """Copy a succeeded job to the trackers its experiment names (tracking.mirror_job:
        a tracker's failure is a warning in the job's log, never the job's failure)."""
        if job.experiment_id is None:
            return
        try:
            tracking.mirror_job(self.engine, job.id, self.workspace)
        except Exception:  # noqa: BLE001 - the job succeeded; mirroring is best effort
            log.exception("job %d: mirroring to the trackers failed", job.id)

    def retry_delay_s(self, attempts: int) -> float:
        """The backoff after a transient failure of attempt ``attempts`` (1, 2, ...):
        doubling from ``retry_backoff_s``, at most ``retry_backoff_max_s``."""
        cfg = self.config
        return min(cfg.retry_backoff_max_s, cfg.retry_backoff_s * 2 ** max(0, attempts - 1))

    def _finish_failure(self, job: Row, error: str, *, exit_code: int | None, transient: bool = False) -> None:
        delay = self.retry_delay_s(job.attempts) if transient else 0.0
        status = self._db_until_done(lambda c: queue.fail(c, job.id, self.id, error, exit_code=exit_code,
                                                          transient=transient, retry_delay_s=delay))
        log.warning("job %d -> %s: %s", job.id, status or "(no longer ours)", error.splitlines()[0])

    def _write_stats(self) -> None:
        if self.config.stats_file is None:
            return
        _write_json_atomic(self.config.stats_file, {
            "worker_id": self.id, "name": self.name, "jobs": self.jobs_done,
            "claim_latency_ms": self.claim_latencies_ms,
        })


def remote_code_fields(spec: Any, path: str = "") -> list[str]:
    """The dotted paths in a job spec where ``trust_remote_code`` is true."""
    found: list[str] = []
    if isinstance(spec, dict):
        for key, value in spec.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "trust_remote_code" and value is True:
                found.append(where)
            else:
                found += remote_code_fields(value, where)
    elif isinstance(spec, list):
        for i, value in enumerate(spec):
            found += remote_code_fields(value, f"{path}.{i}")
    return found


def detect_devices() -> list[str]:
    """GPU ids this worker may use when --devices is not given: $CUDA_VISIBLE_DEVICES,
    else what ``nvidia-smi`` lists, else none (a CPU worker). Imports no torch."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip() and d.strip() != "-1"]
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in out.splitlines() if line.strip()]


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def _append_log(path: Path, text: str) -> None:
    with open(path, "a") as f:
        f.write(text)


def _iso_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _signame(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def _short(err: BaseException) -> str:
    return str(err).splitlines()[0][:200]
