"""The job queue's operations: enqueue, claim, heartbeat, finish, cancel, retry.

Every function takes a :class:`~sqlalchemy.engine.Connection` already in a transaction
(use ``db.engine.transact(engine, lambda conn: claim(conn, ...))``), so that callers
can group operations and retry them as a unit when the database is busy.

State changes go only along :data:`TRANSITIONS`; each is one ``UPDATE ... WHERE
status IN (allowed sources)`` that reports whether it applied, so two processes
racing on one job cannot both win. Claiming is one ``UPDATE ... RETURNING`` whose
subquery picks the best claimable job; on PostgreSQL that subquery locks its row
``FOR UPDATE SKIP LOCKED`` (concurrent claimers skip it instead of waiting), and on
SQLite the caller's write transaction (``BEGIN IMMEDIATE``) already excludes other
writers.

Attempts: ``attempts`` counts claims. A job whose lease expires (its worker died or
lost the database for longer than the lease) goes back to the queue with that attempt
counted, until ``max_attempts`` (then it fails): at-least-once execution, which stages
tolerate by resuming on their run directory. A worker that is asked to stop (SIGTERM)
hands its job back with :func:`release`, which does *not* count the attempt: the job
did not fail, its worker was shut down.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import Update, bindparam, exists, func, insert, or_, select, update
from sqlalchemy.engine import Connection, Row

from db.models import (
    BLOCKED,
    CANCELLED,
    FAILED,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    UTCDateTime,
    Worker,
    job_dependencies,
    utcnow,
)
from db.workspace import default_run_dir

jobs = Job.__table__
workers = Worker.__table__
deps = job_dependencies

# Allowed state changes: source -> targets.
TRANSITIONS: dict[str, frozenset[str]] = {
    QUEUED: frozenset({RUNNING, CANCELLED, BLOCKED}),
    RUNNING: frozenset({SUCCEEDED, FAILED, CANCELLED, QUEUED}),  # QUEUED: lease expired / handed back
    BLOCKED: frozenset({QUEUED, CANCELLED}),
    FAILED: frozenset({QUEUED}),  # retry
    CANCELLED: frozenset({QUEUED}),  # retry
    SUCCEEDED: frozenset(),
}
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
# A dependency in one of these states blocks its dependants.
_BLOCKING = (FAILED, CANCELLED, BLOCKED)

HeartbeatReply = Literal["ok", "cancel", "lost"]


class QueueError(ValueError):
    """A queue operation was refused; the message says why (for the CLI and the app)."""


class TransitionError(QueueError):
    """A state change that :data:`TRANSITIONS` does not allow (a programming error)."""


def _check(from_states: Iterable[str], to: str) -> tuple[str, ...]:
    sources = tuple(sorted(set(from_states)))
    for s in sources:
        if to not in TRANSITIONS.get(s, ()):
            raise TransitionError(f"job state change {s} -> {to} is not allowed")
    return sources


def transition(
    conn: Connection,
    job_id: int,
    to: str,
    *,
    from_: str | Iterable[str],
    where: Sequence[Any] = (),
    now: datetime | None = None,
    **values: Any,
) -> bool:
    """Move job ``job_id`` from one of ``from_`` to ``to`` (plus extra ``where``
    conditions and column ``values``) in one statement; return whether it applied."""
    sources = _check([from_] if isinstance(from_, str) else from_, to)
    stmt = (
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status.in_(sources), *where)
        .values(status=to, updated_at=now or utcnow(), **values)
    )
    return conn.execute(stmt).rowcount == 1


# --- enqueue --------------------------------------------------------------------------


def enqueue(
    conn: Connection,
    kind: str,
    spec: dict | None = None,
    *,
    depends_on: Iterable[int] = (),
    name: str | None = None,
    experiment_id: int | None = None,
    constitution_id: int | None = None,
    devices_required: int = 0,
    priority: int = 0,
    max_attempts: int = 3,
    run_dir: str | None = None,
    iteration: int | None = None,
    label: str | None = None,
    now: datetime | None = None,
) -> int:
    """Add a job and its dependency edges; return its id.

    The job starts ``queued``, or ``blocked`` when a dependency already failed, was
    cancelled or is blocked. ``run_dir`` defaults to ``runs/job-<id>-<kind>`` (relative
    to the workspace)."""
    return enqueue_many(conn, [dict(
        kind=kind, spec=spec, depends_on=depends_on, name=name, experiment_id=experiment_id,
        constitution_id=constitution_id, devices_required=devices_required, priority=priority,
        max_attempts=max_attempts, run_dir=run_dir, iteration=iteration, label=label,
    )], now=now)[0]


_ENQUEUE_KEYS = {"kind", "spec", "depends_on", "name", "experiment_id", "constitution_id",
                 "devices_required", "priority", "max_attempts", "run_dir", "iteration", "label"}


def enqueue_many(conn: Connection, items: Sequence[dict[str, Any]], *, now: datetime | None = None) -> list[int]:
    """Enqueue several jobs in a few statements (each item: :func:`enqueue`'s
    arguments as a dict, ``kind`` required); return their ids in order. Dependencies
    must name jobs that exist already (enqueue a DAG level by level)."""
    now = now or utcnow()
    rows, edges = [], []
    parents_all = sorted({p for it in items for p in it.get("depends_on", ())})
    found: dict[int, str] = {}
    if parents_all:
        found = dict(conn.execute(select(jobs.c.id, jobs.c.status).where(jobs.c.id.in_(parents_all))).all())
        missing = [p for p in parents_all if p not in found]
        if missing:
            raise QueueError(f"depends on unknown job(s): {', '.join(map(str, missing))}")
    for it in items:
        unknown = set(it) - _ENQUEUE_KEYS
        if unknown:
            raise QueueError(f"unknown enqueue field(s): {', '.join(sorted(unknown))}")
        if it.get("devices_required", 0) < 0:
            raise QueueError("devices_required must be >= 0")
        if it.get("max_attempts", 3) < 1:
            raise QueueError("max_attempts must be >= 1")
        parents = sorted(set(it.get("depends_on", ())))
        bad = [p for p in parents if found[p] in _BLOCKING]
        rows.append({
            "kind": it["kind"], "name": it.get("name"), "spec": it.get("spec") or {},
            "status": BLOCKED if bad else QUEUED,
            "error": f"blocked: dependency job {bad[0]} is {found[bad[0]]}" if bad else None,
            "priority": it.get("priority", 0), "experiment_id": it.get("experiment_id"),
            "constitution_id": it.get("constitution_id"), "devices_required": it.get("devices_required", 0),
            "max_attempts": it.get("max_attempts", 3), "run_dir": it.get("run_dir"),
            "iteration": it.get("iteration"), "label": it.get("label"),
            "attempts": 0, "metrics_offset": 0, "created_at": now, "updated_at": now,
        })
        edges.append(parents)
    if not rows:
        return []
    result = conn.execute(insert(jobs).returning(jobs.c.id, sort_by_parameter_order=True), rows)
    ids = [r.id for r in result]
    defaults = [{"b_id": i, "b_run_dir": default_run_dir(i, row["kind"])}
                for i, row in zip(ids, rows, strict=True) if row["run_dir"] is None]
    if defaults:
        conn.execute(
            update(jobs).where(jobs.c.id == bindparam("b_id")).values(run_dir=bindparam("b_run_dir")), defaults
        )
    dep_rows = [{"job_id": i, "depends_on_id": p} for i, parents in zip(ids, edges, strict=True) for p in parents]
    if dep_rows:
        conn.execute(insert(deps), dep_rows)
    return ids


# --- claim, heartbeat, finish (worker side) ---------------------------------------------


def claim(
    conn: Connection,
    worker_id: int,
    *,
    devices: int,
    lease_seconds: float,
    kinds: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Row | None:
    """Atomically take the best claimable job for this worker; return its row or None.

    Claimable: ``queued``, every dependency ``succeeded``, ``devices_required`` at most
    ``devices`` (the worker's GPU count), and of one of ``kinds`` (None = any). Best:
    highest priority, then oldest. The claim counts an attempt and starts a lease.
    """
    now = now or utcnow()
    params: dict[str, Any] = {
        "claim_worker": worker_id, "claim_devices": devices, "claim_now": now,
        "claim_lease": now + timedelta(seconds=lease_seconds),
    }
    if kinds is not None:
        params["claim_kinds"] = list(kinds)
    return conn.execute(_claim_statement(kinds is not None), params).first()


@functools.lru_cache(maxsize=2)
def _claim_statement(filter_kinds: bool) -> Update:
    """The claim statement, built once (building it costs more than running it)."""
    _check([QUEUED], RUNNING)
    cand, parent = jobs.alias("cand"), jobs.alias("parent")
    unmet = exists().where(
        deps.c.job_id == cand.c.id, deps.c.depends_on_id == parent.c.id, parent.c.status != SUCCEEDED
    )
    now, lease = bindparam("claim_now", type_=UTCDateTime()), bindparam("claim_lease", type_=UTCDateTime())
    pick = select(cand.c.id).where(
        cand.c.status == QUEUED, cand.c.devices_required <= bindparam("claim_devices"), ~unmet,
        or_(cand.c.retry_after.is_(None), cand.c.retry_after <= now),
    )
    if filter_kinds:
        pick = pick.where(cand.c.kind.in_(bindparam("claim_kinds", expanding=True)))
    pick = pick.order_by(cand.c.priority.desc(), cand.c.id).limit(1).with_for_update(skip_locked=True, of=cand)
    return (
        update(jobs)
        .where(jobs.c.id == pick.scalar_subquery(), jobs.c.status == QUEUED)
        .values(
            status=RUNNING, worker_id=bindparam("claim_worker"), attempts=jobs.c.attempts + 1, pid=None,
            started_at=now, heartbeat_at=now, lease_expires_at=lease, finished_at=None, exit_code=None,
            cancel_requested_at=None, updated_at=now,
        )
        .returning(*_CLAIM_RETURNS)
    )


# What a worker needs to run a claimed job (fewer columns: less to decode per claim).
_CLAIM_RETURNS = [jobs.c[name] for name in (
    "id", "kind", "name", "spec", "status", "priority", "experiment_id", "constitution_id",
    "devices_required", "attempts", "max_attempts", "worker_id", "metrics_offset", "run_dir", "iteration", "label",
)]


def adopt(
    conn: Connection,
    worker_id: int,
    *,
    name: str,
    lease_seconds: float,
    stale_s: float,
    now: datetime | None = None,
) -> list[Row]:
    """Take over the running jobs of earlier workers of the same ``name`` that stopped or
    have not been seen for ``stale_s`` (a restarted worker whose jobs run on without it,
    e.g. as Slurm jobs). Each job keeps its attempt count; its lease restarts. Returns
    the jobs' rows as :func:`claim` does."""
    now = now or utcnow()
    earlier = select(workers.c.id).where(
        workers.c.name == name, workers.c.id != worker_id,
        or_(workers.c.status != "running", workers.c.last_seen_at < now - timedelta(seconds=stale_s)),
    )
    return list(conn.execute(
        update(jobs)
        .where(jobs.c.status == RUNNING, jobs.c.worker_id.in_(earlier))
        .values(worker_id=worker_id, heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_seconds),
                updated_at=now)
        .returning(*_CLAIM_RETURNS)
    ).all())


