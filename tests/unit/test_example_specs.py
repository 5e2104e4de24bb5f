"""Every experiment spec in sami_core/examples/ passes `sami submit --dry-run` here, offline,
with an empty Hugging Face cache: the paper's specs name hub data and hub models, and
validating them reads and downloads neither (a note says where the data is read). The
paper's settings in them are checked by value."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main as cli
from db.testing import new_database_url
from sami_core.spec import EXAMPLES_DIR
from services import experiments

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.yaml"))
PAPER = {"tldr-mistral-7b": "mistralai/Mistral-7B-v0.1", "tldr-mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
         "hh-rlhf-mistral-7b": "mistralai/Mistral-7B-v0.1"}
KEY_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT")


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "ws"
    home.mkdir()
    monkeypatch.setenv("SAMI_HOME", str(home))
    monkeypatch.setenv("SAMI_DATABASE_URL", new_database_url("sqlite", home, migrated=True))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))  # nothing cached: a read would fail offline
    for var in KEY_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)
    cli._engine.cache_clear()
    yield home
    cli._engine.cache_clear()


def test_the_examples_include_the_paper_experiments_and_a_cpu_spec():
    names = {p.stem for p in EXAMPLES}
    assert set(PAPER) | {"tldr-tiny-cpu", "demo"} <= names


@pytest.mark.parametrize("spec", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_passes_a_dry_run_offline(workspace: Path, spec: Path, capsys: pytest.CaptureFixture):
    rc = cli.main(["submit", str(spec), "--dry-run", "--json"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    result = json.loads(out.out)
    assert result["dry_run"] and result["experiment_id"] is None and result["jobs"]
    hub = experiments.prepare(spec).exp.data.source == "hf"
    assert any(w.startswith("data: hub dataset") and "nothing is downloaded" in w for w in result["warnings"]) == hub
    assert not (workspace.parent / "empty-hf-cache").exists()  # nothing was fetched into the cache


@pytest.mark.parametrize("name", PAPER)
def test_paper_specs_carry_the_papers_settings(name: str):
    prepared = experiments.prepare(EXAMPLES_DIR / f"{name}.yaml")
    exp = prepared.exp
    assert exp.model.path == PAPER[name] and exp.model.prompt_format == "plain"  # base models
    assert exp.n_constitutions == 2 and exp.iterations == 3 and exp.train_from == "previous"
    t = exp.training
    assert (t.optimizer, t.lr, t.queries_per_microbatch, t.grad_accum, t.save_every, t.beta) == \
        ("rmsprop", 5e-7, 1, 16, 32, 0.0)
    assert t.activation_checkpointing and exp.devices.train == 8
    d = exp.data
    assert d.source == "hf" and d.eval_size == 250
    if name.startswith("tldr"):
        assert exp.task == "summarization"
        assert (d.dataset, d.config, d.split, d.field, d.id_field, d.max_queries, d.eval_split) == \
            ("openai/summarize_from_feedback", "comparisons", "train", "info.post", "info.id", 3000, "validation")
        # the paper's set of six, one drawn per query; its prompts and filters
        assert [m["name"] for m in prepared.members] == [f"demo:mistral/{k}" for k in range(6)]
        assert exp.prompts.preset == "paper-tldr" and exp.filters.ends_with == ["."]
        assert exp.filters.drop_substrings == ["[insert", "[]", "]", "Response"]
    else:
        assert exp.task == "dialogue"
        assert (d.dataset, d.field, d.extract, d.eval_split) == ("Anthropic/hh-rlhf", "chosen", "first_human_turn", "test")
        assert len(prepared.principles) == 2 and all(p["antithesis"] for p in prepared.principles)
    # expert iteration: each iteration generates with the previous checkpoint and trains from it
    plans = {p.key: p for p in prepared.plans}
    assert plans["generate-2"].depends_on == ["train-1"] and plans["train-3"].depends_on == ["generate-3"]
    assert plans["train-2"].spec["model"]["path"] == plans["generate-2"].spec["model"]["path"] != PAPER[name]
    assert {"judge-3-vs-base", "judge-3-vs-instruct", "judge-3-vs-iteration-1"} <= set(plans)


def test_the_cpu_spec_is_the_paper_dag_on_the_demo_model():
    prepared = experiments.prepare(EXAMPLES_DIR / "tldr-tiny-cpu.yaml")
    exp = prepared.exp
    assert exp.model.path == "demo" and exp.data.source == "demo"
    assert exp.iterations == 3 and exp.train_from == "previous" and exp.training.optimizer == "rmsprop"
    assert {p.devices for p in prepared.plans} == {0}
    assert {"train-3", "judge-3-vs-base", "judge-3-vs-iteration-1"} <= {p.key for p in prepared.plans}
