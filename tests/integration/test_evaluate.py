"""Stage `evaluate` from the command line on the demo model: mi.jsonl, outputs, resume, refusals."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from sami_core import constitutions
from sami_core.spec import ConstitutionSpec
from sami_core.stages import query_variants
from sami_core.stats import mi_summary

pytestmark = pytest.mark.integration


def run_cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sami_core", *args], capture_output=True, text=True, timeout=timeout)


def eval_spec(model: Path, **over) -> dict:
    spec = {"model": {"path": str(model), "prompt_format": "plain"}, "label": "base",
            "data": {"source": "demo", "eval_size": 10}, "limit": 4, "constitution": {"path": "demo:opus/0"},
            "generation": {"max_new_tokens": 10, "batch_size": 8}, "score_batch_size": 3, "n_boot": 400}
    spec.update(over)
    return spec


def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text().splitlines()]


def test_evaluate_writes_matrices_and_summary_and_resumes(tmp_path: Path, demo_model_dir: Path):
    spec_path = tmp_path / "e.yaml"
    spec_path.write_text(yaml.safe_dump(eval_spec(demo_model_dir, score_models=[{"model": str(demo_model_dir),
                                                                                   "label": "again"}])))
    run = tmp_path / "run"
    r = run_cli("evaluate", "--spec", str(spec_path), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr

    # the variants are generate's: the positive constitution, then its flip, seeded per query
    gens = read_jsonl(run / "generations.jsonl")
    assert len(gens) == 8 and {g["variant"] for g in gens} == {0, 1}
    c = constitutions.from_spec(ConstitutionSpec(path="demo:opus/0"))
    for g in gens:
        v = query_variants(c, 2, 0, g["query_id"], True)[g["variant"]]
        assert g["constitution"] == v.text and g["flips"] == list(v.flips) and v.text in g["prompt"]
        assert any(g["flips"]) == (g["variant"] == 1)
        assert 0 <= g["n_tokens"] <= 10

    # mi.jsonl: one line per (query, scoring model), each an N×N matrix of mean token log-probs
    lines = read_jsonl(run / "mi.jsonl")
    qids = [g["query_id"] for g in gens if g["variant"] == 0]
    assert sorted((x["query_id"], x["model"]) for x in lines) == sorted((q, m) for q in qids for m in ("base", "again"))
    for x in lines:
        m = np.array(x["matrix"])
        assert m.shape == (2, 2) and np.all(np.isfinite(m)) and np.all(m < 0)
    # the same model scoring the same responses gives the same matrices (to float rounding)
    by = {(x["query_id"], x["model"]): np.array(x["matrix"]) for x in lines}
    for q in qids:
        np.testing.assert_allclose(by[(q, "base")], by[(q, "again")], atol=1e-5)

    # a matrix entry is the mean log-prob of response j after prompt i, computed here by hand
    _check_entry_by_hand(demo_model_dir, gens, by)

    # outputs: the summary of the matrices, per scoring model
    out = json.loads((run / "outputs.json").read_text())
    want = mi_summary([by[(q, "base")] for q in qids], n_boot=400, seed=0)
    assert out["label"] == "base" and out["n_queries"] == 4 and out["n_constitutions"] == 2
    assert out["temperature"] == 0.0 and out["reduction"] == "mean" and out["mi"] == "mi.jsonl"
    for k in ("mi_lower_bound", "row_accuracy", "col_accuracy", "loss"):
        assert out[k] == pytest.approx(want[k], abs=1e-9)
        assert out[f"{k}_ci_low"] <= out[k] <= out[f"{k}_ci_high"]
        assert out["by_model"]["again"][k] == pytest.approx(out[k], abs=1e-4)
    assert out["mi_lower_bound"] == pytest.approx(math.log(2) - out["loss"])
    prog = json.loads((run / "progress.json").read_text())
    assert prog["status"] == "succeeded" and prog["done"] == prog["total"] == 8 and prog["unit"] == "matrices"

    # resume after a crash: the last response and the last two matrices are redone, nothing else
    (run / "generations.jsonl").write_text("".join(json.dumps(g) + "\n" for g in gens[:-1]))
    (run / "mi.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines[:-2]) + '{"key": ["cut')
    (run / "outputs.json").unlink()
    r = run_cli("evaluate", "--spec", str(spec_path), "--run-dir", str(run))
    assert r.returncode == 0, r.stderr
    assert "7 already sampled" in r.stderr and "scoring 2 queries with 'again'" in r.stderr
    assert "with 'base'" not in r.stderr  # its matrices were all there
    lines2 = read_jsonl(run / "mi.jsonl")
    assert len(lines2) == 8 and lines2[:6] == lines[:6]
    assert json.loads((run / "outputs.json").read_text())["n_queries"] == 4
    r = run_cli("evaluate", "--spec", str(spec_path), "--run-dir", str(run))
    assert r.returncode == 0 and "already complete" in r.stderr


def _check_entry_by_hand(model_dir: Path, gens: list[dict], by: dict) -> None:
    import torch

    from sami_core.generation import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(str(model_dir))
    g0 = {g["variant"]: g for g in gens if g["query_id"] == gens[0]["query_id"]}
    for i, j in ((0, 1), (1, 0), (1, 1)):
        prompt = tok(g0[i]["training_prompt"])["input_ids"]
        # append_eos auto: the EOS is scored only where the model ended the response with it
        resp = tok(" " + g0[j]["response"], add_special_tokens=False)["input_ids"] + (
            [tok.eos_token_id] if g0[j]["eos"] else [])
        ids = torch.tensor([prompt + resp])
        with torch.no_grad():
            logp = model(input_ids=ids).logits[0].float().log_softmax(-1)
        want = float(np.mean([logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(resp)]))
        assert by[(g0[0]["query_id"], "base")][i, j] == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("over, expected", [
    ({"n_constitutions": 1}, "n_constitutions: must be >= 2"),
    ({"label": "two words"}, "label: 'two words'"),
    ({"score_models": ["/no/such/scorer"]}, "score_models.0.model.path"),
    ({"score_models": [{"model": "demo", "label": "base"}]}, "score_models.0.label: 'base' is already label"),
])
def test_bad_input_exits_2_naming_the_field(tmp_path: Path, demo_model_dir: Path, over, expected):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(eval_spec(demo_model_dir, limit=1, **over)))
    r = run_cli("evaluate", "--spec", str(p), "--run-dir", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "outputs.json").exists()