def enqueue_members(conn: Connection, leader: Row, spec: dict, *, nodes: int, endpoint: str,
                    now: datetime | None = None) -> list[int]:
    """A train job over ``nodes`` machines, claimed by its leader (node 0): enqueue the
    K-1 member jobs that other workers claim to join it. Each is a ``train`` row on the
    leader's run directory whose spec's ``launch`` names the leader and its attempt
    (``member_of``, ``attempt``) and the rendezvous ``endpoint``; it needs the leader's
    GPUs, runs first among queued jobs (priority + 1), once (max_attempts 1: a retry is
    the leader's), and belongs to no experiment (its outputs are the leader's)."""
    member_spec = {**spec, "launch": {**(spec.get("launch") or {}), "nodes": nodes, "endpoint": endpoint,
                                      "member_of": leader.id, "attempt": leader.attempts}}
    base = leader.name or f"job {leader.id}"
    return enqueue_many(conn, [
        {"kind": "train", "spec": member_spec, "name": f"{base} node {k}", "devices_required": leader.devices_required,
         "priority": leader.priority + 1, "max_attempts": 1, "run_dir": leader.run_dir, "label": leader.label}
        for k in range(1, nodes)
    ], now=now)


def leader_running(conn: Connection, leader_id: int, attempt: int) -> bool:
    """Whether a member's leader still runs the attempt the member joined."""
    row = conn.execute(select(jobs.c.status, jobs.c.attempts).where(jobs.c.id == leader_id)).first()
    return row is not None and row.status == RUNNING and row.attempts == attempt


