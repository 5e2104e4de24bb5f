"""An experiment that names another model as a judge baseline (here the demo model stands
in for an instruct model): `sami submit` enqueues a `sample-instruct` job, a worker runs
it through the real sample stage, and its responses become a `baseline` response source
labelled `instruct`, sampled as the base model's are (same queries, temperatures,
constitution and decoding settings). Real processes, SQLite.

The two sources' texts are not compared with each other: a model baseline given as a
string uses the prompt format its tokenizer suggests (the demo tokenizer has a chat
template, so `instruct` gets chat prompts while the experiment's model is `plain`), and
even with the same prompts two processes need not round near-tied logits alike. Each
source's greedy texts are checked as greedy completions of its own recorded prompts
instead (tests/greedy.py), and the database's texts against the job's own files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db.models import Job, Response, ResponseSource
from sami_core.spec import EXAMPLES_DIR
from tests.greedy import assert_greedy
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
    spec["iterations"] = 1
    spec["judge"]["judge"] = {"provider": "auto", "model": "gpt-4o"}
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
            select(Response.query_id, Response.temperature, Response.constitution_id, Response.text,
                   Response.n_tokens)
            .where(Response.source_id == source_id).order_by(Response.query_id, Response.temperature)).all()])

    base, instruct = (responses(s.id) for s in sources)
    # Sampled as the base model is: the same queries, temperatures and constitution version.
    assert len(base) == len(instruct) == 3 * 2
    assert [r[:3] for r in instruct] == [r[:3] for r in base]
    assert {r[1] for r in instruct} == {0.0, 1.0} and len({r[0] for r in instruct}) == 3
    assert {r[2] for r in instruct} == {r[2] for r in base} == {jobs["sample-instruct"].constitution_id} != {None}
    # The same decoding settings, split, limit and constitution in the two jobs' specs; only the model differs.
    specs = {k: dict(jobs[k].spec) for k in ("sample-base", "sample-instruct")}
    assert specs["sample-base"].pop("model")["prompt_format"] == "plain"
    assert specs["sample-instruct"].pop("model") == {"path": "demo", "dtype": "auto", "prompt_format": "auto",
                                                     "trust_remote_code": False}
    assert specs["sample-base"] == specs["sample-instruct"]
    assert jobs["sample-instruct"].outputs["n"] == jobs["sample-base"].outputs["n"] == 6

    # Each job's run directory: its stored texts are exactly the job's own responses.jsonl
    # (the same bytes by construction: ingestion copies them), and the queries and the
    # constitution text the prompts were built from are the same in both.
    runs = {k: [json.loads(x) for x in (sami.ws.resolve(jobs[k].run_dir) / "responses.jsonl").read_text()
                .splitlines()] for k in ("sample-base", "sample-instruct")}
    for key, stored in (("sample-base", base), ("sample-instruct", instruct)):
        assert sorted((r["query_id"], r["temperature"], r["response"], r["n_tokens"]) for r in runs[key]) == \
            [(q, t, text, n) for q, t, _, text, n in stored], key
    by_key = {k: {(r["query_id"], r["temperature"]): r for r in rows} for k, rows in runs.items()}
    for k, b in by_key["sample-base"].items():
        i = by_key["sample-instruct"][k]
        assert (i["query"], i["constitution"]) == (b["query"], b["constitution"])
        assert b["constitution"] in b["prompt"] and b["constitution"] in i["prompt"]
        assert not b["prompt"].startswith("<s>") and i["prompt"].startswith("<s>SYSTEM:")  # plain vs chat

    # Greedy (temperature 0) means greedy: every token of each source's greedy texts was the
    # most likely one given its own prompt, up to a near-tie (replayed in this process).
    from sami_core.generation import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(demo_model_dir))
    max_new = specs["sample-base"]["generation"]["max_new_tokens"]
    for rows in runs.values():
        greedy = [r for r in rows if r["temperature"] == 0.0]
        assert len(greedy) == 3
        assert_greedy(model, tok, [r["prompt"] for r in greedy], [(r["raw"], r["n_tokens"]) for r in greedy],
                      max_new)

    # The table lists it with its constitution version.
    table = sami.cli("sources").stdout.splitlines()
    (row,) = [ln for ln in table if ln.rstrip().endswith("instruct")]
    assert row.split()[1:5] == ["baseline", str(result["experiment_id"]), "6", "demo:opus/0"]
