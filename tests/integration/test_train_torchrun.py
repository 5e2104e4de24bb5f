"""The real distributed path: torchrun, 2 processes, FSDP2 with gloo on CPU, on the demo model.

- Kill and resume (`test_fsdp_train_kill_resume_matches_an_uninterrupted_run`): an
  uninterrupted reference run, and a run killed with SIGKILL (torchrun and every rank)
  once it has a resumable state and before its last step (asserted), then restarted on
  its run directory. The restarted run ends at the configured step with every step's
  metrics once; every step, the recomputed ones included, matches the reference's loss,
  lr (warmup + cosine, so a scheduler that did not resume would show), grad norm and N×N
  matrix, and the final HF checkpoint's tensors match the reference's: model, optimizer,
  scheduler and data order resume exactly. Tolerances are allclose-style, not bitwise.
  The checkpoints load with `from_pretrained`, and a finished directory is left as is.
- Only rank 0 reads the weights (`test_fsdp_ranks_start_from_the_same_weights_as_one_process`):
  each rank logs whether it read the weight files or built the model on the meta device;
  rank 1 never reads them, and the first step's loss, grad norm and matrix (taken before
  any update) equal a single process's on the same queries.
- A non-finite loss exits 2 (`TrainingDiverged`) naming the last good checkpoint and saves
  nothing after it; that the weights are unchanged is checked in tests/unit/test_train_recipe.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sami_core.rundir import RunDir
from tests.training_data import make_training_data

pytestmark = pytest.mark.integration

MAX_STEPS = 6


def train_spec(tmp: Path, model: str, data: Path, **training) -> Path:
    spec = {"model": {"path": model, "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 1e-3, "warmup_steps": 2, "lr_schedule": "cosine",
                         "grad_accum": 1, "queries_per_microbatch": 1, "max_steps": MAX_STEPS, "save_every": 2,
                         "seed": 0, **training}}
    p = tmp / f"train-{len(list(tmp.glob('train-*.yaml')))}.yaml"
    p.write_text(yaml.safe_dump(spec))
    return p


def torchrun(spec: Path, run_dir: Path, nproc: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (torchrun starts its ranks in sessions of their own,
    so killing torchrun's process group alone would leave them running)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and all its ranks, and wait until every one is gone."""
    pids = descendants(proc.pid)
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(timeout=30)

    def alive(p: int) -> bool:  # running, not a zombie waiting for its parent
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    deadline = time.time() + 30
    while any(alive(p) for p in pids[1:]) and time.time() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in pids[1:]), "a rank of the killed run is still running"


def metrics(run_dir: Path) -> list[dict]:
    return RunDir(run_dir).read_metrics()


