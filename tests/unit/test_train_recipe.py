"""The training recipe (`SamiTrainer`) in one process on the demo model: README claims
about training that need no second process.

- Gradient clipping clips: with a tiny ``clip_grad_norm`` the logged grad norm is the
  pre-clip norm of the step's gradient, and the weights move by the optimizer's update
  of that gradient scaled to the max norm; with clipping off they move by the update of
  the unclipped gradient (RMSprop's update depends on the gradient's scale at this size,
  and the test checks that the two differ, so it can fail).
- Activation checkpointing gives the same gradients on and off (same batch, same
  process, allclose), while it is really on: the forward keeps far fewer tensors for
  the backward.
- A non-finite loss stops the run with `TrainingDiverged` naming the last good
  checkpoint, before the weights or the optimizer change: the model in memory equals
  that checkpoint on disk and every parameter's optimizer step count is the last good
  step's.

Gradients and updates are compared with ``torch.allclose`` and stated tolerances.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sami_core.errors import DataError, TrainingDiverged
from sami_core.spec import TrainSpec, TrainingSpec
from sami_core.train import CHECKPOINT_DIR, STATE_DIR, SamiTrainer, batch_loss, build_optimizer
from tests.training_data import make_training_data


def trainer(tmp: Path, model: Path, data: Path, **training) -> SamiTrainer:
    """A set-up single-process trainer on a fresh run directory."""
    spec = TrainSpec.model_validate({
        "model": {"path": str(model), "prompt_format": "plain"}, "data": {"path": str(data)},
        "training": {"optimizer": "rmsprop", "lr": 1e-3, "grad_accum": 2, "max_steps": 1, "save_every": 1,
                     "seed": 0, **training}})
    t = SamiTrainer(spec, tmp / f"run-{len(list(tmp.glob('run-*')))}")
    t.setup()
    return t


def weights(t: SamiTrainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in t.model.named_parameters()}


def first_step_gradients(t: SamiTrainer) -> dict[str, torch.Tensor]:
    """The gradient of optimizer step 0, accumulated over its micro-batches as the recipe does."""
    for mb in t._microbatches(0):
        loss, _, _ = batch_loss(t.model, mb, t.cfg, t.pad_id, t.reference)
        (loss / t.cfg.grad_accum).backward()
    grads = {n: p.grad.detach().clone() for n, p in t.model.named_parameters()}
    t.model.zero_grad(set_to_none=True)
    return grads


def total_norm(grads: dict[str, torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])))


def one_update(w0: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], cfg: TrainingSpec) -> dict[str, torch.Tensor]:
    """The weights after one step of the recipe's optimizer (lr at step 0) with `grads`."""
    params = {n: w.clone().requires_grad_(True) for n, w in w0.items()}
    opt = build_optimizer(list(params.values()), cfg)
    for n, p in params.items():
        p.grad = grads[n].clone()
    opt.step()
    return {n: p.detach() for n, p in params.items()}


def deltas_close(after: dict, expected: dict, w0: dict, rtol: float = 1e-3) -> list[str]:
    """Names of the parameters whose change from w0 differs from the expected change by
    more than rtol of it plus 4 float32 ulps of the weights (the rounding of w0 + delta)."""
    ulp = torch.finfo(torch.float32).eps
    return [n for n in w0
            if not ((after[n] - expected[n]).abs() <= rtol * (expected[n] - w0[n]).abs() + 4 * ulp * w0[n].abs().max()).all()]


def test_gradient_clipping_clips_the_applied_update(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "data", n_queries=2)
    max_norm = 1e-6
    probe = trainer(tmp_path, demo_model_dir, data, clip_grad_norm=None)
    w0 = weights(probe)
    g = first_step_gradients(probe)
    norm = total_norm(g)
    assert norm > 1e3 * max_norm  # the tiny max norm really clips
    coef = max_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s scale
    clipped = {n: v * coef for n, v in g.items()}
    assert total_norm(clipped) == pytest.approx(max_norm, rel=1e-3)
    expect_clipped, expect_raw = one_update(w0, clipped, probe.cfg), one_update(w0, g, probe.cfg)
    # at this scale the two updates differ, so the weights can tell which was applied
    assert deltas_close(expect_raw, expect_clipped, w0)

    on = trainer(tmp_path, demo_model_dir, data, clip_grad_norm=max_norm)
    on.train()
    (rec,) = on.rd.read_metrics()
    assert rec["grad_norm"] == pytest.approx(norm, rel=1e-4)  # logged: the pre-clip norm
    assert deltas_close(weights(on), expect_clipped, w0) == []

    off = trainer(tmp_path, demo_model_dir, data, clip_grad_norm=None)
    off.train()
    (rec,) = off.rd.read_metrics()
    assert rec["grad_norm"] is None
    assert deltas_close(weights(off), expect_raw, w0) == []


