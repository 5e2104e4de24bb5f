"""Constitution sets (`constitution.paths`): one constitution drawn per query, seeded and
stable, recorded in the generated data, the sampled responses, the judge pairs and the
database (each member a version of its own; every job linked to the set)."""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db import ingest
from db.engine import transact
from db.experiments import set_members
from db.models import Job, Response
from db.reads import constitutions as creads
from db.workspace import Workspace
from sami_core import constitutions
from sami_core.errors import SpecError
from sami_core.judge.pairs import load_responses, make_pairs
from sami_core.judge.runner import JudgeSettings, plan_tasks
from sami_core.spec import EXAMPLES_DIR, ConstitutionSpec, GenerateSpec, SampleSpec, validate_spec
from sami_core.stages import run_generate, run_sample
from services import experiments
from workers import relay
from workers.relay import OutputsError

DEMO = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
OPUS = [f"demo:opus/{k}" for k in range(6)]
TINY = {"data": {"eval_size": 3, "train_size": 6}, "generation": {"max_new_tokens": 3, "batch_size": 8}}


def test_the_draw_is_seeded_stable_and_covers_the_set() -> None:
    folder = constitutions.load_set("demo:opus", seed=0)
    assert [c.name for c in folder.members] == OPUS  # a folder: every *.json, sorted
    listed = constitutions.load_set(list(reversed(OPUS[:3])), seed=0)
    assert [c.name for c in listed.members] == list(reversed(OPUS[:3]))  # a list: as given
    ids = [str(i) for i in range(300)]
    draws = [folder.draw(q).name for q in ids]
    assert draws == [constitutions.load_set("demo:opus", seed=0).draw(q).name for q in ids]  # stable
    counts = Counter(draws)
    assert set(counts) == set(OPUS) and min(counts.values()) > 300 / 6 / 2  # every member, roughly evenly
    other = [constitutions.load_set("demo:opus", seed=1).draw(q).name for q in ids]
    assert other != draws  # the seed matters
    # The inline form submit stores draws exactly as the paths it came from.
    inline = constitutions.set_from_spec(ConstitutionSpec(seed=0, members=[
        {"name": c.name, "principles": c.to_native()} for c in folder.members]))
    assert [inline.draw(q).name for q in ids] == draws
    assert inline.draw("7").positive().text == folder.draw("7").positive().text


def test_generate_and_evaluate_build_each_querys_variants_from_its_draw() -> None:
    """Both stages take their items from variant_items: the drawn constitution, then its N variants."""
    from types import SimpleNamespace

    from sami_core.stages import query_variants, variant_items

    cset = constitutions.load_set("demo:opus", seed=4)
    queries = [SimpleNamespace(id=str(i), text=f"post {i}") for i in range(12)]
    build = SimpleNamespace(pair=lambda c, q: (f"{c}|{q}", f"train:{c}|{q}"))  # generation, training prompt
    items = variant_items(queries, cset, 2, 7, True, build)
    assert len(items) == 24 and len({it[5].name for it in items}) > 1
    for q, i, v, prompt, training_prompt, drawn in items:
        assert drawn is cset.draw(q.id) and v == query_variants(drawn, 2, 7, q.id, True)[i]
        assert prompt == f"{v.text}|{q.text}" and training_prompt == f"train:{v.text}|{q.text}"


def test_the_new_experiment_form_offers_the_shipped_folders_as_sets() -> None:
    from app import new_experiment

    choices = new_experiment.constitution_choices([], ["demo:opus/0"], ["demo:mistral", "demo:opus"])
    label = new_experiment.constitution_label({"paths": "demo:opus"}, [])
    assert choices[label] == {"paths": "demo:opus"} and "set" in label
    assert new_experiment.constitution_label({"paths": ["demo:opus/0", "x.json"]}, []).startswith("set of 2")