def heartbeat(
    conn: Connection,
    job_id: int,
    worker_id: int,
    *,
    lease_seconds: float,
    progress: dict | None = None,
    pid: int | None = None,
    now: datetime | None = None,
) -> HeartbeatReply:
    """Renew the lease of a job this worker runs (and store its progress / pid).

    Returns ``"ok"``; ``"cancel"`` when someone asked to cancel it (the worker then
    kills it and calls :func:`mark_cancelled`); ``"lost"`` when the job is no longer
    this worker's (its lease expired and it was requeued): the worker must stop it and
    write nothing more about it.

    ``progress`` keys: done, total, unit, message, eta_s.
    """
    now = now or utcnow()
    values: dict[str, Any] = {"heartbeat_at": now, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
    if pid is not None:
        values["pid"] = pid
    if progress is not None:
        values.update(
            progress_done=progress.get("done"), progress_total=progress.get("total"),
            progress_unit=progress.get("unit"), progress_message=progress.get("message"),
            progress_eta_s=progress.get("eta_s"), progress_updated_at=now, updated_at=now,
        )
    row = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == RUNNING, jobs.c.worker_id == worker_id)
        .values(**values)
        .returning(jobs.c.cancel_requested_at)
    ).first()
    if row is None:
        return "lost"
    return "cancel" if row.cancel_requested_at is not None else "ok"


