"""Migrations: applied on first use, idempotent, keep data, and match the models."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, select, text

from db import queue
from db.engine import make_engine, open_database, transact
from db.migrations import HEAD, current_revision, ensure_schema, head_revision, upgrade
from db.models import Base, Job
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path) -> str:  # noqa: ANN001
    if request.param == "postgresql" and (reason := postgres_unavailable_reason()):
        pytest.skip(reason)
    return new_database_url(request.param, tmp_path)


def test_head_constant_is_alembic_head() -> None:
    assert HEAD == head_revision()


def test_first_use_creates_every_table(url: str) -> None:
    engine = make_engine(url)
    assert current_revision(engine) is None
    engine = open_database(url)
    assert current_revision(engine) == HEAD
    tables = set(inspect(engine).get_table_names())
    assert {t.name for t in Base.metadata.sorted_tables} <= tables
    assert "alembic_version" in tables
    engine.dispose()


def test_rerun_is_a_noop_and_keeps_data(url: str) -> None:
    engine = open_database(url)
    job_id = transact(engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 1}))
    upgrade(engine)  # again, explicitly
    ensure_schema(engine)
    engine.dispose()
    engine = open_database(url)  # a new process would do this
    rows = transact(engine, lambda c: c.execute(select(Job.id, Job.spec)).all(), write=False)
    assert [(r.id, r.spec) for r in rows] == [(job_id, {"seconds": 1})]
    assert current_revision(engine) == HEAD
    engine.dispose()


def test_models_match_migrated_schema(url: str) -> None:
    """A model change without a migration (or the reverse) fails here."""
    engine = open_database(url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    if engine.dialect.name == "sqlite":
        # SQLite reflection cannot read back an index on an expression such as
        # `priority DESC`, so Alembic reports ix_jobs_claim_order as changed.
        diffs = [d for d in diffs if not (d[0] in ("add_index", "remove_index") and d[1].name == "ix_jobs_claim_order")]
    assert diffs == []
    engine.dispose()


def test_a_database_from_newer_code_is_refused_clearly(url: str) -> None:
    engine = open_database(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(RuntimeError, match="revision 9999, newer than this code"):
        ensure_schema(engine)
    engine.dispose()


def test_upgrade_from_0001_keeps_jobs_and_adds_the_experiment_columns(url: str) -> None:
    """A database made by the first release (0001), with a job in it, upgraded in place."""
    engine = make_engine(url)
    upgrade(engine, "0001")
    assert current_revision(engine) == "0001"
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (kind, name, spec, status, priority, devices_required, attempts, max_attempts,"
            " metrics_offset, created_at, updated_at) VALUES ('sleep', 'old', '{\"seconds\": 1}', 'succeeded',"
            " 0, 0, 1, 3, 0, '2026-01-01 00:00:00', '2026-01-01 00:00:00')"))
    engine.dispose()
    engine = open_database(url)  # what any sami process does on first use after an upgrade
    assert current_revision(engine) == HEAD
    rows = transact(engine, lambda c: c.execute(
        select(Job.name, Job.spec, Job.status, Job.iteration, Job.label)).all(), write=False)
    assert [tuple(r) for r in rows] == [("old", {"seconds": 1}, "succeeded", None, None)]
    engine.dispose()


def _seed_source_and_responses(conn, ts: str) -> None:
    """One imported source with responses to queries 0 and 1 (ids 1 and 2)."""
    conn.execute(text(f"INSERT INTO response_sources (kind, label, created_at) VALUES ('import', 's', {ts})"))
    for q in ("0", "1"):
        conn.execute(text("INSERT INTO responses (source_id, query_id, temperature, sample_index, text, created_at)"
                          f" VALUES (1, '{q}', 0.0, 0, 'r{q}', {ts})"))


def test_upgrade_from_0002_keeps_judgments_and_allows_one_cache_key_per_position(url: str) -> None:
    """0003: a judgment stored under 0002 is kept; the same cache key may then be stored
    for both positions of a pair (identical texts judged in both orders)."""
    engine = make_engine(url)
    upgrade(engine, "0002")
    ts = "'2026-01-01 00:00:00'"
    with engine.begin() as conn:
        _seed_source_and_responses(conn, ts)
        conn.execute(text("INSERT INTO judgments (candidate_id, baseline_id, candidate_position, judge_model, verdict,"
                          f" cache_key, created_at) VALUES (1, 2, 'A', 'm', 'candidate', 'k', {ts})"))
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == HEAD
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO judgments (candidate_id, baseline_id, candidate_position, judge_model, verdict,"
                          f" cache_key, created_at) VALUES (1, 2, 'B', 'm', 'tie', 'k', {ts})"))
    rows = transact(engine, lambda c: c.execute(text(
        "SELECT candidate_position, verdict, cache_key FROM judgments ORDER BY id")).all(), write=False)
    assert [tuple(r) for r in rows] == [("A", "candidate", "k"), ("B", "tie", "k")]
    engine.dispose()


def test_upgrade_from_0003_keeps_judgments_and_allows_error_verdicts(url: str) -> None:
    """0004: judgments stored under 0003 are kept; a judge error may then be stored (and
    nothing else outside the verdicts); import sources get a constitution_source."""
    engine = make_engine(url)
    upgrade(engine, "0003")
    ts = "'2026-01-01 00:00:00'"
    with engine.begin() as conn:
        _seed_source_and_responses(conn, ts)
        conn.execute(text("INSERT INTO judgments (candidate_id, baseline_id, candidate_position, judge_model, verdict,"
                          f" rationale, cache_key, created_at) VALUES (1, 2, 'A', 'm', 'tie', 'why', 'k', {ts})"))
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == HEAD
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO judgments (candidate_id, baseline_id, candidate_position, judge_model, verdict,"
                          f" rationale, cache_key, created_at) VALUES (1, 2, 'B', 'm', 'error', 'HTTP 500', 'k', {ts})"))
        conn.execute(text("UPDATE response_sources SET constitution_source = 'opus'"))
    with pytest.raises(Exception, match="(?i)check"), engine.begin() as conn:
        conn.execute(text("INSERT INTO judgments (candidate_id, baseline_id, candidate_position, judge_model, verdict,"
                          f" cache_key, created_at) VALUES (2, 1, 'A', 'm', 'bogus', 'k2', {ts})"))
    rows = transact(engine, lambda c: c.execute(text(
        "SELECT candidate_position, verdict, rationale, cache_key FROM judgments ORDER BY id")).all(), write=False)
    assert [tuple(r) for r in rows] == [("A", "tie", "why", "k"), ("B", "error", "HTTP 500", "k")]
    assert transact(engine, lambda c: c.execute(text("SELECT constitution_source FROM response_sources"))
                    .scalar_one(), write=False) == "opus"
    engine.dispose()


def test_upgrade_from_0004_keeps_jobs_and_adds_mi_results(url: str) -> None:
    """0005: a database at 0004 keeps its jobs and gains the mi_results table, whose rows
    are unique per (job, scoring model) and go with their job."""
    engine = make_engine(url)
    upgrade(engine, "0004")
    assert "mi_results" not in inspect(engine).get_table_names()
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == HEAD
    job_id = transact(engine, lambda c: queue.enqueue(c, "sleep", {"seconds": 1}))
    ts = "'2026-01-01 00:00:00'"
    figures = ", ".join(f"{f}{s}" for f in ("mi_lower_bound", "row_accuracy", "col_accuracy")
                        for s in ("", "_ci_low", "_ci_high"))
    insert = (f"INSERT INTO mi_results (job_id, label, scorer, n_queries, n_constitutions, {figures}, loss, "
              f"created_at) VALUES ({job_id}, 'iteration-1', '{{scorer}}', 8, 2, {', '.join(['0.1'] * 9)}, 0.6, {ts})")
    with engine.begin() as conn:
        conn.execute(text(insert.format(scorer="iteration-1")))
        conn.execute(text(insert.format(scorer="base")))
    with pytest.raises(Exception, match="(?i)unique"), engine.begin() as conn:
        conn.execute(text(insert.format(scorer="base")))
    rows = transact(engine, lambda c: c.execute(text("SELECT scorer FROM mi_results ORDER BY id")).scalars().all(),
                    write=False)
    assert rows == ["iteration-1", "base"]
    engine.dispose()


def test_upgrade_from_0007_keeps_experiments_and_adds_sweeps(url: str) -> None:
    """0008: an experiment stored at 0007 is kept, outside any sweep; new ones can point at a sweep."""
    from db.experiments import create_experiment, create_sweep

    engine = make_engine(url)
    upgrade(engine, "0007")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO experiments (name, spec, created_at) VALUES ('old', '{}', "
                          "'2026-01-01 00:00:00')"))
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == HEAD

    def point(c):  # noqa: ANN001, ANN202
        sweep = create_sweep(c, "grid", {"training.lr": [1e-6, 2e-6]})
        return create_experiment(c, "grid lr=1e-06", {}, sweep_id=sweep, sweep_point={"training.lr": 1e-6})

    new_id = transact(engine, point)
    rows = transact(engine, lambda c: c.execute(text("SELECT id, name, sweep_id, sweep_point FROM experiments "
                                                     "ORDER BY id")).all(), write=False)
    assert [(r[1], r[2] is None) for r in rows] == [("old", True), ("grid lr=1e-06", False)] and rows[1][0] == new_id
    engine.dispose()


def test_upgrade_from_0008_keeps_jobs_and_adds_generated_responses(url: str) -> None:
    """0009: a generate job stored at 0008 is kept (with no generated rows); rows can be stored for it."""
    from db.ingest import upsert_generated

    engine = make_engine(url)
    upgrade(engine, "0008")
    job_id = transact(engine, lambda c: queue.enqueue(c, "generate", {}))
    engine.dispose()
    engine = open_database(url)
    assert current_revision(engine) == HEAD
    rec = {"query_id": "q1", "variant": 0, "prompt": "p", "response": "r.", "kept": False, "dropped_by": "min_chars"}
    assert transact(engine, lambda c: upsert_generated(c, job_id, [rec])) == 1
    rows = transact(engine, lambda c: c.execute(text("SELECT job_id, dropped_by FROM generated_responses")).all(),
                    write=False)
    assert [tuple(r) for r in rows] == [(job_id, "min_chars")]
    engine.dispose()
