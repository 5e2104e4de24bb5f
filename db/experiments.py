"""Experiments and constitutions: the records `sami submit` writes.

* :func:`constitution_version`: constitutions are immutable versions. Submitting the
  same principles under a name reuses that version; different principles under the
  same name become version ``latest + 1`` (``parent_id`` = the latest).
* :func:`link_constitution_set` and :func:`set_members`: when an experiment's
  constitution is a set, the member versions each job draws from (``job_constitutions``).
* :func:`create_sweep`: a sweep's row; each of its points is an experiment pointing at it.
* :func:`create_experiment` and :func:`enqueue_plan`: an experiment row and its DAG of
  jobs. The caller runs both in one transaction (``db.engine.transact``), so either the
  whole experiment is enqueued or nothing is.

Principles are stored as ``[{"principle": str, "antithesis": str | null}, ...]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from db import queue
from db.models import Constitution, Experiment, Sweep, Worker, job_constitutions, utcnow

constitutions = Constitution.__table__
experiments = Experiment.__table__
sweeps = Sweep.__table__
workers = Worker.__table__


def normalize_principles(principles: Sequence[Mapping[str, Any]]) -> list[dict[str, str | None]]:
    """The stored form: exactly the keys ``principle`` and ``antithesis`` (None when absent)."""
    return [{"principle": str(p["principle"]), "antithesis": p.get("antithesis") or None} for p in principles]


def constitution_version(
    conn: Connection, name: str, principles: Sequence[Mapping[str, Any]], *, description: str | None = None,
    now: datetime | None = None,
) -> tuple[int, int, bool]:
    """The id of the version of constitution ``name`` with these principles, inserting a
    new version when none has them. Returns (id, version, created)."""
    wanted = normalize_principles(principles)
    rows = conn.execute(
        select(constitutions.c.id, constitutions.c.version, constitutions.c.principles)
        .where(constitutions.c.name == name)
        .order_by(constitutions.c.version.desc())
    ).all()
    for r in rows:
        if normalize_principles(r.principles) == wanted:
            return r.id, r.version, False
    version = rows[0].version + 1 if rows else 1
    new_id = conn.execute(
        insert(constitutions)
        .values(name=name, version=version, principles=wanted, description=description,
                parent_id=rows[0].id if rows else None, created_at=now or utcnow())
        .returning(constitutions.c.id)
    ).scalar_one()
    return new_id, version, True


def create_experiment(
    conn: Connection, name: str, spec: dict, *, description: str | None = None, now: datetime | None = None,
    sweep_id: int | None = None, sweep_point: dict | None = None,
) -> int:
    """An experiments row (``sweep_id``, ``sweep_point``: the sweep it is a point of, and
    the point's values {dotted path: value})."""
    return conn.execute(
        insert(experiments)
        .values(name=name, spec=spec, description=description, created_at=now or utcnow(), sweep_id=sweep_id,
                sweep_point=sweep_point)
        .returning(experiments.c.id)
    ).scalar_one()


def create_sweep(conn: Connection, name: str, grid: Mapping[str, Sequence[Any]], *,
                 now: datetime | None = None) -> int:
    """A sweeps row: ``grid`` is the spec's ``sweep`` section ({dotted path: [values]})."""
    return conn.execute(
        insert(sweeps).values(name=name, grid={k: list(v) for k, v in grid.items()}, created_at=now or utcnow())
        .returning(sweeps.c.id)
    ).scalar_one()


def sweep_named(conn: Connection, name: str) -> int | None:
    """The newest sweep called ``name``, or None."""
    return conn.execute(select(sweeps.c.id).where(sweeps.c.name == name)
                        .order_by(sweeps.c.id.desc()).limit(1)).scalar_one_or_none()


def stored_spec(conn: Connection, experiment_id: int) -> dict | None:
    """The resolved spec an experiment was submitted with, or None when there is no such experiment."""
    return conn.execute(select(experiments.c.spec).where(experiments.c.id == experiment_id)).scalar_one_or_none()


def experiment_named(conn: Connection, name: str) -> int | None:
    """The newest experiment called ``name``, or None."""
    return conn.execute(select(experiments.c.id).where(experiments.c.name == name)
                        .order_by(experiments.c.id.desc()).limit(1)).scalar_one_or_none()


def enqueue_plan(conn: Connection, items: Sequence[Mapping[str, Any]], *, now: datetime | None = None) -> dict[str, int]:
    """Enqueue a DAG whose items name each other by ``key``: each item is
    :func:`db.queue.enqueue`'s arguments plus ``key`` (unique) and ``depends_on`` as a
    list of keys. Jobs are inserted level by level (parents first). Returns key -> id."""
    by_key = {it["key"]: it for it in items}
    if len(by_key) != len(items):
        raise queue.QueueError("duplicate job keys in the plan")
    for it in items:
        missing = [d for d in it.get("depends_on", ()) if d not in by_key]
        if missing:
            raise queue.QueueError(f"job {it['key']} depends on unknown key(s): {', '.join(missing)}")
    ids: dict[str, int] = {}
    pending = list(items)
    while pending:
        level = [it for it in pending if all(d in ids for d in it.get("depends_on", ()))]
        if not level:
            raise queue.QueueError("the plan's dependencies form a cycle: " + ", ".join(it["key"] for it in pending))
        rows = [{**{k: v for k, v in it.items() if k != "key"},
                 "depends_on": [ids[d] for d in it.get("depends_on", ())]} for it in level]
        for it, job_id in zip(level, queue.enqueue_many(conn, rows, now=now), strict=True):
            ids[it["key"]] = job_id
        pending = [it for it in pending if it["key"] not in ids]
    return ids


def worker_capacity(conn: Connection) -> list[tuple[int, list[str] | None]]:
    """(device count, kinds or None = all) of every registered worker, whatever its
    status: a stopped worker tells what the cluster has, and may be started again. A
    Slurm worker (devices ``["slurm"]``) fits any count: Slurm allocates the GPUs."""
    return [(SLURM_CAPACITY if list(r.devices or []) == list(SLURM_DEVICES) else len(r.devices or []), r.kinds)
            for r in conn.execute(select(workers.c.devices, workers.c.kinds))]


SLURM_DEVICES = ("slurm",)  # what a Slurm worker registers as its devices: Slurm allocates the GPUs
SLURM_CAPACITY = 1 << 20  # the GPU count such a worker fits (and claims)


def link_constitution_set(conn: Connection, job_id: int, constitution_ids: Sequence[int]) -> None:
    """Record that job ``job_id`` draws from these constitution versions (a set's members)."""
    ids = list(dict.fromkeys(int(c) for c in constitution_ids))
    if ids:
        conn.execute(insert(job_constitutions), [{"job_id": job_id, "constitution_id": c} for c in ids])


def set_members(conn: Connection, job_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """job id -> the versions of the constitution set it draws from ({id, name, version},
    by name); jobs with one constitution (no set) are left out."""
    if not job_ids:
        return {}
    stmt = (select(job_constitutions.c.job_id, constitutions.c.id, constitutions.c.name, constitutions.c.version)
            .select_from(job_constitutions.join(constitutions,
                                                constitutions.c.id == job_constitutions.c.constitution_id))
            .where(job_constitutions.c.job_id.in_([int(j) for j in job_ids]))
            .order_by(job_constitutions.c.job_id, constitutions.c.name, constitutions.c.version))
    out: dict[int, list[dict[str, Any]]] = {}
    for r in conn.execute(stmt):
        out.setdefault(r.job_id, []).append({"id": r.id, "name": r.name, "version": r.version})
    return out


def set_label(members: Sequence[Mapping[str, Any]]) -> str:
    """How a job's constitution set reads in tables: "set of K: a v1, b v1, ..."."""
    return f"set of {len(members)}: " + ", ".join(f"{m['name']} v{m['version']}" for m in members)
