"""SQLAlchemy 2.0 models: the workbench's tables.

The schema is owned by the Alembic migrations in ``db/migrations/versions``; these
models must match them (``tests/unit/test_db_migrations.py`` compares the two), so a
change here comes with a new migration.

Timestamps are timezone-aware UTC datetimes (:class:`UTCDateTime`), taken from the
clock of the process that writes them; hosts sharing a PostgreSQL queue should keep
their clocks in sync (NTP), since leases compare one host's clock with another's.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Job states. Allowed moves between them are in db.queue.TRANSITIONS.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, BLOCKED = (
    "queued", "running", "succeeded", "failed", "cancelled", "blocked",
)
JOB_STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED, BLOCKED)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A datetime stored as UTC and read back timezone-aware.

    SQLite has no time zone type: values are stored as naive UTC text, which sorts
    and compares correctly; PostgreSQL stores ``timestamp with time zone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use db.models.utcnow() or an aware datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


# JSON everywhere; JSONB on PostgreSQL (indexable, compact).
# none_as_null: Python None is stored as SQL NULL, not the JSON literal null.
JSONType = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

# Deterministic constraint names, so that later migrations (SQLite batch mode) can
# refer to constraints by name.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Experiment(Base):
    """One experiment: its resolved configuration; its work is the jobs pointing here."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str | None] = mapped_column(Text)
    spec: Mapped[dict] = mapped_column(JSONType, default=dict)  # the resolved experiment spec
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # A sweep's point: the sweep it belongs to and its swept values ({dotted path: value});
    # both null for an experiment submitted on its own.
    sweep_id: Mapped[int | None] = mapped_column(ForeignKey("sweeps.id"), index=True)
    sweep_point: Mapped[dict | None] = mapped_column(JSONType)