def finish(proc: subprocess.Popen, timeout: float = 600) -> str:
    """Wait for a torchrun run to succeed; its merged stdout and stderr."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_tree(proc)
        raise
    assert proc.returncode == 0, out[-4000:]
    return out


def kill_at_first_state(spec: Path, run_dir: Path) -> None:
    """Start training `spec` on `run_dir` and kill -9 its process tree once a resumable state exists."""
    proc = torchrun(spec, run_dir)
    deadline = time.monotonic() + 600
    while not complete_states(run_dir):
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{proc.stdout.read()[-4000:]}")
        if time.monotonic() > deadline:
            kill_tree(proc)
            pytest.fail("no resumable state in time")
        time.sleep(0.02)
    kill_tree(proc)


def complete_states(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in (run_dir / "state").glob("step-*/COMPLETE"))


def final_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / "final" / "model.safetensors")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, demo_model_dir: Path) -> SimpleNamespace:
    """One uninterrupted 2-rank run of MAX_STEPS steps on 12 queries, with its log."""
    tmp = tmp_path_factory.mktemp("train")
    data = make_training_data(tmp / "gen")
    spec = train_spec(tmp, str(demo_model_dir), data)
    run_dir = tmp / "reference"
    log = finish(torchrun(spec, run_dir))
    return SimpleNamespace(tmp=tmp, data=data, spec=spec, run_dir=run_dir, log=log)


def test_fsdp_train_kill_resume_matches_an_uninterrupted_run(reference: SimpleNamespace, demo_model_dir: Path):
    ref = metrics(reference.run_dir)
    assert [m["step"] for m in ref] == list(range(1, MAX_STEPS + 1))
    assert len({m["lr"] for m in ref}) >= 4  # the schedule moves: a lost scheduler would show

    # 1. Start the same spec on another directory; kill -9 it once a resumable state exists.
    run_dir = reference.tmp / "killed"
    kill_at_first_state(reference.spec, run_dir)
    resume_step = complete_states(run_dir)[-1]
    killed_at = max(m["step"] for m in metrics(run_dir))
    # the kill landed before the last step: the restart has steps to recompute
    assert resume_step < MAX_STEPS and killed_at < MAX_STEPS, (resume_step, killed_at)
    assert not (run_dir / "outputs.json").exists() and not (run_dir / "checkpoints" / "final").exists()

    # 2. Restart on the same directory: it resumes from the newest state and ends at MAX_STEPS.
    out = finish(torchrun(reference.spec, run_dir))
    assert f"resuming from step-{resume_step:06d}" in out
    ms = metrics(run_dir)
    assert [m["step"] for m in ms] == list(range(1, MAX_STEPS + 1))

    # 3. Every step equals the uninterrupted run's, the recomputed ones (> resume_step) included.
    for m, r in zip(ms, ref):
        step = m["step"]
        for key in ("loss", "row_loss", "col_loss", "total_loss", "mi_lower_bound", "grad_norm"):
            assert m[key] == pytest.approx(r[key], rel=1e-5, abs=1e-6), (step, key)
        assert m["lr"] == pytest.approx(r["lr"], rel=1e-9), step
        # the matrix is stored rounded to 5 decimals: allow one rounding step either way
        assert torch.allclose(torch.tensor(m["matrix"]), torch.tensor(r["matrix"]), rtol=0, atol=2e-5), step
        assert m["mi_lower_bound"] == pytest.approx(math.log(2) - m["loss"], abs=1e-4)
        assert len(m["matrix"]) == 2 and len(m["matrix"][0]) == 2 and m["tokens_per_s"] > 0
    # ... and so do the final weights (model + optimizer state carried through the kill)
    final, ref_final = final_tensors(run_dir), final_tensors(reference.run_dir)
    assert final.keys() == ref_final.keys()
    differ = [k for k in final if not torch.allclose(final[k], ref_final[k], rtol=1e-5, atol=1e-6)]
    assert differ == []

    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert [c["step"] for c in outputs["checkpoints"]] == [2, 4, 6]
    assert outputs["checkpoints"][-1]["final"] and outputs["world_size"] == 2
    progress = json.loads((run_dir / "progress.json").read_text())
    assert (progress["status"], progress["done"], progress["total"]) == ("succeeded", MAX_STEPS, MAX_STEPS)
    # only the newest resumable state is kept
    assert [p.name for p in (run_dir / "state").glob("step-*")] == [f"step-{MAX_STEPS:06d}"]

    # 4. Checkpoints load with from_pretrained, and training changed the weights.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(outputs["final_checkpoint"])
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    AutoTokenizer.from_pretrained(outputs["final_checkpoint"])
    fsd, bsd = trained.state_dict(), base.state_dict()
    assert fsd.keys() == bsd.keys()
    changed = [k for k in fsd if not torch.allclose(fsd[k], bsd[k], rtol=0, atol=1e-6)]
    assert len(changed) >= len(fsd) - 1  # every tensor moved (allow a tied alias)

    # 5. Running again on the finished directory does nothing and succeeds.
    out = finish(torchrun(reference.spec, run_dir))
    assert "already complete" in out


def test_non_finite_loss_stops_and_names_last_checkpoint(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "gen", n_queries=4)
    spec = train_spec(tmp_path, str(demo_model_dir), data, optimizer="rmsprop", lr=1e12, warmup_steps=0,
                      lr_schedule="constant", clip_grad_norm=None, save_every=1, max_steps=4)
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "loss became" in r.stderr and "Last good checkpoint" in r.stderr
    assert "step-000001" in r.stderr
    prog = json.loads((run_dir / "progress.json").read_text())
    assert prog["status"] == "failed" and "TrainingDiverged" in prog["message"]
    # nothing was saved after the last good step
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step-000001"]
    assert complete_states(run_dir) == [1]


def test_fsdp_ranks_start_from_the_same_weights_as_one_process(reference: SimpleNamespace, demo_model_dir: Path):
    """Under FSDP only rank 0 reads the weights (the others build on the meta device and
    receive their shards by broadcast): the ranks' own log lines say so, and the first
    step's loss, grad norm and N×N matrix, taken before any update, equal a single
    process's on the same queries (grad_accum 2 in one process = 2 ranks × 1)."""
    log = reference.log
    assert "fsdp=True" in log
    assert "rank 0: reading the weights of" in log
    assert "rank 1: building the model on the meta device" in log
    assert "rank 1: reading the weights" not in log  # rank 1 never opened the weight files

    single = reference.tmp / "single"
    spec = train_spec(reference.tmp, str(demo_model_dir), reference.data, max_steps=1, save_every=1, grad_accum=2)
    res = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(single)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "rank 0: reading the weights of" in res.stderr
    a, (b,) = metrics(reference.run_dir)[0], metrics(single)
    assert a["step"] == b["step"] == 1 and a["lr"] == pytest.approx(b["lr"], rel=1e-9)
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    assert torch.allclose(torch.tensor(a["matrix"]), torch.tensor(b["matrix"]), rtol=0, atol=1e-4)


def test_fsdp_evaluation_during_training_equals_one_process_scoring(tmp_path: Path, demo_model_dir: Path):
    """Two FSDP ranks share an odd number of held-out queries (one rank scores a padding
    query with weight 0 so that both run as many forwards): the logged held-out loss
    equals one process scoring the final checkpoint on the same queries."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sami_core.logprobs import MatrixBatch
    from sami_core.spec import TrainingSpec
    from sami_core.train import batch_loss, read_training_data, split_held_out, tokenize_rows

    data = make_training_data(tmp_path / "gen", n_queries=10)
    spec = train_spec(tmp_path, str(demo_model_dir), data, max_steps=2, eval_fraction=0.3, eval_every=1)
    run_dir = tmp_path / "run"
    finish(torchrun(spec, run_dir))
    logged = {r["step"]: r for r in metrics(run_dir)}
    assert all("eval_loss" in logged[s] for s in (1, 2))
    final = run_dir / "checkpoints" / "final"
    tok = AutoTokenizer.from_pretrained(final)
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    cfg = TrainingSpec(eval_fraction=0.3, seed=0, lr=1e-3)
    _, held = split_held_out(tokenize_rows(read_training_data(data), tok, cfg.append_eos), 0.3, 0)
    assert len(held) == 3  # odd: the two ranks' shares differ
    with torch.no_grad():
        losses = [batch_loss(model, MatrixBatch([e.prompt_ids], [e.response_ids]), cfg, tok.pad_token_id)[1]["loss"]
                  for e in held]
    assert logged[2]["eval_loss"] == pytest.approx(sum(losses) / 3, rel=1e-4, abs=1e-5)