def test_set_spec_errors_name_the_field(tmp_path: Path) -> None:
    def errors(constitution):  # noqa: ANN001, ANN202
        with pytest.raises(SpecError) as err:
            spec = validate_spec("generate", {"constitution": constitution})
            constitutions.set_from_spec(spec.constitution)
        return err.value.errors

    [(where, why)] = errors({"path": "demo:opus/0", "paths": "demo:opus"})
    assert where == "constitution" and "`paths`" in why and "path and paths" in why
    assert "`paths` is empty" in errors({"paths": []})[0][1]
    assert errors({"paths": ["demo:opus/0", "demo:opus/0"]})[0][1].startswith("`paths` lists 'demo:opus/0' twice")
    (tmp_path / "empty").mkdir()
    assert errors({"paths": str(tmp_path / "empty")}) == [
        ("constitution.paths", f"folder {str(tmp_path / 'empty')!r} holds no *.json constitution files")]
    assert errors({"paths": ["demo:opus/0", str(tmp_path / "nope.json")]}) == [
        ("constitution.paths.1", f"constitution file {str(tmp_path / 'nope.json')!r} does not exist")]
    assert errors({"paths": "demo:nope"})[0][0] == "constitution.paths"
    # Submitting names the field too, and refuses a member that cannot give N variants.
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "a.json").write_text(json.dumps([{"principle": "Be brief.", "antithesis": "Ramble."}]))
    with pytest.raises(SpecError) as err:
        experiments.prepare_data(copy.deepcopy(DEMO) | {"constitution": {"paths": str(tmp_path / "set")},
                                                        "n_constitutions": 4}, env={})
    assert err.value.errors[0][0] == "constitution.paths" and "set/a" in err.value.errors[0][1]


