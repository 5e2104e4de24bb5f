"""An experiment that names another model as a judge baseline (here the demo model stands
in for an instruct model): `sami submit` enqueues a `sample-instruct` job, a worker runs
it through the real sample stage, and its responses become a `baseline` response source
labelled `instruct`, sampled exactly as the base model's (same queries, temperatures and
constitution). Real processes, SQLite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db.models import Job, Response, ResponseSource
from sami_core.spec import EXAMPLES_DIR
from tests.integration.conftest import Sami

pytestmark = pytest.mark.integration


def test_a_model_baseline_is_sampled_by_the_worker_into_a_baseline_source(
    sami_sqlite: Sami, demo_model_dir: Path
) -> None:
    sami = sami_sqlite
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        sami.env.pop(var, None)  # `provider: auto` -> the local demo judge, whatever this machine has
    spec = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
    spec["sampling"].update(temperatures=[0.0, 1.0], limit=3)
    spec["judge"]["baselines"] = ["base", {"model": "demo", "label": "instruct"}]
    path = sami.home / "exp.yaml"
    path.write_text(yaml.safe_dump(spec))
    sami.cli("init")
    submitted = sami.cli("submit", str(path), "--json", timeout=120)
    result = json.loads(submitted.stdout)
    assert "provider auto -> the local hf judge on the demo model" in submitted.stderr
    keys = {j["key"]: j["id"] for j in result["jobs"]}
    assert {"sample-instruct", "judge-1-vs-base", "judge-1-vs-instruct"} <= set(keys)
    # Only the two baseline samples are run here: cancelling generate-1 blocks the rest.
    sami.cli("cancel", str(keys["generate-1"]))
    sami.worker("--exit-when-idle", "--lease-seconds", "30")
    assert sami.wait_workers(timeout=300) == [0], sami.worker_logs()

    jobs = {r.name: r for r in sami.tx(lambda c: c.execute(
        select(Job.__table__).where(Job.experiment_id == result["experiment_id"])).all())}
    assert (jobs["sample-base"].status, jobs["sample-instruct"].status) == ("succeeded", "succeeded")
    assert jobs["judge-1-vs-instruct"].status == "blocked"
    sources = sami.tx(lambda c: c.execute(
        select(ResponseSource.id, ResponseSource.label, ResponseSource.kind, ResponseSource.model,
               ResponseSource.checkpoint_id, ResponseSource.job_id)
        .where(ResponseSource.experiment_id == result["experiment_id"]).order_by(ResponseSource.label)).all())
    assert [(s.label, s.kind, s.model, s.checkpoint_id) for s in sources] == [
        ("base", "baseline", "demo", None), ("instruct", "baseline", "demo", None)]
    assert {s.label: s.job_id for s in sources}["instruct"] == jobs["sample-instruct"].id

    def responses(source_id: int) -> list[tuple]:
        return sami.tx(lambda c: [tuple(r) for r in c.execute(
            select(Response.query_id, Response.temperature, Response.constitution_id, Response.text)
            .where(Response.source_id == source_id).order_by(Response.query_id, Response.temperature)).all()])

    base, instruct = (responses(s.id) for s in sources)
    assert len(instruct) == 3 * 2
    # The same model, prompts and seeds: the greedy samples are the same texts.
    assert [r[:3] for r in instruct] == [r[:3] for r in base]
    assert [r for r in instruct if r[1] == 0.0] == [r for r in base if r[1] == 0.0]
    # The table lists it with its constitution version.
    table = sami.cli("sources").stdout.splitlines()
    (row,) = [ln for ln in table if ln.rstrip().endswith("instruct")]
    assert row.split()[1:5] == ["baseline", str(result["experiment_id"]), "6", "demo:opus/0"]