def succeed(
    conn: Connection, job_id: int, worker_id: int, *, outputs: dict | None = None, now: datetime | None = None
) -> bool:
    """running -> succeeded, if this worker still holds the job."""
    now = now or utcnow()
    params = {"s_id": job_id, "s_worker": worker_id, "s_outputs": outputs, "s_now": now}
    return conn.execute(_succeed_statement(), params).rowcount == 1


@functools.lru_cache(maxsize=1)
def _succeed_statement() -> Update:
    """The transition running -> succeeded, built once: it runs once per job."""
    _check([RUNNING], SUCCEEDED)
    now = bindparam("s_now", type_=UTCDateTime())
    return (
        update(jobs)
        .where(jobs.c.id == bindparam("s_id"), jobs.c.status == RUNNING, jobs.c.worker_id == bindparam("s_worker"))
        .values(status=SUCCEEDED, outputs=bindparam("s_outputs", type_=jobs.c.outputs.type), exit_code=0,
                error=None, finished_at=now, lease_expires_at=None, updated_at=now)
    )


def fail(
    conn: Connection,
    job_id: int,
    worker_id: int,
    error: str,
    *,
    exit_code: int | None = None,
    transient: bool = False,
    retry_delay_s: float = 0.0,
    now: datetime | None = None,
) -> str | None:
    """Record a failed attempt. A ``transient`` failure requeues the job while it has
    attempts left, claimable again after ``retry_delay_s``; otherwise (or once they are
    spent) it fails and its dependants are blocked. Returns the job's new status, or None
    if this worker no longer held it."""
    now = now or utcnow()
    mine = jobs.c.worker_id == worker_id
    if transient and transition(
        conn, job_id, QUEUED, from_=RUNNING, where=[mine, jobs.c.attempts < jobs.c.max_attempts], now=now,
        worker_id=None, pid=None, lease_expires_at=None, error=error, exit_code=exit_code,
        retry_after=now + timedelta(seconds=max(0.0, retry_delay_s)) if retry_delay_s > 0 else None,
    ):
        return QUEUED
    if transition(
        conn, job_id, FAILED, from_=RUNNING, where=[mine], now=now,
        error=error, exit_code=exit_code, finished_at=now, lease_expires_at=None,
    ):
        block_dependants(conn, job_id, now=now)
        return FAILED
    return None