def test_generate_and_sample_record_the_drawn_constitution(tmp_path: Path, demo_model_dir: Path) -> None:
    model = {"path": str(demo_model_dir), "prompt_format": "plain"}
    c = {"paths": "demo:opus", "seed": 5}
    cset = constitutions.load_set("demo:opus", seed=5)
    gen = GenerateSpec.model_validate({**TINY, "model": model, "constitution": c,
                                       "filters": {"require_distinct": False, "min_chars": 0},
                                       "generation": {**TINY["generation"], "temperature": 1.0}})
    run_generate(gen, tmp_path / "gen")
    rows = [json.loads(x) for x in (tmp_path / "gen" / "data.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and len({r["constitution_name"] for r in rows}) > 1
    for r in rows:
        drawn = cset.draw(r["query_id"])
        assert r["constitution_name"] == drawn.name
        texts = {t for p in drawn.principles for t in (p.principle, p.antithesis) if t}
        for variant, prompt in zip(r["constitutions"], r["prompts"]):  # each variant is the drawn one's
            assert {line.split(". ", 1)[1] for line in variant.splitlines()} <= texts and variant in prompt
    gens = [json.loads(x) for x in (tmp_path / "gen" / "generations.jsonl").read_text().splitlines()]
    assert all(g["constitution_name"] == cset.draw(g["query_id"]).name for g in gens)

    sample = SampleSpec.model_validate({**TINY, "model": model, "constitution": c, "temperatures": [0.0]})
    run_sample(sample, tmp_path / "sample")
    got = [json.loads(x) for x in (tmp_path / "sample" / "responses.jsonl").read_text().splitlines()]
    assert len(got) == 3 and len({r["constitution_name"] for r in got}) > 1
    for r in got:
        drawn = cset.draw(r["query_id"])
        assert (r["constitution_name"], r["constitution"]) == (drawn.name, drawn.positive().text)
        assert drawn.positive().text in r["prompt"]


def _responses(path: Path, cset: constitutions.ConstitutionSet, who: str) -> Path:
    lines = [{"query_id": q, "query": f"post {q}", "temperature": 0.0, "constitution": cset.draw(q).positive().text,
              "constitution_name": cset.draw(q).name, "response": f"{who} {q}"} for q in map(str, range(8))]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_a_judge_pair_carries_and_shows_the_drawn_constitution(tmp_path: Path) -> None:
    folder = tmp_path / "set"
    folder.mkdir()
    for name, (principle, antithesis) in {"a": ("Be brief.", "Ramble."), "b": ("Be kind.", "Be rude."),
                                          "c": ("Quote the post.", "Invent facts.")}.items():
        (folder / f"{name}.json").write_text(json.dumps([{"principle": principle, "antithesis": antithesis}]))
    cset = constitutions.load_set(str(folder), seed=2)
    assert [c.name for c in cset.members] == ["set/a", "set/b", "set/c"]
    pairs = make_pairs(load_responses(_responses(tmp_path / "a.jsonl", cset, "cand")),
                       load_responses(_responses(tmp_path / "b.jsonl", cset, "base")))
    assert len(pairs) == 8 and len({p.constitution_name for p in pairs}) == 3
    tasks = plan_tasks(pairs, JudgeSettings(provider="openai", model="m", task="summarization", seed=0,
                                            shuffle_principles=False, allow_tie=False, order="random"))
    for t in tasks:
        drawn = cset.draw(t.pair.query_id)
        assert (t.pair.constitution_name, t.pair.constitution) == (drawn.name, drawn.positive().text)
        assert drawn.principles[0].principle in t.prompt
        assert not any(c.principles[0].principle in t.prompt for c in cset.members if c is not drawn)


def test_submit_stores_each_member_and_ingest_ties_each_response_to_its_draw(
        engine, tmp_path: Path) -> None:  # noqa: ANN001
    spec = copy.deepcopy(DEMO) | {"constitution": {"paths": "demo:opus", "seed": 1},
                                  "sampling": {**DEMO["sampling"], "antithesis": True}}
    prepared = experiments.prepare_data(spec, env={})
    assert prepared.exp.constitution.members is not None and prepared.exp.constitution.seed == 1
    done = transact(engine, lambda c: experiments.submit(c, prepared))
    assert [m["name"] for m in done.constitution["members"]] == OPUS
    with engine.connect() as c:
        jobs = {r.name: r for r in c.execute(select(Job.__table__).where(Job.experiment_id == done.experiment_id))}
        links = set_members(c, [j.id for j in jobs.values()])
        versions = {v["id"]: v for v in creads.versions(c)}
        labels = creads.job_versions(c, [jobs["train-1"].id])
        used = creads.usage(c, done.constitution["members"][0]["id"])
    assert all(j.constitution_id is None for j in jobs.values()) and set(links) == {j.id for j in jobs.values()}
    assert [m["name"] for m in links[jobs["sample-1"].id]] == OPUS
    assert [m["name"] for m in links[jobs["sample-1-antithesis"].id]] == [f"{n} (antithesis)" for n in OPUS]
    member = versions[done.constitution["members"][0]["id"]]
    assert member["n_experiments"] == 1 and member["n_jobs"] == len(jobs) - sum(k.endswith("antithesis") for k in jobs)
    assert used[0]["experiment_id"] == done.experiment_id
    assert labels[jobs["train-1"].id].startswith("set of 6: demo:opus/0 v1")
    from cli.experiments import format_table

    assert "constitution: demo:opus (from demo:opus)\n  member: demo:opus/0 v1 (id" in format_table(done)
    # The same set submitted again reuses the versions.
    again = transact(engine, lambda c: experiments.submit(c, prepared))
    assert [m["id"] for m in again.constitution["members"]] == [m["id"] for m in done.constitution["members"]]

    # A sample job's responses point at the version each query drew.
    from db import queue

    def claim(c):  # noqa: ANN001, ANN202
        worker = queue.register_worker(c, name="w", host="h", pid=1, devices=[], kinds=None)
        return queue.claim(c, worker, devices=0, lease_seconds=30, kinds=["sample"])

    job = transact(engine, claim)
    ws = Workspace(tmp_path / "ws")
    run_dir = ws.resolve(job.run_dir)
    run_dir.mkdir(parents=True)
    cset = constitutions.set_from_spec(prepared.exp.constitution)
    anti = job.name.endswith("antithesis")
    names = {q: cset.draw(q).name + (" (antithesis)" if anti else "") for q in map(str, range(6))}
    lines = [{"query_id": q, "query": "p", "temperature": 0.0, "constitution": "...", "constitution_name": n,
              "response": f"r{q}", "n_tokens": 2} for q, n in names.items()]
    (run_dir / "responses.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    outputs = {"responses": "responses.jsonl", "n": 6, "model": "demo", "temperatures": [0.0]}
    transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, run_dir, ws))
    with engine.connect() as c:
        by_name = {m["name"]: m["id"] for m in set_members(c, [job.id])[job.id]}
        stored = {r.query_id: r.constitution_id for r in c.execute(select(Response.query_id, Response.constitution_id))}
        [source] = ingest.list_sources(c)
    assert stored == {q: by_name[n] for q, n in names.items()} and len(set(stored.values())) > 1
    assert ingest.source_constitution(source).startswith("set of 6: demo:opus/0")  # the sources table
    lines[0]["constitution_name"] = "elsewhere"
    (run_dir / "responses.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(OutputsError, match="names constitution 'elsewhere', which is not one of the job's set"):
        transact(engine, lambda c: relay.ingest_outputs(c, job, outputs, run_dir, ws))
