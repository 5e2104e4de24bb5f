"""`sami sources` and `sami judge --provider auto`: the sources table names each
source's constitution (an imported file's constitution source; a sampled source's stored
version) and its model; an auto judge is resolved from the environment when the job is
queued. The CLI runs in this process on a real database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from db import ingest, queue
from db.engine import make_engine, transact
from db.experiments import constitution_version
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason
from sami_core.results import PUBLISHED_DIR
from cli import main as cli
from services import exports, judging, results

IMPORTED = "base-mistral-opus-constitution-temperature-0.0"
CANDIDATE = "iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0"
PLANTED_KEY = "sk-planted-0c5d1e-auto-judge"


@pytest.fixture(params=BACKENDS)
def engine(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    if request.param == "postgresql" and (reason := postgres_unavailable_reason()):
        pytest.skip(reason)
    home = tmp_path / "ws"
    home.mkdir()
    url = new_database_url(request.param, home, migrated=True)
    monkeypatch.setenv("SAMI_HOME", str(home))
    monkeypatch.setenv("SAMI_DATABASE_URL", url)
    for var in ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    cli._engine.cache_clear()
    e = make_engine(url)
    yield e
    cli._engine.cache_clear()
    e.dispose()


def sources_table(capsys: pytest.CaptureFixture, *args: str) -> str:
    assert cli.main(["sources", *args]) == 0
    return capsys.readouterr().out


def test_the_table_shows_each_sources_constitution_and_model(engine, capsys: pytest.CaptureFixture) -> None:  # noqa: ANN001
    transact(engine, lambda c: results.import_results_file(c, PUBLISHED_DIR / f"{IMPORTED}.json"))

    def sampled(c):  # noqa: ANN001, ANN202  (a model baseline sampled under a stored constitution version)
        c_id, version, _ = constitution_version(c, "concise", [{"principle": "be brief", "antithesis": "ramble"}])
        job = queue.enqueue(c, "sample", {"model": {"path": "org/Instruct-7B"}}, name="sample-instruct",
                            constitution_id=c_id)
        src = ingest.upsert_response_source(c, job, kind="baseline", label="instruct", model="org/Instruct-7B")
        ingest.upsert_responses(c, src, [{"query_id": "q1", "temperature": 0.0, "text": "short"}],
                                constitution_id=c_id)
        return version

    version = transact(engine, sampled)
    lines = sources_table(capsys).splitlines()
    assert lines[0].split() == ["id", "kind", "experiment", "responses", "constitution", "model", "label"]
    rows = [ln.split() for ln in lines[1:]]
    assert rows == [["1", "import", "-", "250", "opus", "mistral:base", IMPORTED],
                    ["2", "baseline", "-", "1", "concise", f"v{version}", "org/Instruct-7B", "instruct"]]
    # Columns line up: every row's label starts where the header's does.
    assert {ln.index(lbl) for ln, lbl in zip(lines, ["label", IMPORTED, "instruct"], strict=True)} == {
        lines[0].index("label")}
    listed = json.loads(sources_table(capsys, "--json"))
    assert [(s["constitution_source"], s["constitution_name"]) for s in listed] == [("opus", None), (None, "concise")]


def test_judge_provider_auto_is_resolved_when_the_job_is_queued(
    engine, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch  # noqa: ANN001
) -> None:
    for name in (CANDIDATE, IMPORTED):
        transact(engine, lambda c, name=name: results.import_results_file(c, PUBLISHED_DIR / f"{name}.json"))
    args = ["judge", "--candidate", CANDIDATE, "--baseline", IMPORTED, "--provider", "auto", "--limit", "2"]

    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "provider auto -> the local hf judge on the demo model" in out.err
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    assert cli.main(args) == 0
    out = capsys.readouterr()
    assert "provider auto -> OpenAI 'gpt-4o' (OPENAI_API_KEY is set" in out.err

    rows = sorted(transact(engine, lambda c: queue.list_jobs(c)), key=lambda r: r.id)
    judges = [(r.spec["judge"]["provider"], r.spec["judge"]["model"], r.spec["judge"]["api_key_env"]) for r in rows]
    assert judges == [("hf", "demo", None), ("openai", "gpt-4o", "OPENAI_API_KEY")]
    assert PLANTED_KEY not in json.dumps([r.spec for r in rows]) + out.out + out.err


def test_export_mi_writes_the_stored_figures_per_scoring_model(engine, tmp_path: Path,  # noqa: ANN001
                                                               capsys: pytest.CaptureFixture) -> None:
    from db.experiments import create_experiment

    def figures(bound: float) -> dict:
        out = {"model": "demo", "n_queries": 16, "n_constitutions": 2, "loss": 0.69 - bound}
        for name, v in (("mi_lower_bound", bound), ("row_accuracy", 0.75), ("col_accuracy", 0.5)):
            out.update({name: v, f"{name}_ci_low": v - 0.1, f"{name}_ci_high": v + 0.1})
        return out

    def seed(c):  # noqa: ANN001, ANN202
        exps = [create_experiment(c, name, {}) for name in ("a", "b")]
        for exp in exps:
            job = queue.enqueue(c, "evaluate", {}, name="evaluate-1", experiment_id=exp, iteration=1)
            ingest.upsert_mi_results(c, job, "iteration-1", {"iteration-1": figures(0.25), "base": figures(0.0)},
                                     experiment_id=exp, iteration=1, temperature=0.0)
        return exps

    exp_a, _ = transact(engine, seed)
    assert cli.main(["export", "mi", "--out", "mi.csv", "--out-dir", str(tmp_path), "--experiment", str(exp_a)]) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    import csv

    with open(tmp_path / "mi.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == exports.MI_COLUMNS
    assert [(r["experiment_id"], r["label"], r["scorer"]) for r in rows] == [
        (str(exp_a), "iteration-1", "base"), (str(exp_a), "iteration-1", "iteration-1")]
    assert float(rows[1]["mi_lower_bound"]) == pytest.approx(0.25)
    assert float(rows[1]["mi_lower_bound_ci_low"]) == pytest.approx(0.15)
    assert cli.main(["export", "mi", "--out", "all.csv", "--out-dir", str(tmp_path)]) == 0
    assert "wrote 4 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        cli.main(["export", "mi", "--out", "x.csv", "--out-dir", str(tmp_path), "--source", "base"])
    assert exit_.value.code != 0 and "--source: the mi export is per evaluate job" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_judge_refuses_a_bad_template_file_before_queueing(engine, tmp_path: Path,  # noqa: ANN001
                                                           capsys: pytest.CaptureFixture) -> None:
    for name in (CANDIDATE, IMPORTED):
        transact(engine, lambda c, name=name: results.import_results_file(c, PUBLISHED_DIR / f"{name}.json"))
    bad = tmp_path / "judge.yaml"
    bad.write_text("system: s\nuser: '{query} {constitution} {response_a} {response_b} {title}'\n"
                   "answer_pattern: 'Final Response:\\s*([AB])'\n")
    args = ["judge", "--candidate", CANDIDATE, "--baseline", IMPORTED, "--provider", "hf", "--judge-model", "demo",
            "--limit", "2", "--template", str(bad)]
    with pytest.raises(SystemExit) as exit_:
        cli.main(args)
    err = capsys.readouterr().err
    assert exit_.value.code != 0 and f"template: {bad}: user: unknown placeholder {{title}}" in err
    assert "Traceback" not in err and transact(engine, lambda c: queue.list_jobs(c)) == []
    bad.write_text(bad.read_text().replace(" {title}", ""))
    assert cli.main(args + ["--unparseable", "tie"]) == 0
    (job,) = transact(engine, lambda c: queue.list_jobs(c))
    assert job.spec["template"]["user"].startswith("{query}") and job.spec["unparseable"] == "tie"