def release(
    conn: Connection, job_id: int, worker_id: int, *, count_attempt: bool = False, now: datetime | None = None
) -> str | None:
    """A stopping worker hands its running job back: running -> queued, the attempt
    not counted unless ``count_attempt``. A job whose cancellation was requested is
    cancelled instead. Returns the new status, or None if the worker no longer held it."""
    now = now or utcnow()
    mine = jobs.c.worker_id == worker_id
    attempts = jobs.c.attempts if count_attempt else jobs.c.attempts - 1  # claim counted it: >= 1
    if transition(
        conn, job_id, QUEUED, from_=RUNNING, where=[mine, jobs.c.cancel_requested_at.is_(None)], now=now,
        worker_id=None, pid=None, lease_expires_at=None, attempts=attempts,
    ):
        return QUEUED
    return CANCELLED if mark_cancelled(conn, job_id, worker_id, now=now) else None


def mark_cancelled(
    conn: Connection, job_id: int, worker_id: int, *, note: str = "cancelled while running",
    now: datetime | None = None,
) -> bool:
    """running -> cancelled, once the worker has killed the job's processes (``note``,
    e.g. whether they are confirmed gone, goes to the job's error column)."""
    now = now or utcnow()
    if transition(
        conn, job_id, CANCELLED, from_=RUNNING, where=[jobs.c.worker_id == worker_id], now=now,
        finished_at=now, lease_expires_at=None, error=note,
    ):
        block_dependants(conn, job_id, now=now)
        return True
    return False


def requeue_expired(
    conn: Connection, *, now: datetime | None = None, worker_timeout_s: float = 120.0
) -> list[tuple[int, str]]:
    """Recover running jobs whose lease expired (their worker died or is cut off).

    Each goes back to ``queued`` with its attempt counted, or to ``failed`` when its
    attempts are spent, or to ``cancelled`` if cancellation was requested. Workers
    not seen for ``worker_timeout_s`` are marked ``lost``. Returns (job id, new status).
    """
    now = now or utcnow()
    expired = jobs.c.lease_expires_at < now
    rows = conn.execute(
        select(jobs.c.id, jobs.c.attempts, jobs.c.max_attempts, jobs.c.worker_id, jobs.c.cancel_requested_at)
        .where(jobs.c.status == RUNNING, expired)
    ).all()
    done: list[tuple[int, str]] = []
    for r in rows:
        what = f"lease expired on worker {r.worker_id} (attempt {r.attempts} of {r.max_attempts})"
        if r.cancel_requested_at is not None:
            if transition(conn, r.id, CANCELLED, from_=RUNNING, where=[expired], now=now,
                          finished_at=now, lease_expires_at=None, error=f"cancelled; {what}"):
                block_dependants(conn, r.id, now=now)
                done.append((r.id, CANCELLED))
        elif r.attempts >= r.max_attempts:
            if transition(conn, r.id, FAILED, from_=RUNNING, where=[expired], now=now,
                          finished_at=now, lease_expires_at=None, error=f"worker lost: {what}"):
                block_dependants(conn, r.id, now=now)
                done.append((r.id, FAILED))
        elif transition(conn, r.id, QUEUED, from_=RUNNING, where=[expired], now=now,
                        worker_id=None, pid=None, lease_expires_at=None, error=f"requeued: {what}"):
            done.append((r.id, QUEUED))
    conn.execute(
        update(workers)
        .where(workers.c.status == "running", workers.c.last_seen_at < now - timedelta(seconds=worker_timeout_s))
        .values(status="lost")
    )
    return done


# --- cancel, retry, dependants (user side) -------------------------------------------------


def cancel(conn: Connection, job_id: int, *, now: datetime | None = None) -> str:
    """Cancel a job. Queued or blocked: cancelled at once (returns ``"cancelled"``).
    Running: cancellation is requested and its worker kills the process tree and then
    marks it cancelled (returns ``"cancelling"``). Finished: nothing changes (returns
    ``"already <status>"``). Unknown id: QueueError."""
    now = now or utcnow()
    if transition(conn, job_id, CANCELLED, from_=(QUEUED, BLOCKED), now=now, finished_at=now,
                  error="cancelled before it ran"):
        block_dependants(conn, job_id, now=now)
        return "cancelled"
    requested = conn.execute(
        update(jobs)
        .where(jobs.c.id == job_id, jobs.c.status == RUNNING)
        .values(cancel_requested_at=func.coalesce(jobs.c.cancel_requested_at, now), updated_at=now)
    ).rowcount
    if requested:
        return "cancelling"
    status = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one_or_none()
    if status is None:
        raise QueueError(f"no job {job_id}")
    return f"already {status}"


