"""Evaluation during training (`training.eval_fraction`, `eval_every`,
`eval_before_training`): a held-out slice of the generated queries, never trained on,
scored without gradients; its loss and metrics land in metrics.jsonl beside the training
ones. Checked in one process on the demo model against the same scoring done by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sami_core.errors import DataError
from sami_core.logprobs import MatrixBatch
from sami_core.spec import TrainSpec
from sami_core.train import SamiTrainer, batch_loss, split_held_out
from tests.training_data import make_training_data


def run(tmp: Path, model: Path, data: Path, **training) -> tuple[SamiTrainer, list[dict]]:
    spec = TrainSpec.model_validate({
        "model": {"path": str(model), "prompt_format": "plain"}, "data": {"path": str(data)},
        "training": {"optimizer": "rmsprop", "lr": 1e-3, "grad_accum": 2, "save_every": 100, "seed": 0, **training}})
    t = SamiTrainer(spec, tmp / "run")
    t.setup()
    t.train()
    records = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return t, records


def test_held_out_split_is_seeded_disjoint_and_refuses_to_leave_nothing() -> None:
    examples = list(range(10))
    train, held = split_held_out(examples, 0.25, seed=3)
    assert len(held) == 2 and sorted(train + held) == examples and not set(train) & set(held)
    assert split_held_out(examples, 0.25, seed=3) == (train, held)
    assert split_held_out(examples, 0.0, seed=3) == (examples, [])
    assert len(split_held_out(examples, 0.01, seed=3)[1]) == 1  # at least one
    with pytest.raises(DataError, match="training.eval_fraction"):
        split_held_out(examples[:1], 0.5, seed=0)


def test_eval_metrics_are_logged_when_asked_and_match_scoring_by_hand(tmp_path: Path, demo_model_dir: Path) -> None:
    data = make_training_data(tmp_path / "gen", n_queries=12)
    t, records = run(tmp_path, demo_model_dir, data, eval_fraction=0.25, eval_every=2, eval_before_training=True,
                     max_steps=3)
    assert len(t.eval_examples) == 3 and len(t.examples) == 9  # the held-out queries are not trained on
    by_step = {r["step"]: r for r in records}
    assert sorted(by_step) == [0, 1, 2, 3]
    evaluated = [s for s, r in by_step.items() if "eval_loss" in r]
    assert evaluated == [0, 2, 3]  # before training, every 2 steps, after the last
    assert "loss" not in by_step[0]  # step 0 is the evaluation alone
    for r in (by_step[0], by_step[3]):
        assert r["eval_mi_lower_bound"] == pytest.approx(math.log(2) - r["eval_loss"], abs=1e-6)
        assert 0.0 <= r["eval_row_accuracy"] <= 1.0 and 0.0 <= r["eval_col_accuracy"] <= 1.0
    # The final evaluation equals the same metrics computed by hand on the trained model.
    with torch.no_grad():
        losses = [batch_loss(t.model, MatrixBatch([e.prompt_ids], [e.response_ids]), t.cfg, t.pad_id)[1]["loss"]
                  for e in t.eval_examples]
    assert by_step[3]["eval_loss"] == pytest.approx(sum(losses) / len(losses), rel=1e-4, abs=1e-6)
    # training changed the model, so the held-out loss moved between the two evaluations
    assert by_step[3]["eval_loss"] != pytest.approx(by_step[0]["eval_loss"], abs=1e-7)


def test_no_evaluation_by_default_and_eval_every_needs_a_slice(tmp_path: Path, demo_model_dir: Path) -> None:
    data = make_training_data(tmp_path / "gen", n_queries=4)
    t, records = run(tmp_path, demo_model_dir, data, max_steps=1)
    assert t.eval_examples == [] and len(t.examples) == 4
    assert not any(k.startswith("eval_") for r in records for k in r)
    with pytest.raises(ValueError, match="eval_fraction"):
        TrainSpec.model_validate({"model": {"path": "demo"}, "data": {"path": "x"}, "training": {"eval_every": 2}})
