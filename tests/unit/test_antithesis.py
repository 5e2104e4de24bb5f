"""Sampling under the antithesis (`sampling.antithesis`, the sample stage's
`constitution_variant`): every principle flipped, a response source per model named
"<label> (antithesis)", and the responses tied to a constitution version of their own
whose principles are the antitheses."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import select

from db.engine import transact
from db.models import Constitution as ConstitutionRow
from db.models import Job
from sami_core.constitutions import Constitution, Principle
from sami_core.errors import ConstitutionError, SpecError
from sami_core.pipeline import expand
from sami_core.spec import EXAMPLES_DIR, SampleSpec
from sami_core.stages import run_sample
from services import experiments

DEMO = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
TWO = Constitution((Principle("Be brief.", "Be long-winded."), Principle("Be kind.", "Be rude.")), "two")


def test_the_antithesis_flips_every_principle_and_swaps_into_a_constitution() -> None:
    v = TWO.antithesis()
    assert v.flips == (True, True) and v.text == "1. Be long-winded.\n2. Be rude."
    swapped = TWO.swapped()
    assert [(p.principle, p.antithesis) for p in swapped.principles] == [("Be long-winded.", "Be brief."),
                                                                        ("Be rude.", "Be kind.")]
    assert swapped.positive().text == v.text
    partial = Constitution((Principle("a", "b"), Principle("c")))
    assert partial.antithesis().text == "1. b\n2. c"  # a principle without an antithesis stays
    assert [(p.principle, p.antithesis) for p in partial.swapped().principles] == [("b", "a"), ("c", None)]
    with pytest.raises(ConstitutionError, match="no principle has an antithesis"):
        Constitution((Principle("a"), Principle("c"))).antithesis()


def test_the_pipeline_adds_an_antithesis_sample_per_model() -> None:
    spec = copy.deepcopy(DEMO) | {"iterations": 2, "sampling": {**DEMO["sampling"], "antithesis": True}}
    prepared = experiments.prepare_data(spec, env={})
    plans = {p.key: p for p in prepared.plans}
    assert {k for k in plans if k.endswith("-antithesis")} == {"sample-base-antithesis", "sample-1-antithesis",
                                                              "sample-2-antithesis"}
    anti, pos = plans["sample-2-antithesis"], plans["sample-2"]
    assert anti.label == "iteration-2 (antithesis)" and anti.antithesis and not pos.antithesis
    assert anti.depends_on == ["train-2"] and anti.spec["constitution_variant"] == "antithesis"
    assert {k: v for k, v in anti.spec.items() if k != "constitution_variant"} == {
        k: v for k, v in pos.spec.items() if k != "constitution_variant"}
    assert not any(k.endswith("-antithesis") for k in {p.key for p in expand(prepared.exp.model_copy(
        update={"sampling": prepared.exp.sampling.model_copy(update={"antithesis": False})}), "r")})


def test_submit_ties_antithesis_jobs_to_the_swapped_version(engine) -> None:  # noqa: ANN001
    spec = copy.deepcopy(DEMO) | {"sampling": {**DEMO["sampling"], "antithesis": True}}
    done = transact(engine, lambda c: experiments.submit(c, experiments.prepare_data(spec, env={})))
    with engine.connect() as c:
        rows = {r.name: r for r in c.execute(select(Job.__table__).where(Job.experiment_id == done.experiment_id))}
        versions = {r.id: r for r in c.execute(select(ConstitutionRow.__table__))}
    pos, anti = versions[rows["sample-1"].constitution_id], versions[rows["sample-1-antithesis"].constitution_id]
    assert pos.id != anti.id and anti.name.endswith("(antithesis)")
    assert [(p["principle"], p["antithesis"]) for p in anti.principles] == [
        (p["antithesis"], p["principle"]) if p["antithesis"] else (p["principle"], None) for p in pos.principles]
    assert any(p["antithesis"] for p in pos.principles)
    assert rows["sample-base-antithesis"].constitution_id == anti.id and rows["train-1"].constitution_id == pos.id


def test_a_sample_stage_asked_for_an_antithesis_that_does_not_exist_names_the_field(tmp_path: Path) -> None:
    """(An experiment always has one: N >= 2 variants need a principle with an antithesis.)"""
    spec = SampleSpec.model_validate({"constitution": {"principles": [{"principle": "Be brief."}]},
                                      "constitution_variant": "antithesis"})
    with pytest.raises(SpecError) as err:
        run_sample(spec, tmp_path / "anti")
    assert err.value.errors == [("constitution_variant", "no principle has an antithesis: write one to sample "
                                                         "under the antithesis")]


def test_the_sample_stage_prompts_with_the_antithesis(tmp_path: Path, demo_model_dir: Path) -> None:
    spec = SampleSpec.model_validate({
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "limit": 2, "temperatures": [0.0],
        "generation": {"max_new_tokens": 3, "temperature": 0.0}, "constitution_variant": "antithesis"})
    run_sample(spec, tmp_path / "anti")
    rows = [json.loads(x) for x in (tmp_path / "anti" / "responses.jsonl").read_text().splitlines()]
    from sami_core import constitutions

    c = constitutions.from_spec(spec.constitution)
    assert len(rows) == 2 and all(r["constitution"] == c.antithesis().text != c.positive().text for r in rows)
    assert all(c.antithesis().text in r["prompt"] for r in rows)
