"""db.queue on a real database: SQLite and PostgreSQL (a private server the tests start)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from db import ingest, queue
from db.engine import make_engine, open_database, transact
from db.models import (
    BLOCKED, CANCELLED, FAILED, JOB_STATUSES, QUEUED, RUNNING, SUCCEEDED, Checkpoint, Job, Metric, utcnow,
)
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason, truncate_all

jobs = Job.__table__


class DB:
    """A fresh migrated database and a registered worker, with short helpers."""

    def __init__(self, url: str) -> None:
        self.engine = open_database(url)
        self.worker = self.tx(lambda c: queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None))

    def tx(self, fn: Callable[[Any], Any]) -> Any:
        return transact(self.engine, fn)

    def enqueue(self, kind: str = "sleep", spec: dict | None = None, **kw: Any) -> int:
        return self.tx(lambda c: queue.enqueue(c, kind, spec or {}, **kw))

    def claim(self, worker: int | None = None, **kw: Any) -> Any:
        kw.setdefault("devices", 0)
        kw.setdefault("lease_seconds", 30)
        return self.tx(lambda c: queue.claim(c, worker or self.worker, **kw))

    def job(self, job_id: int) -> Any:
        return self.tx(lambda c: queue.get_job(c, job_id))

    def status(self, *ids: int) -> list[str]:
        return [self.job(i).status for i in ids]

    def force(self, job_id: int, **values: Any) -> None:
        """Put a job in a state directly (test set-up only)."""
        self.tx(lambda c: c.execute(update(jobs).where(jobs.c.id == job_id).values(**values)))


@pytest.fixture(scope="module")
def pg_url() -> str:
    """One migrated PostgreSQL database for this module, emptied before each test."""
    if reason := postgres_unavailable_reason():
        pytest.skip(reason)
    return new_database_url("postgresql", Path(), migrated=True)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> DB:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        engine = make_engine(url)
        truncate_all(engine)
        engine.dispose()
    else:
        url = new_database_url("sqlite", tmp_path)
    d = DB(url)
    yield d
    d.engine.dispose()


# --- transitions ----------------------------------------------------------------------------

ALLOWED = {
    (QUEUED, RUNNING), (QUEUED, CANCELLED), (QUEUED, BLOCKED),
    (RUNNING, SUCCEEDED), (RUNNING, FAILED), (RUNNING, CANCELLED), (RUNNING, QUEUED),
    (BLOCKED, QUEUED), (BLOCKED, CANCELLED),
    (FAILED, QUEUED), (CANCELLED, QUEUED),
}


def test_transition_table_is_exactly_the_documented_one() -> None:
    table = {(a, b) for a, targets in queue.TRANSITIONS.items() for b in targets}
    assert table == ALLOWED
    assert set(queue.TRANSITIONS) == set(JOB_STATUSES)
    assert queue.TRANSITIONS[SUCCEEDED] == frozenset()


def test_each_transition_applies_or_is_refused(db: DB) -> None:
    for src, dst in itertools.product(JOB_STATUSES, JOB_STATUSES):
        job_id = db.enqueue()
        db.force(job_id, status=src)
        def move(c, job_id=job_id, src=src, dst=dst) -> bool:  # noqa: ANN001
            return queue.transition(c, job_id, dst, from_=src)

        if (src, dst) in ALLOWED:
            assert db.tx(move) is True, (src, dst)
            assert db.status(job_id) == [dst]
            # The same move again does not apply (the job is no longer in `src`), and says so.
            assert db.tx(move) is False, (src, dst)
        else:
            with pytest.raises(queue.TransitionError, match=f"{src} -> {dst}"):
                db.tx(move)
            assert db.status(job_id) == [src]


def test_a_transition_reports_not_applied_when_its_guard_fails(db: DB) -> None:
    job_id = db.enqueue()
    db.claim()
    other_worker = db.worker + 1000
    assert db.tx(lambda c: queue.succeed(c, job_id, other_worker)) is False
    assert db.status(job_id) == [RUNNING]
    assert db.tx(lambda c: queue.succeed(c, job_id, db.worker)) is True
    assert db.tx(lambda c: queue.succeed(c, job_id, db.worker)) is False  # only once
    assert db.status(job_id) == [SUCCEEDED]


# --- enqueue and claim ----------------------------------------------------------------------


def test_enqueue_defaults(db: DB) -> None:
    job_id = db.enqueue("sleep", {"seconds": 2})
    j = db.job(job_id)
    assert (j.status, j.attempts, j.max_attempts, j.devices_required, j.spec) == (QUEUED, 0, 3, 0, {"seconds": 2})
    assert j.run_dir == f"runs/job-{job_id:06d}-sleep"
    assert db.enqueue(run_dir="/elsewhere") and db.job(job_id + 1).run_dir == "/elsewhere"


def test_enqueue_refuses_unknown_dependencies(db: DB) -> None:
    with pytest.raises(queue.QueueError, match="unknown job"):
        db.enqueue(depends_on=[999])


def test_enqueue_behind_a_failed_dependency_is_blocked(db: DB) -> None:
    a = db.enqueue()
    db.force(a, status=FAILED)
    b = db.enqueue(depends_on=[a])
    assert db.status(b) == [BLOCKED]
    assert f"job {a} is failed" in db.job(b).error


def test_enqueue_many_returns_ids_in_order(db: DB) -> None:
    ids = db.tx(lambda c: queue.enqueue_many(c, [{"kind": "sleep", "spec": {"seconds": i}} for i in range(5)]))
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [db.job(i).spec["seconds"] for i in ids] == list(range(5))


def test_claim_takes_priority_then_age_and_counts_an_attempt(db: DB) -> None:
    low = db.enqueue(priority=0)
    high = db.enqueue(priority=5)
    low2 = db.enqueue(priority=0)
    got = [db.claim().id for _ in range(3)]
    assert got == [high, low, low2]
    assert db.claim() is None
    j = db.job(high)
    assert (j.status, j.attempts, j.worker_id) == (RUNNING, 1, db.worker)
    assert j.lease_expires_at > utcnow() + timedelta(seconds=25)


def test_claim_respects_devices_and_kinds(db: DB) -> None:
    gpu2 = db.enqueue("train", devices_required=2)
    cpu = db.enqueue("generate")
    assert db.claim(devices=1, kinds=["train"]) is None  # needs 2 GPUs
    assert db.claim(devices=4, kinds=["sample"]) is None  # wrong kind
    assert db.claim(devices=1).id == cpu
    assert db.claim(devices=2).id == gpu2


def test_claim_waits_for_every_dependency_to_succeed(db: DB) -> None:
    a, b = db.enqueue(), db.enqueue()
    c = db.enqueue(depends_on=[a, b], priority=10)
    assert {db.claim().id, db.claim().id} == {a, b}  # c is not claimable yet
    assert db.claim() is None
    db.tx(lambda conn: queue.succeed(conn, a, db.worker))
    assert db.claim() is None  # b still running
    db.tx(lambda conn: queue.succeed(conn, b, db.worker))
    assert db.claim().id == c


# --- running: heartbeat, finish ----------------------------------------------------------------


def test_heartbeat_renews_the_lease_and_stores_progress(db: DB) -> None:
    job_id = db.enqueue()
    db.claim(lease_seconds=5)
    reply = db.tx(lambda c: queue.heartbeat(c, job_id, db.worker, lease_seconds=100, pid=4321, progress={
        "done": 3, "total": 10, "unit": "steps", "message": "training", "eta_s": 7.5}))
    assert reply == "ok"
    j = db.job(job_id)
    assert (j.progress_done, j.progress_total, j.progress_unit, j.progress_message, j.progress_eta_s, j.pid) == (
        3, 10, "steps", "training", 7.5, 4321)
    assert j.lease_expires_at > utcnow() + timedelta(seconds=90)


def test_heartbeat_tells_the_worker_about_cancel_and_loss(db: DB) -> None:
    job_id = db.enqueue()
    db.claim()
    assert db.tx(lambda c: queue.cancel(c, job_id)) == "cancelling"
    assert db.tx(lambda c: queue.heartbeat(c, job_id, db.worker, lease_seconds=30)) == "cancel"
    assert db.tx(lambda c: queue.heartbeat(c, job_id, db.worker + 1, lease_seconds=30)) == "lost"


def test_failure_blocks_dependants_transitively_but_not_others(db: DB) -> None:
    a = db.enqueue()
    b = db.enqueue(depends_on=[a])
    c = db.enqueue(depends_on=[b])
    other = db.enqueue()
    db.claim(kinds=["sleep"])
    assert db.tx(lambda conn: queue.fail(conn, a, db.worker, "boom\nlast line", exit_code=3)) == FAILED
    assert db.status(a, b, c, other) == [FAILED, BLOCKED, BLOCKED, QUEUED]
    assert db.job(a).error == "boom\nlast line" and db.job(a).exit_code == 3
    assert db.job(c).error == f"blocked: dependency job {a} failed"
    assert db.claim().id == other


def test_transient_failure_is_retried_until_attempts_run_out(db: DB) -> None:
    a = db.enqueue(max_attempts=2)
    for attempt, expected in ((1, QUEUED), (2, FAILED)):
        assert db.claim().attempts == attempt
        assert db.tx(lambda c: queue.fail(c, a, db.worker, "flaky", transient=True)) == expected
    assert db.status(a) == [FAILED]


def test_a_transient_failure_waits_out_its_backoff_before_the_next_claim(db: DB) -> None:
    from datetime import timedelta

    from db.models import utcnow

    a = db.enqueue(max_attempts=3)
    db.claim()
    failed_at = utcnow()
    assert db.tx(lambda c: queue.fail(c, a, db.worker, "unreachable", transient=True, retry_delay_s=60,
                                      now=failed_at)) == QUEUED
    assert db.claim(now=failed_at + timedelta(seconds=59)) is None  # still backing off
    assert db.tx(lambda c: queue.has_pending_work(c, devices=0))  # an idle worker waits for it
    assert db.claim(now=failed_at + timedelta(seconds=61)).id == a
    db.tx(lambda c: queue.fail(c, a, db.worker, "bad input"))
    db.tx(lambda c: queue.retry(c, a))  # a retry by hand runs at once
    assert db.claim(now=failed_at).id == a


def test_retry_requeues_and_unblocks_the_chain(db: DB) -> None:
    a = db.enqueue()
    b = db.enqueue(depends_on=[a])
    c = db.enqueue(depends_on=[b])
    db.claim()
    db.tx(lambda conn: queue.fail(conn, a, db.worker, "boom"))
    with pytest.raises(queue.QueueError, match=f"blocked by job {a}"):
        db.tx(lambda conn: queue.retry(conn, c))
    assert db.tx(lambda conn: queue.retry(conn, a)) == [b, c]
    assert db.status(a, b, c) == [QUEUED, QUEUED, QUEUED]
    j = db.job(a)
    assert (j.attempts, j.error, j.worker_id) == (0, None, None)


def test_retry_keeps_a_dependant_blocked_while_another_dependency_failed(db: DB) -> None:
    a, b = db.enqueue(), db.enqueue()
    c = db.enqueue(depends_on=[a, b])
    db.claim(), db.claim()
    db.tx(lambda conn: queue.fail(conn, a, db.worker, "x"))
    db.tx(lambda conn: queue.fail(conn, b, db.worker, "y"))
    assert db.tx(lambda conn: queue.retry(conn, a)) == []
    assert db.status(c) == [BLOCKED]
    assert db.tx(lambda conn: queue.retry(conn, b)) == [c]


def test_retry_refuses_running_and_succeeded_jobs(db: DB) -> None:
    a = db.enqueue()
    db.claim()
    with pytest.raises(queue.QueueError, match="running"):
        db.tx(lambda c: queue.retry(c, a))
    db.tx(lambda c: queue.succeed(c, a, db.worker))
    with pytest.raises(queue.QueueError, match="succeeded"):
        db.tx(lambda c: queue.retry(c, a))
    with pytest.raises(queue.QueueError, match="no job"):
        db.tx(lambda c: queue.retry(c, 12345))


# --- cancel, release, lease expiry ----------------------------------------------------------------


def test_cancel_a_queued_job_at_once_and_block_its_dependants(db: DB) -> None:
    a = db.enqueue()
    b = db.enqueue(depends_on=[a])
    assert db.tx(lambda c: queue.cancel(c, a)) == "cancelled"
    assert db.status(a, b) == [CANCELLED, BLOCKED]
    assert db.tx(lambda c: queue.cancel(c, a)) == "already cancelled"  # nothing more to do
    assert db.tx(lambda c: queue.retry(c, a)) == [b]


def test_cancel_a_running_job_is_finished_by_its_worker(db: DB) -> None:
    a = db.enqueue()
    b = db.enqueue(depends_on=[a])
    db.claim()
    assert db.tx(lambda c: queue.cancel(c, a)) == "cancelling"
    assert db.status(a) == [RUNNING] and db.job(a).cancel_requested_at is not None
    assert db.tx(lambda c: queue.mark_cancelled(c, a, db.worker)) is True
    assert db.status(a, b) == [CANCELLED, BLOCKED]
    with pytest.raises(queue.QueueError, match="no job"):
        db.tx(lambda c: queue.cancel(c, 12345))


def test_release_hands_a_job_back_without_counting_the_attempt(db: DB) -> None:
    a = db.enqueue()
    db.claim()
    assert db.tx(lambda c: queue.release(c, a, db.worker)) == QUEUED
    j = db.job(a)
    assert (j.status, j.attempts, j.worker_id, j.lease_expires_at) == (QUEUED, 0, None, None)
    db.claim()
    db.tx(lambda c: queue.cancel(c, a))
    assert db.tx(lambda c: queue.release(c, a, db.worker)) == CANCELLED  # cancel wins over hand-back


def test_expired_leases_requeue_with_the_attempt_counted(db: DB) -> None:
    a = db.enqueue(max_attempts=2)
    b = db.enqueue(depends_on=[a])
    db.claim(lease_seconds=10)
    later = utcnow() + timedelta(seconds=11)
    assert db.tx(lambda c: queue.requeue_expired(c, now=utcnow())) == []  # not yet
    assert db.tx(lambda c: queue.requeue_expired(c, now=later)) == [(a, QUEUED)]
    j = db.job(a)
    assert (j.status, j.attempts, j.worker_id) == (QUEUED, 1, None)
    assert "lease expired" in j.error
    assert db.claim(lease_seconds=10).attempts == 2
    much_later = utcnow() + timedelta(seconds=11)
    assert db.tx(lambda c: queue.requeue_expired(c, now=much_later)) == [(a, FAILED)]  # attempts spent
    assert db.status(a, b) == [FAILED, BLOCKED]


def test_expired_lease_of_a_cancelled_job_cancels_it(db: DB) -> None:
    a = db.enqueue()
    db.claim(lease_seconds=1)
    db.tx(lambda c: queue.cancel(c, a))
    assert db.tx(lambda c: queue.requeue_expired(c, now=utcnow() + timedelta(seconds=2))) == [(a, CANCELLED)]


def test_a_requeued_job_is_lost_to_its_old_worker(db: DB) -> None:
    a = db.enqueue()
    db.claim(lease_seconds=1)
    db.tx(lambda c: queue.requeue_expired(c, now=utcnow() + timedelta(seconds=2)))
    w2 = db.tx(lambda c: queue.register_worker(c, name="w2", host="h", pid=2, devices=[], kinds=None))
    assert db.claim(worker=w2).id == a
    assert db.tx(lambda c: queue.heartbeat(c, a, db.worker, lease_seconds=30)) == "lost"
    assert db.tx(lambda c: queue.succeed(c, a, db.worker)) is False
    assert db.tx(lambda c: queue.fail(c, a, db.worker, "late")) is None
    assert db.job(a).worker_id == w2


def test_workers_not_seen_are_marked_lost(db: DB) -> None:
    db.tx(lambda c: queue.requeue_expired(c, now=utcnow() + timedelta(seconds=500), worker_timeout_s=120))
    rows = db.tx(lambda c: c.execute(select(queue.workers.c.status)).scalars().all())
    assert rows == ["lost"]
    db.tx(lambda c: queue.touch_worker(c, db.worker))
    db.tx(lambda c: queue.stop_worker(c, db.worker))
    assert db.tx(lambda c: c.execute(select(queue.workers.c.status)).scalars().all()) == ["stopped"]


def test_has_pending_work_counts_queued_and_running_jobs_it_could_run(db: DB) -> None:
    assert db.tx(lambda c: queue.has_pending_work(c, devices=0)) is False
    db.enqueue("train", devices_required=1)
    assert db.tx(lambda c: queue.has_pending_work(c, devices=0)) is False
    assert db.tx(lambda c: queue.has_pending_work(c, devices=1)) is True
    a = db.enqueue()
    db.claim()
    assert db.tx(lambda c: queue.has_pending_work(c, devices=0)) is True  # running counts
    db.tx(lambda c: queue.succeed(c, a, db.worker))
    assert db.tx(lambda c: queue.has_pending_work(c, devices=0, kinds=["sleep"])) is False


# --- ingestion -----------------------------------------------------------------------------------


def test_metrics_upsert_is_idempotent_and_keeps_lists(db: DB) -> None:
    a = db.enqueue()
    records = [{"step": 1, "loss": 0.5, "matrix": [[0.0, -1.0], [-1.0, 0.0]]}, {"step": 2, "loss": 0.25}]
    db.tx(lambda c: ingest.upsert_metrics(c, a, records))
    db.tx(lambda c: ingest.upsert_metrics(c, a, [{"step": 2, "loss": 0.2, "mi": 0.6}]))  # a resumed stage
    rows = db.tx(lambda c: c.execute(
        select(Metric.step, Metric.name, Metric.value, Metric.value_json).order_by(Metric.step, Metric.name)).all())
    assert [tuple(r) for r in rows] == [
        (1, "loss", 0.5, None), (1, "matrix", None, [[0.0, -1.0], [-1.0, 0.0]]),
        (2, "loss", 0.2, None), (2, "mi", 0.6, None),
    ]


def test_checkpoints_upsert_by_step(db: DB) -> None:
    a = db.enqueue()
    db.tx(lambda c: ingest.upsert_checkpoints(c, a, [{"step": 32, "path": "p/32"}, {"step": 64, "path": "p/64"}]))
    db.tx(lambda c: ingest.upsert_checkpoints(c, a, [{"step": 64, "path": "p/64b", "final": True}]))
    rows = db.tx(lambda c: c.execute(select(Checkpoint.step, Checkpoint.path, Checkpoint.final)
                                     .order_by(Checkpoint.step)).all())
    assert [tuple(r) for r in rows] == [(32, "p/32", False), (64, "p/64b", True)]