def test_activation_checkpointing_gives_the_same_gradients(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "data", n_queries=2)
    grads, saved = {}, {}
    for ac in (True, False):
        t = trainer(tmp_path, demo_model_dir, data, activation_checkpointing=ac)
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda x: (packed.append(1), x)[1], lambda x: x):
            grads[ac] = first_step_gradients(t)
        saved[ac] = len(packed)
    # checkpointing is really on: the forward keeps a fraction of the tensors for backward
    assert saved[True] < saved[False] / 2, saved
    on, off = grads[True], grads[False]
    assert on.keys() == off.keys()
    assert all(float(g.abs().max()) > 0 for g in off.values())  # every parameter gets a gradient
    differ = [n for n in on if not torch.allclose(on[n], off[n], rtol=1e-4, atol=1e-7)]
    assert differ == []


def test_non_finite_loss_stops_before_the_weights_change(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "data", n_queries=4)
    # lr 1e12: the first update blows the weights up, a later step's loss is not finite
    t = trainer(tmp_path, demo_model_dir, data, lr=1e12, clip_grad_norm=None, grad_accum=1, max_steps=4)
    with pytest.raises(TrainingDiverged) as err:
        t.train()
    good = t.step  # optimizer steps taken before the bad one
    assert 1 <= good < 4
    ckpt = t.run_dir_path / CHECKPOINT_DIR / f"step-{good:06d}"
    msg = str(err.value)
    assert f"at step {good + 1}" in msg and "the weights were not updated" in msg
    assert f"Last good checkpoint: {ckpt}" in msg
    # nothing was saved after the last good step
    assert sorted(p.name for p in (t.run_dir_path / CHECKPOINT_DIR).iterdir()) == [
        f"step-{s:06d}" for s in range(1, good + 1)]
    assert [p.name for p in (t.run_dir_path / STATE_DIR).glob("step-*")] == [f"step-{good:06d}"]
    # the model in memory is the last good checkpoint: the bad step changed no weight
    on_disk = load_file(ckpt / "model.safetensors")
    now = t.model.state_dict()
    assert on_disk and set(on_disk) <= set(now)
    changed = [k for k, v in on_disk.items()
               if not torch.allclose(now[k].float(), v.float(), rtol=1e-6, atol=0.0, equal_nan=True)]
    assert changed == []
    # and the optimizer took no step for it
    steps = {float(s["step"]) for s in t.optimizer.state.values()}
    assert steps == {float(good)}


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # unpickling this object would create the marker file
        return (open, (str(self.marker), "w"))


def test_resume_keeps_good_metrics_and_never_unpickles_code(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "data", n_queries=4)
    spec = TrainSpec.model_validate({
        "model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "data": {"path": str(data)},
        "training": {"optimizer": "rmsprop", "lr": 1e-3, "grad_accum": 1, "max_steps": 2, "save_every": 1,
                     "seed": 0}})
    run_dir = tmp_path / "run"
    first = SamiTrainer(spec, run_dir)
    first.setup()
    first.train()
    metrics = run_dir / "metrics.jsonl"
    good = metrics.read_bytes().splitlines(keepends=True)
    assert [json.loads(x)["step"] for x in good] == [1, 2]
    # Bytes that are not UTF-8 and a line that is not JSON between the good lines.
    metrics.write_bytes(good[0] + b"\xff\xfe\n" + b"not json\n" + good[1])
    (last,) = [p for p in (run_dir / STATE_DIR).glob("step-*") if p.name.endswith("2")]
    rng = last / "rng-rank0.pt"
    saved_rng = rng.read_bytes()
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(marker), rng)
    with pytest.raises(DataError, match="not an RNG state"):
        SamiTrainer(spec, run_dir).setup()
    assert not marker.exists()

    rng.write_bytes(saved_rng)
    resumed = SamiTrainer(spec, run_dir)
    resumed.setup()
    assert resumed.step == 2
    assert [m["step"] for m in resumed.rd.read_metrics()] == [1, 2]  # every good line kept

    # A restart with no resumable state recomputes every step: none is logged twice.
    shutil.rmtree(run_dir / STATE_DIR)
    again = SamiTrainer(spec, run_dir)
    again.setup()
    again.train()
    assert [m["step"] for m in again.rd.read_metrics()] == [1, 2]
