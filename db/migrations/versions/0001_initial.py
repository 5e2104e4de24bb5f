"""Initial schema: the job queue, workers, and the (still empty) experiment records.

Revision ID: 0001
Revises: (none)

Column types are spelled out here rather than imported from db.models, so that this
file keeps describing revision 0001 however the models change later.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=f"pk_{table}")


def _fk(table: str, column: str, target: str, ondelete: str | None = None) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], [f"{target}.id"], name=f"fk_{table}_{column}_{target}", ondelete=ondelete
    )


def _index(table: str, *columns: str, name: str | None = None) -> None:
    op.create_index(name or f"ix_{table}_{columns[0]}", table, list(columns))


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("spec", JSON, nullable=False),
        _ts("created_at", nullable=False),
        _ts("archived_at"),
        _pk("experiments"),
    )
    op.create_table(
        "constitutions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("principles", JSON, nullable=False),
        sa.Column("description", sa.Text()),
        sa.Column("parent_id", sa.Integer()),
        _ts("created_at", nullable=False),
        _pk("constitutions"),
        _fk("constitutions", "parent_id", "constitutions"),
        sa.UniqueConstraint("name", "version", name="uq_constitutions_name_version"),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("devices", JSON, nullable=False),
        sa.Column("kinds", JSON),
        sa.Column("status", sa.String(16), nullable=False),
        _ts("started_at", nullable=False),
        _ts("last_seen_at", nullable=False),
        _ts("stopped_at"),
        _pk("workers"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("name", sa.String(200)),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer()),
        sa.Column("constitution_id", sa.Integer()),
        sa.Column("devices_required", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("worker_id", sa.Integer()),
        sa.Column("pid", sa.Integer()),
        _ts("lease_expires_at"),
        _ts("heartbeat_at"),
        _ts("cancel_requested_at"),
        sa.Column("progress_done", sa.Integer()),
        sa.Column("progress_total", sa.Integer()),
        sa.Column("progress_unit", sa.String(32)),
        sa.Column("progress_message", sa.Text()),
        sa.Column("progress_eta_s", sa.Float()),
        _ts("progress_updated_at"),
        sa.Column("metrics_offset", sa.BigInteger(), nullable=False),
        sa.Column("exit_code", sa.Integer()),
        sa.Column("error", sa.Text()),
        sa.Column("run_dir", sa.Text()),
        sa.Column("outputs", JSON),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("started_at"),
        _ts("finished_at"),
        _pk("jobs"),
        _fk("jobs", "experiment_id", "experiments"),
        _fk("jobs", "constitution_id", "constitutions"),
        _fk("jobs", "worker_id", "workers"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'blocked')",
            name="ck_jobs_status",
        ),
        sa.CheckConstraint("devices_required >= 0", name="ck_jobs_devices_required"),
        sa.CheckConstraint("max_attempts >= 1", name="ck_jobs_max_attempts"),
    )
    op.create_index("ix_jobs_claim_order", "jobs", ["status", sa.text("priority DESC"), "id"])
    _index("jobs", "kind")
    _index("jobs", "experiment_id")
    _index("jobs", "worker_id")

    op.create_table(
        "job_dependencies",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("depends_on_id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "depends_on_id", name="pk_job_dependencies"),
        _fk("job_dependencies", "job_id", "jobs", ondelete="CASCADE"),
        _fk("job_dependencies", "depends_on_id", "jobs", ondelete="CASCADE"),
        sa.CheckConstraint("job_id <> depends_on_id", name="ck_job_dependencies_not_self"),
    )
    _index("job_dependencies", "depends_on_id")

    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("experiment_id", sa.Integer()),
        sa.Column("iteration", sa.Integer()),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("final", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
        _pk("checkpoints"),
        _fk("checkpoints", "job_id", "jobs", ondelete="CASCADE"),
        _fk("checkpoints", "experiment_id", "experiments"),
        sa.UniqueConstraint("job_id", "step", name="uq_checkpoints_job_id_step"),
    )
    _index("checkpoints", "job_id")
    _index("checkpoints", "experiment_id")

    op.create_table(
        "response_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("checkpoint_id", sa.Integer()),
        sa.Column("model", sa.Text()),
        sa.Column("path", sa.Text()),
        sa.Column("experiment_id", sa.Integer()),
        sa.Column("job_id", sa.Integer()),
        _ts("created_at", nullable=False),
        _pk("response_sources"),
        _fk("response_sources", "checkpoint_id", "checkpoints"),
        _fk("response_sources", "experiment_id", "experiments"),
        _fk("response_sources", "job_id", "jobs"),
        sa.CheckConstraint("kind IN ('checkpoint', 'baseline', 'import')", name="ck_response_sources_kind"),
    )
    _index("response_sources", "checkpoint_id")
    _index("response_sources", "experiment_id")
    _index("response_sources", "job_id")

    op.create_table(
        "responses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_id", sa.Integer(), nullable=False),
        sa.Column("query_id", sa.String(200), nullable=False),
        sa.Column("query", sa.Text()),
        sa.Column("constitution_id", sa.Integer()),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("n_tokens", sa.Integer()),
        _ts("created_at", nullable=False),
        _pk("responses"),
        _fk("responses", "source_id", "response_sources", ondelete="CASCADE"),
        _fk("responses", "constitution_id", "constitutions"),
    )
    _index("responses", "source_id", "query_id", name="ix_responses_source_query")

    op.create_table(
        "judgments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer()),
        sa.Column("candidate_id", sa.Integer(), nullable=False),
        sa.Column("baseline_id", sa.Integer(), nullable=False),
        sa.Column("constitution_id", sa.Integer()),
        sa.Column("candidate_position", sa.String(1), nullable=False),
        sa.Column("judge_model", sa.String(200), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("rationale", sa.Text()),
        sa.Column("raw_text", sa.Text()),
        sa.Column("cache_key", sa.String(128), nullable=False),
        _ts("created_at", nullable=False),
        _pk("judgments"),
        _fk("judgments", "job_id", "jobs"),
        _fk("judgments", "candidate_id", "responses", ondelete="CASCADE"),
        _fk("judgments", "baseline_id", "responses", ondelete="CASCADE"),
        _fk("judgments", "constitution_id", "constitutions"),
        sa.UniqueConstraint("cache_key", name="uq_judgments_cache_key"),
        sa.CheckConstraint("candidate_position IN ('A', 'B')", name="ck_judgments_candidate_position"),
        sa.CheckConstraint(
            "verdict IN ('candidate', 'baseline', 'tie', 'invalid')", name="ck_judgments_verdict"
        ),
    )
    _index("judgments", "job_id")
    _index("judgments", "candidate_id")
    _index("judgments", "baseline_id")

    op.create_table(
        "metrics",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("value", sa.Float()),
        sa.Column("value_json", JSON),
        _ts("created_at", nullable=False),
        _pk("metrics"),
        _fk("metrics", "job_id", "jobs", ondelete="CASCADE"),
        sa.UniqueConstraint("job_id", "name", "step", name="uq_metrics_job_id_name_step"),
    )


def downgrade() -> None:
    for table in (
        "metrics", "judgments", "responses", "response_sources", "checkpoints",
        "job_dependencies", "jobs", "workers", "constitutions", "experiments",
    ):
        op.drop_table(table)
