"""db.reads.experiments: a fixed number of queries whatever the number of experiments (the
Experiments page's budget with hundreds of them), and the pure helpers of app.experiments."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pandas as pd
import yaml
from sqlalchemy import event, select

from app import experiments as page
from db import ingest
from db.engine import transact
from db.models import Job
from db.reads import experiments as reads
from sami_core.spec import EXAMPLES_DIR
from services import sweeps

SMALL = {**yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text()), "iterations": 2, "name": "q"}


def _statements(engine, fn):  # noqa: ANN001, ANN202
    seen: list[str] = []

    def count(conn, cursor, statement, *args) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        out = transact(engine, fn, write=False)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return out, len(seen)


def _sweep(engine, n: int) -> list[int]:  # noqa: ANN001
    prepared = sweeps.prepare_sweep({**SMALL, "sweep": {"training.lr": [1e-6 * (k + 1) for k in range(n)]}})
    ids = [s.experiment_id for s in transact(engine, lambda c: sweeps.submit_sweep(c, prepared)).points]

    def fill(conn) -> None:  # noqa: ANN001
        for job in conn.execute(select(Job.id, Job.iteration).where(Job.kind == "train", Job.experiment_id.in_(ids))):
            ingest.upsert_metrics(conn, job.id, [{"step": s, "loss": 1.0 / (s + job.iteration)} for s in (1, 2, 3)])
    transact(engine, fill)
    return ids


def test_the_reads_take_as_many_queries_for_two_experiments_as_for_six(engine) -> None:  # noqa: ANN001
    few = _sweep(engine, 2)
    reads_of = [reads.experiment_rows, lambda c: reads.winrate_points(c, ids), lambda c: reads.mi_points(c, ids),
                lambda c: reads.loss_points(c, ids), lambda c: reads.final_losses(c, ids)]
    ids = few
    counts_few = [_statements(engine, fn)[1] for fn in reads_of]
    ids = few + _sweep(engine, 4)
    counts_many = [_statements(engine, fn)[1] for fn in reads_of]
    assert counts_few == counts_many and max(counts_many) <= 3, (counts_few, counts_many)

    rows, _ = _statements(engine, reads.experiment_rows)
    assert len(rows) == 6 and rows[0]["constitution"] == {"name": "demo:opus/0", "version": 1}
    assert rows[0]["counts"] == {"queued": len(transact(engine, lambda c: c.execute(
        select(Job.id).where(Job.experiment_id == rows[0]["id"])).all(), write=False))}
    finals = transact(engine, lambda c: reads.final_losses(c, ids), write=False)
    assert {(f["iteration"], f["step"]) for f in finals} == {(1, 3), (2, 3)} and len(finals) == 12
    # iteration 2's loss follows iteration 1's on the overlay's axis
    loss = page.loss_frame(transact(engine, lambda c: reads.loss_points(c, ids[:1]), write=False), {ids[0]: "a"})
    assert list(loss["total_step"]) == [1, 2, 3, 4, 5, 6] and list(loss["iteration"]) == [1, 1, 1, 2, 2, 2]
    assert abs(page.final_loss(finals)[ids[0]] - 1.0 / 5) < 1e-9  # iteration 2, step 3


def test_filter_and_duration() -> None:
    df = pd.DataFrame([{"id": 1, "name": "lr sweep lr=1e-06", "model": "demo", "constitution": "c v1", "sweep": "#2",
                        "state": "queued"},
                       {"id": 12, "name": "paper", "model": "mistralai/Mistral-7B", "constitution": "c v2",
                        "sweep": "", "state": "succeeded"}])
    assert list(page.filter_frame(df, "MISTRAL")["id"]) == [12]
    assert list(page.filter_frame(df, "#2")["id"]) == [1] and list(page.filter_frame(df, "12")["id"]) == [12]
    assert list(page.filter_frame(df, "", ["succeeded"])["id"]) == [12]
    assert page.filter_frame(df, "paper", ["queued"]).empty
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    done = {"started_at": t0, "finished_at": t0 + timedelta(minutes=5), "counts": {"succeeded": 3}}
    assert page.duration_s(done, t0 + timedelta(hours=1)) == 300
    assert page.duration_s({**done, "counts": {"running": 1}}, t0 + timedelta(hours=1)) == 3600
    assert page.duration_s({"started_at": None}, t0) is None
