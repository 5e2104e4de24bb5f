"""Stages from the command line on the demo model: generate and sample, resume, refusals."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sami_core.generation import load_model_and_tokenizer
from tests.greedy import assert_greedy

pytestmark = pytest.mark.integration


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sami_core", *args], capture_output=True, text=True, timeout=timeout)


def write(tmp: Path, name: str, spec: dict) -> Path:
    p = tmp / name
    p.write_text(yaml.safe_dump(spec))
    return p


def gen_spec(model: Path, **over) -> dict:
    spec = {"model": {"path": str(model), "prompt_format": "plain"},
            "data": {"source": "demo", "train_size": 4, "eval_size": 10},
            "constitution": {"path": "demo:opus/0"}, "n_constitutions": 2,
            "generation": {"temperature": 1.0, "max_new_tokens": 12, "batch_size": 4, "seed": 0}}
    spec.update(over)
    return spec


def test_generate_writes_data_resumes_and_refuses_other_spec(tmp_path: Path, demo_model_dir: Path):
    spec = write(tmp_path, "gen.yaml", gen_spec(demo_model_dir))
    run = tmp_path / "gen"
    r = run_cli("generate", "--spec", str(spec), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "data.jsonl").read_text().splitlines()]
    out = json.loads((run / "outputs.json").read_text())
    assert out["n_queries"] == 4 and out["n_kept"] == len(rows) >= 1
    for row in rows:
        assert len(row["prompts"]) == len(row["responses"]) == 2
        assert row["responses"][0] != row["responses"][1]
        assert row["prompts"][0] != row["prompts"][1]  # one flipped principle
        assert row["query"] in row["prompts"][0] or "..." in row["prompts"][0]
    prog = json.loads((run / "progress.json").read_text())
    assert prog["status"] == "succeeded" and prog["done"] == prog["total"] == 8

    # resume after a crash: drop the last generation and the outputs; only the missing one is redone
    gens = (run / "generations.jsonl").read_text().splitlines()
    (run / "generations.jsonl").write_text("\n".join(gens[:-1]) + "\n")
    (run / "outputs.json").unlink()
    r = run_cli("generate", "--spec", str(spec), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "7 already done" in r.stderr
    assert len((run / "generations.jsonl").read_text().splitlines()) == 8

    # a different spec on the same run directory is refused, naming the differing key
    other = write(tmp_path, "other.yaml", gen_spec(demo_model_dir, n_constitutions=2,
                                                   generation={"temperature": 0.5, "max_new_tokens": 12}))
    r = run_cli("generate", "--spec", str(other), "--run-dir", str(run))
    assert r.returncode == 2 and "made by another spec" in r.stderr and "generation.temperature" in r.stderr


def test_sample_temperatures_and_resume(tmp_path: Path, demo_model_dir: Path):
    spec = write(tmp_path, "s.yaml", {
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"},
        "data": {"source": "demo", "eval_size": 10}, "limit": 3, "temperatures": [0.0, 1.0],
        "generation": {"max_new_tokens": 10, "batch_size": 4}})
    run = tmp_path / "s"
    r = run_cli("sample", "--spec", str(spec), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (run / "responses.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and sorted({r["temperature"] for r in rows}) == [0.0, 1.0]
    assert len({r["query_id"] for r in rows}) == 3
    assert all(r["constitution"].startswith("1. ") for r in rows)
    # A fresh run samples the same prompts, and its greedy texts, like the first run's, are
    # greedy completions of them: every token the most likely one, up to a near-tie
    # (replayed in this process; two processes need not round near-tied logits alike, so
    # the two runs' texts are not compared bit for bit).
    r2 = run_cli("sample", "--spec", str(spec), "--run-dir", str(tmp_path / "s2"))
    assert r2.returncode == 0, r2.stderr
    rows2 = [json.loads(x) for x in (tmp_path / "s2" / "responses.jsonl").read_text().splitlines()]
    prompts = lambda rs: {(r["query_id"], r["temperature"]): r["prompt"] for r in rs}  # noqa: E731
    assert prompts(rows2) == prompts(rows)
    model, tok = load_model_and_tokenizer(str(demo_model_dir))
    for rs in (rows, rows2):
        greedy = [r for r in rs if r["temperature"] == 0.0]
        assert len(greedy) == 3 and all(0 <= r["n_tokens"] <= 10 for r in rs)
        assert_greedy(model, tok, [r["prompt"] for r in greedy], [(r["raw"], r["n_tokens"]) for r in greedy],
                      max_new_tokens=10)
    r3 = run_cli("sample", "--spec", str(spec), "--run-dir", str(run))
    assert r3.returncode == 0 and "already complete" in r3.stderr


@pytest.mark.parametrize(
    "spec, expected",
    [
        ({"model": {"path": "/no/such/model-dir"}}, "/no/such/model-dir"),
        ({"data": {"source": "demo", "field": "text"}}, "no field 'text'; its fields are: id, post"),
        ({"n_constitutions": 1}, "n_constitutions: must be >= 2"),
        ({"n_constitutions": 3}, "allows at most 2"),
        ({"constitution": {"principles": [{"principle": "Be brief.", "antithesis": "Be long."},
                                          {"principle": "be brief. "}]}}, "duplicates principle 1"),
        ({"constitution": {"principles": [{"principle": "", "antithesis": "x"}]}}, "principle 1 is empty"),
        ({"generation": {"temprature": 1.0}}, "generation.temprature: unknown key"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(tmp_path: Path, demo_model_dir: Path, spec, expected):
    base = gen_spec(demo_model_dir)
    for k, v in spec.items():
        base[k] = {**base[k], **v} if isinstance(v, dict) and k in ("model", "data", "generation") else v
    if "constitution" in spec:
        base["constitution"] = spec["constitution"]
    p = write(tmp_path, "bad.yaml", base)
    r = run_cli("generate", "--spec", str(p), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "data.jsonl").exists()


def test_a_hub_model_out_of_reach_is_transient_a_missing_directory_bad_input(tmp_path: Path, monkeypatch):
    """The hub out of reach (here: HF_HUB_OFFLINE=1 and the model not in the cache) may pass:
    exit 75, retried after a backoff; a local directory that does not exist will not: exit 2.
    (A hub id the reachable hub does not know is bad input, 2; no hub is reachable here.)"""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-cache"))
    for model, code in (("some-org/a-model-never-downloaded", 75), (str(tmp_path / "no-such-model"), 2)):
        spec = write(tmp_path, f"gen-{code}.yaml", {**gen_spec(tmp_path), "model": {"path": model}})
        run = tmp_path / f"run-{code}"
        r = run_cli("generate", "--spec", str(spec), "--run-dir", str(run), timeout=120)
        assert r.returncode == code, (r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr
        assert json.loads((run / "exit_status.json").read_text())["code"] == code