def retry(conn: Connection, job_id: int, *, now: datetime | None = None) -> list[int]:
    """Re-queue a failed, cancelled or blocked job with a fresh attempt budget, and
    unblock its dependants. Returns the ids of the dependants unblocked.

    A blocked job is re-queued only once none of its dependencies is failed, cancelled
    or blocked (retry those first); a job whose dependencies are in that state is
    re-queued as blocked."""
    now = now or utcnow()
    row = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
    if row is None:
        raise QueueError(f"no job {job_id}")
    bad = _blocking_parents(conn, job_id)
    if row.status == BLOCKED:
        if bad:
            root, status = _root_cause(conn, bad)
            raise QueueError(f"job {job_id} is blocked by job {root} ({status}): retry that one first")
        transition(conn, job_id, QUEUED, from_=BLOCKED, now=now, error=None)
        return unblock_dependants(conn, job_id, now=now)
    reset = dict(
        attempts=0, error=None, exit_code=None, finished_at=None, cancel_requested_at=None, retry_after=None,
        worker_id=None, pid=None, lease_expires_at=None,
    )
    if not transition(conn, job_id, QUEUED, from_=(FAILED, CANCELLED), now=now, **reset):
        raise QueueError(f"job {job_id} is {row.status}: only failed, cancelled or blocked jobs can be retried")
    if bad:
        transition(conn, job_id, BLOCKED, from_=QUEUED, now=now,
                   error=f"blocked: dependency job {bad[0][0]} is {bad[0][1]}")
        return []
    return unblock_dependants(conn, job_id, now=now)


def _blocking_parents(conn: Connection, job_id: int) -> list[tuple[int, str]]:
    return [
        (r.id, r.status)
        for r in conn.execute(
            select(jobs.c.id, jobs.c.status)
            .join(deps, deps.c.depends_on_id == jobs.c.id)
            .where(deps.c.job_id == job_id, jobs.c.status.in_(_BLOCKING))
            .order_by(jobs.c.id)
        )
    ]


def _root_cause(conn: Connection, bad: list[tuple[int, str]]) -> tuple[int, str]:
    """Follow blocked dependencies up to a failed or cancelled job."""
    seen: set[int] = set()
    while bad:
        for job_id, status in bad:
            if status != BLOCKED:
                return job_id, status
        seen.update(j for j, _ in bad)
        nxt = [p for j, _ in bad for p in _blocking_parents(conn, j) if p[0] not in seen]
        if not nxt:
            return bad[0]
        bad = nxt
    raise AssertionError("unreachable")


def block_dependants(conn: Connection, job_id: int, *, now: datetime | None = None) -> list[int]:
    """Block the queued dependants of ``job_id``, transitively; return their ids."""
    now = now or utcnow()
    _check([QUEUED], BLOCKED)
    root = conn.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one()
    reason = f"blocked: dependency job {job_id} {root}"
    blocked: list[int] = []
    frontier = [job_id]
    while frontier:
        children = select(deps.c.job_id).where(deps.c.depends_on_id.in_(frontier))
        frontier = list(conn.execute(
            update(jobs)
            .where(jobs.c.status == QUEUED, jobs.c.id.in_(children))
            .values(status=BLOCKED, error=reason, updated_at=now)
            .returning(jobs.c.id)
        ).scalars())
        blocked += frontier
    return sorted(blocked)