class Sweep(Base):
    """A grid of experiments submitted together (a spec's ``sweep`` section): one
    experiments row per point, each pointing here."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    grid: Mapped[dict] = mapped_column(JSONType)  # {dotted path: [values]}, as submitted
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Constitution(Base):
    """An immutable constitution version: editing one inserts (name, version + 1)."""

    __tablename__ = "constitutions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer, default=1)
    # [{"principle": str, "antithesis": str | null}, ...]
    principles: Mapped[list] = mapped_column(JSONType)
    description: Mapped[str | None] = mapped_column(Text)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("constitutions.id"))  # edited from
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A `sami worker` daemon as it registered itself."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))  # host:pid unless given
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    devices: Mapped[list] = mapped_column(JSONType, default=list)  # GPU ids, [] on CPU
    kinds: Mapped[list | None] = mapped_column(JSONType)  # job kinds it runs; null = all
    status: Mapped[str] = mapped_column(String(16), default="running")  # running|stopped|lost
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class Job(Base):
    """A unit of work: one stage run (or a diagnostic `sleep`).

    Life cycle (db.queue.TRANSITIONS): queued -> running -> succeeded | failed |
    cancelled; running -> queued when a lease expires or a worker hands it back;
    queued -> blocked when a dependency failed or was cancelled; failed, cancelled and
    blocked -> queued on retry.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES!r}", name="status"),
        CheckConstraint("devices_required >= 0", name="devices_required"),
        CheckConstraint("max_attempts >= 1", name="max_attempts"),
        # The claim query walks queued jobs in (priority DESC, id) order: an index in
        # exactly that order lets it stop at the first claimable one instead of sorting.
        Index("ix_jobs_claim_order", "status", text("priority DESC"), "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(200))  # display label; an experiment's plan key, e.g. "train-1"
    # What the job is asked to do: for stage kinds the stage spec (written to
    # RUN_DIR/job_spec.json); for `sleep` {"seconds": .., "exit_code": ..}.
    spec: Mapped[dict] = mapped_column(JSONType, default=dict)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    priority: Mapped[int] = mapped_column(Integer, default=0)  # higher runs first
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    constitution_id: Mapped[int | None] = mapped_column(ForeignKey("constitutions.id"))
    # An experiment's plan (sami_core.pipeline.JobPlan): the SAMI iteration the job
    # belongs to (0 = baseline) and what it produces, e.g. "base" or "iteration-1"
    # (a response source's label). Null for jobs enqueued by hand.
    iteration: Mapped[int | None] = mapped_column(Integer)
    label: Mapped[str | None] = mapped_column(String(200))
    devices_required: Mapped[int] = mapped_column(Integer, default=0)  # GPUs; 0 = CPU
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # claims so far (see db.queue)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    worker_id: Mapped[int | None] = mapped_column(ForeignKey("workers.id"), index=True)
    pid: Mapped[int | None] = mapped_column(Integer)  # the stage's process group, on the worker's host
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Not claimed before this (a transient failure's backoff); null = at once.
    retry_after: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    progress_done: Mapped[int | None] = mapped_column(Integer)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_unit: Mapped[str | None] = mapped_column(String(32))
    progress_message: Mapped[str | None] = mapped_column(Text)
    progress_eta_s: Mapped[float | None] = mapped_column(Float)  # seconds left, as of progress_updated_at
    progress_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Bytes of RUN_DIR/metrics.jsonl already ingested into `metrics`.
    metrics_offset: Mapped[int] = mapped_column(BigInteger, default=0)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)  # last lines of the stage's log, or why
    run_dir: Mapped[str | None] = mapped_column(Text)  # relative = relative to the workspace
    outputs: Mapped[dict | None] = mapped_column(JSONType)  # RUN_DIR/outputs.json when it succeeded
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)  # of the current/last attempt
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# A job runs only once every job it depends on has succeeded.
job_dependencies = Table(
    "job_dependencies",
    Base.metadata,
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("depends_on_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True, index=True),
    CheckConstraint("job_id <> depends_on_id", name="not_self"),
)


# The constitutions a job draws from when its experiment's constitution is a set: one row
# per member version (an antithesis job: per member's antithesis version). A job with one
# constitution has no rows here; it points at its version through jobs.constitution_id.
job_constitutions = Table(
    "job_constitutions",
    Base.metadata,
    Column("job_id", ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
    Column("constitution_id", ForeignKey("constitutions.id"), primary_key=True, index=True),
)


class Checkpoint(Base):
    """A saved model, emitted by a train job (every K steps and at the end)."""

    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("job_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    iteration: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    final: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ResponseSource(Base):
    """Where a set of responses came from: a checkpoint, a baseline model, or a file."""

    __tablename__ = "response_sources"
    __table_args__ = (CheckConstraint("kind IN ('checkpoint', 'baseline', 'import')", name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    label: Mapped[str] = mapped_column(String(200))
    checkpoint_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    model: Mapped[str | None] = mapped_column(Text)  # baseline: a model id or path
    path: Mapped[str | None] = mapped_column(Text)  # import: the results file
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)  # the sample job
    temperatures: Mapped[list | None] = mapped_column(JSONType)  # what the sample job was asked for
    constitution_source: Mapped[str | None] = mapped_column(String(200))  # import: who wrote it, e.g. opus
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Response(Base):
    """One sampled response to one query under one constitution and temperature."""

    __tablename__ = "responses"
    __table_args__ = (
        Index("ix_responses_source_query", "source_id", "query_id"),
        # What identifies a response: ingesting a sample job again updates, never duplicates.
        Index("uq_responses_source_query_temperature_sample", "source_id", "query_id", "temperature",
              "sample_index", unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source_id: Mapped[int] = mapped_column(ForeignKey("response_sources.id", ondelete="CASCADE"))
    query_id: Mapped[str] = mapped_column(String(200))
    query: Mapped[str | None] = mapped_column(Text)
    constitution_id: Mapped[int | None] = mapped_column(ForeignKey("constitutions.id"))
    temperature: Mapped[float] = mapped_column(Float, default=0.0)
    sample_index: Mapped[int] = mapped_column(Integer, default=0)
    text: Mapped[str] = mapped_column(Text)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Judgment(Base):
    """A pairwise verdict: a candidate response against a baseline's, same query and constitution."""

    __tablename__ = "judgments"
    __table_args__ = (
        CheckConstraint("candidate_position IN ('A', 'B')", name="candidate_position"),
        # 'error': the judge gave no answer after all attempts (rationale/raw_text: the message).
        CheckConstraint("verdict IN ('candidate', 'baseline', 'tie', 'invalid', 'error')", name="verdict"),
        # One judgment per pair and position shown; a cache key alone can stand for
        # several (identical texts judged twice are one cached request).
        Index("uq_judgments_pair_position_key", "candidate_id", "baseline_id", "candidate_position", "cache_key",
              unique=True),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    candidate_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    baseline_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    constitution_id: Mapped[int | None] = mapped_column(ForeignKey("constitutions.id"))
    candidate_position: Mapped[str] = mapped_column(String(1))  # where the candidate was shown
    judge_model: Mapped[str] = mapped_column(String(200))
    verdict: Mapped[str] = mapped_column(String(16))
    rationale: Mapped[str | None] = mapped_column(Text)
    raw_text: Mapped[str | None] = mapped_column(Text)
    cache_key: Mapped[str] = mapped_column(String(128), index=True)  # hash of everything the judge saw
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Metric(Base):
    """One value a job logged at one step (RUN_DIR/metrics.jsonl); lists go to value_json."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    name: Mapped[str] = mapped_column(String(200))
    value: Mapped[float | None] = mapped_column(Float)
    value_json: Mapped[Any | None] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MIResult(Base):
    """Held-out mutual information of one evaluate job, per scoring model: the InfoNCE
    lower bound and row/column accuracy over the eval queries, each with its bootstrap
    95% interval (RUN_DIR/outputs.json of the job; its matrices stay in mi.jsonl)."""

    __tablename__ = "mi_results"
    __table_args__ = (UniqueConstraint("job_id", "scorer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    experiment_id: Mapped[int | None] = mapped_column(ForeignKey("experiments.id"), index=True)
    iteration: Mapped[int | None] = mapped_column(Integer)  # 0 = the base model
    label: Mapped[str] = mapped_column(String(200))  # what sampled the responses, e.g. iteration-2
    scorer: Mapped[str] = mapped_column(String(200))  # what scored them (label itself, or e.g. base)
    model: Mapped[str | None] = mapped_column(Text)  # the scoring model's path or id
    n_queries: Mapped[int] = mapped_column(Integer)
    n_constitutions: Mapped[int] = mapped_column(Integer)
    temperature: Mapped[float | None] = mapped_column(Float)
    mi_lower_bound: Mapped[float] = mapped_column(Float)
    mi_lower_bound_ci_low: Mapped[float] = mapped_column(Float)
    mi_lower_bound_ci_high: Mapped[float] = mapped_column(Float)
    row_accuracy: Mapped[float] = mapped_column(Float)
    row_accuracy_ci_low: Mapped[float] = mapped_column(Float)
    row_accuracy_ci_high: Mapped[float] = mapped_column(Float)
    col_accuracy: Mapped[float] = mapped_column(Float)
    col_accuracy_ci_low: Mapped[float] = mapped_column(Float)
    col_accuracy_ci_high: Mapped[float] = mapped_column(Float)
    loss: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GeneratedResponse(Base):
    """One response a generate job sampled: (job, query, variant) with the prompt it was
    sampled under, the response as finished, and whether its query was kept for training
    or the filter that dropped it (RUN_DIR/filtered.jsonl of the job; see
    sami_core.prompts.drop_reasons)."""

    __tablename__ = "generated_responses"
    __table_args__ = (
        # What identifies a row: ingesting a generate job again updates, never duplicates.
        Index("uq_generated_responses_job_query_variant", "job_id", "query_id", "variant", unique=True),
        # Counts per filter (GROUP BY dropped_by, distinct queries) read this index alone.
        Index("ix_generated_responses_job_dropped_by", "job_id", "dropped_by", "query_id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    query_id: Mapped[str] = mapped_column(String(200))
    variant: Mapped[int] = mapped_column(Integer)  # 0 = the positive constitution, then flips
    query: Mapped[str | None] = mapped_column(Text)
    constitution: Mapped[str | None] = mapped_column(Text)  # the variant's text, as prompted
    constitution_name: Mapped[str | None] = mapped_column(String(200))  # the set member it drew, if any
    prompt: Mapped[str] = mapped_column(Text)  # the generation prompt
    response: Mapped[str] = mapped_column(Text)
    n_tokens: Mapped[int | None] = mapped_column(Integer)
    kept: Mapped[bool] = mapped_column(Boolean)
    dropped_by: Mapped[str | None] = mapped_column(String(32))  # a filter's name; None when kept
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
