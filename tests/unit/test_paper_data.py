"""The paper's published training data imported as a finished generate output, checked
for N and the prompts (a file of the paper's shape, built here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import main as cli
from sami_core.errors import DataError
from sami_core.paper_data import read_paper_data
from services.errors import ServiceError
from services.training_data import import_training_data

CONSTITUTIONS = ["1. Be concise.", "1. Be verbose.", "1. Be kind.", "1. Be rude."]


def paper_data(examples: int = 3, n: int = 2) -> dict:
    out = {}
    for k in range(examples):
        post = f"POST: my cat number {k} ate my homework.\n\nSummary:"
        out[str(k)] = [{"prompt": f"Summarize the post.\n\nPrinciples:\n{CONSTITUTIONS[i]}\n\n{post}",
                        "response": f" The post {k} under constitution {i}.", "example_id": k} for i in range(n)]
    return out


def test_import_writes_a_generate_output_the_train_stage_reads(tmp_path: Path):
    f = tmp_path / "paper_n2.json"
    f.write_text(json.dumps(paper_data()))
    done = import_training_data(f, 2, tmp_path / "runs")
    assert done.n_queries == 3 and done.n_constitutions == 2
    rows = [json.loads(line) for line in done.data_path.read_text().splitlines()]
    assert [r["query_id"] for r in rows] == ["0", "1", "2"]
    assert rows[0]["prompts"] == [e["prompt"] for e in paper_data()["0"]]
    assert rows[0]["responses"][1] == " The post 0 under constitution 1."
    assert rows[0]["query"].startswith("POST: my cat number 0")  # what the prompts share
    outputs = json.loads((done.run_dir / "outputs.json").read_text())
    assert outputs["n_kept"] == 3 and outputs["n_constitutions"] == 2
    with pytest.raises(ServiceError, match="already exists"):
        import_training_data(f, 2, tmp_path / "runs")

    from sami_core.train import read_training_data  # the train stage's reader accepts it
    assert len(read_training_data(done.run_dir)) == 3


def test_n_and_prompts_are_checked():
    with pytest.raises(DataError, match=r"--n 2, but examples have other numbers of entries: 3 with 4"):
        read_paper_data(paper_data(n=4), 2)
    mixed = {**paper_data(n=2), "9": paper_data(n=3)["0"]}
    with pytest.raises(DataError, match=r"1 with 3 \(e.g. '9'\)"):
        read_paper_data(mixed, 2)
    same = paper_data()
    same["1"][1]["prompt"] = same["1"][0]["prompt"]
    with pytest.raises(DataError, match=r"example '1': its 2 prompts are not distinct"):
        read_paper_data(same, 2)
    empty = paper_data()
    empty["2"][0]["response"] = "  "
    with pytest.raises(DataError, match=r"example '2', entry 0: 'response' is not a non-empty text"):
        read_paper_data(empty, 2)
    missing = paper_data()
    del missing["0"][1]["prompt"]
    with pytest.raises(DataError, match=r"entry 1: needs 'prompt' and 'response'"):
        read_paper_data(missing, 2)
    with pytest.raises(DataError, match="keyed by example index"):
        read_paper_data([1, 2], 2)
    with pytest.raises(DataError, match="N >= 2"):
        read_paper_data(paper_data(), 1)


def test_cli_command(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setenv("SAMI_HOME", str(tmp_path / "home"))
    f = tmp_path / "tldr.json"
    f.write_text(json.dumps(paper_data(examples=2, n=4)))
    assert cli.main(["import-training-data", str(f), "--n", "4", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_queries"] == 2 and out["n_constitutions"] == 4 and Path(out["data"]).is_file()
    with pytest.raises(SystemExit) as exc:
        cli.main(["import-training-data", str(f), "--n", "2", "--name", "other"])
    assert exc.value.code == 2 and "--n 2" in capsys.readouterr().err