def unblock_dependants(conn: Connection, job_id: int, *, now: datetime | None = None) -> list[int]:
    """Re-queue blocked dependants of ``job_id`` (transitively) that no longer have a
    failed, cancelled or blocked dependency; return their ids."""
    now = now or utcnow()
    _check([BLOCKED], QUEUED)
    parent = jobs.alias("parent")
    still_bad = exists().where(
        deps.c.job_id == jobs.c.id, deps.c.depends_on_id == parent.c.id, parent.c.status.in_(_BLOCKING)
    )
    unblocked: list[int] = []
    frontier = [job_id]
    while frontier:
        children = select(deps.c.job_id).where(deps.c.depends_on_id.in_(frontier))
        frontier = list(conn.execute(
            update(jobs)
            .where(jobs.c.status == BLOCKED, jobs.c.id.in_(children), ~still_bad)
            .values(status=QUEUED, error=None, updated_at=now)
            .returning(jobs.c.id)
        ).scalars())
        unblocked += frontier
    return sorted(unblocked)


# --- workers ---------------------------------------------------------------------------


def register_worker(
    conn: Connection, *, name: str, host: str, pid: int, devices: Sequence[str], kinds: Sequence[str] | None,
    now: datetime | None = None,
) -> int:
    now = now or utcnow()
    return conn.execute(
        insert(workers)
        .values(name=name, host=host, pid=pid, devices=list(devices), kinds=None if kinds is None else list(kinds),
                status="running", started_at=now, last_seen_at=now)
        .returning(workers.c.id)
    ).scalar_one()


def touch_worker(conn: Connection, worker_id: int, *, now: datetime | None = None) -> None:
    """A worker's own heartbeat (``last_seen_at``), separate from its jobs' leases."""
    conn.execute(update(workers).where(workers.c.id == worker_id)
                 .values(last_seen_at=now or utcnow(), status="running"))


def stop_worker(conn: Connection, worker_id: int, *, now: datetime | None = None) -> None:
    now = now or utcnow()
    conn.execute(update(workers).where(workers.c.id == worker_id)
                 .values(status="stopped", stopped_at=now, last_seen_at=now))


# --- reads ------------------------------------------------------------------------------


def get_job(conn: Connection, job_id: int) -> Row | None:
    return conn.execute(select(jobs).where(jobs.c.id == job_id)).first()


def list_jobs(
    conn: Connection,
    *,
    experiment_id: int | None = None,
    statuses: Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Row]:
    """Jobs, newest first (see :func:`dependencies` for their edges)."""
    stmt = select(jobs).order_by(jobs.c.id.desc())
    if experiment_id is not None:
        stmt = stmt.where(jobs.c.experiment_id == experiment_id)
    if statuses is not None:
        stmt = stmt.where(jobs.c.status.in_(list(statuses)))
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(conn.execute(stmt).all())


def dependencies(conn: Connection, job_ids: Iterable[int]) -> dict[int, list[int]]:
    """job id -> the ids it depends on (for the given jobs)."""
    out: dict[int, list[int]] = {j: [] for j in job_ids}
    if out:
        for r in conn.execute(select(deps).where(deps.c.job_id.in_(list(out))).order_by(deps.c.depends_on_id)):
            out[r.job_id].append(r.depends_on_id)
    return out


def has_pending_work(conn: Connection, *, devices: int, kinds: Sequence[str] | None = None) -> bool:
    """Whether any job this worker could run is queued or running somewhere (a running
    job may still be handed back, or unblock its dependants when it succeeds)."""
    stmt = select(jobs.c.id).where(jobs.c.status.in_((QUEUED, RUNNING)), jobs.c.devices_required <= devices)
    if kinds is not None:
        stmt = stmt.where(jobs.c.kind.in_(list(kinds)))
    return conn.execute(stmt.limit(1)).first() is not None


def status_counts(conn: Connection, *, experiment_id: int | None = None) -> dict[str, int]:
    stmt = select(jobs.c.status, func.count()).group_by(jobs.c.status)
    if experiment_id is not None:
        stmt = stmt.where(jobs.c.experiment_id == experiment_id)
    return dict(conn.execute(stmt).all())


__all__ = [
    "TRANSITIONS", "TERMINAL", "QueueError", "TransitionError", "HeartbeatReply",
    "transition", "enqueue", "enqueue_many", "claim", "heartbeat", "succeed", "fail", "release", "mark_cancelled",
    "requeue_expired", "cancel", "retry", "block_dependants", "unblock_dependants",
    "register_worker", "touch_worker", "stop_worker",
    "get_job", "list_jobs", "dependencies", "has_pending_work", "status_counts",
]
