"""The real distributed path: torchrun, 2 processes, FSDP2 with gloo on CPU.

One run is killed with SIGKILL after its first resumable state and restarted on its run
directory: it must end at the configured step, with every step's metrics once, the
recomputed step matching the killed run's record of it, and loadable HF checkpoints.
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

import pytest
import torch
import yaml

from sami_core.data import load_queries
from sami_core.prompts import build_prompt
from sami_core.rundir import RunDir
from sami_core.spec import DataSpec

pytestmark = pytest.mark.integration


def make_training_data(path: Path, n_queries: int = 12, n: int = 2) -> Path:
    """A generate-stage-shaped data.jsonl from shipped posts (responses: post snippets)."""
    posts = load_queries(DataSpec())
    rows = []
    for k in range(n_queries):
        q = posts[k]
        cons = [f"1. Summaries should be {'brief' if i == 0 else 'long'} (variant {i})." for i in range(n)]
        rows.append({
            "query_id": q.id, "query": q.text[:300],
            "prompts": [build_prompt("summarization", c, q.text[:300]) for c in cons],
            "constitutions": cons, "flips": [[i > 0] for i in range(n)],
            "responses": [posts[50 + k * n + i].text[: 40 + 10 * i] for i in range(n)],
        })
    path.mkdir(parents=True, exist_ok=True)
    (path / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train_spec(tmp: Path, model: str, data: Path, **training) -> Path:
    spec = {"model": {"path": model, "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 1e-3, "grad_accum": 1, "queries_per_microbatch": 1,
                         "max_steps": 6, "save_every": 2, "seed": 0, **training}}
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


def test_fsdp_train_kill_resume(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "gen")
    spec = train_spec(tmp_path, str(demo_model_dir), data)
    run_dir = tmp_path / "run"

    # 1. Start, wait for the resumable state at step 2 and the metrics of step 3, then kill -9.
    proc = torchrun(spec, run_dir)
    deadline = time.time() + 240
    while time.time() < deadline:
        done_states = list((run_dir / "state").glob("step-000002/COMPLETE"))
        if done_states and any(m["step"] == 3 for m in metrics(run_dir)):
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended early:\n{proc.stdout.read()}")
        time.sleep(0.2)
    else:
        kill_tree(proc)
        pytest.fail("training did not reach step 3 in time")
    kill_tree(proc)
    before_kill = {m["step"]: m for m in metrics(run_dir)}
    assert not (run_dir / "outputs.json").exists()
    # On a busy machine training may pass step 4 before the kill lands: resume from the
    # newest complete state, whichever it is.
    states = sorted(p.parent for p in (run_dir / "state").glob("step-*/COMPLETE"))
    resume_step = int(states[-1].name.removeprefix("step-"))
    assert resume_step in (2, 4)

    # 2. Restart on the same run directory: it resumes from step 2 and ends at step 6.
    proc = torchrun(spec, run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert f"resuming from step-{resume_step:06d}" in out
    ms = metrics(run_dir)
    assert [m["step"] for m in ms] == [1, 2, 3, 4, 5, 6]
    # the first recomputed step matches the killed run's record of it (exact resume of
    # model + optimizer); the kill waited for step 3's record, so step 3 is always there
    # when resuming from 2, and step 5 may be there when resuming from 4
    redo = resume_step + 1
    assert redo in before_kill or resume_step == 4
    if redo in before_kill:
        assert ms[redo - 1]["loss"] == pytest.approx(before_kill[redo]["loss"], abs=1e-5)
    assert ms[2]["loss"] == pytest.approx(before_kill[3]["loss"], abs=1e-5)
    for m in ms:
        assert math.isfinite(m["loss"]) and m["lr"] > 0 and m["tokens_per_s"] > 0
        assert len(m["matrix"]) == 2 and len(m["matrix"][0]) == 2
        assert m["mi_lower_bound"] == pytest.approx(math.log(2) - m["loss"], abs=1e-4)
    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert [c["step"] for c in outputs["checkpoints"]] == [2, 4, 6]
    assert outputs["checkpoints"][-1]["final"] and outputs["world_size"] == 2
    progress = json.loads((run_dir / "progress.json").read_text())
    assert (progress["status"], progress["done"], progress["total"]) == ("succeeded", 6, 6)
    # only the newest resumable state is kept
    assert [p.name for p in (run_dir / "state").glob("step-*")] == ["step-000006"]

    # 3. Checkpoints load with from_pretrained, and training changed the weights.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = AutoModelForCausalLM.from_pretrained(outputs["final_checkpoint"])
    base = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    AutoTokenizer.from_pretrained(outputs["final_checkpoint"])
    fsd, bsd = final.state_dict(), base.state_dict()
    assert fsd.keys() == bsd.keys()
    changed = [k for k in fsd if not torch.equal(fsd[k], bsd[k])]
    assert len(changed) >= len(fsd) - 1  # every tensor moved (allow a tied alias)

    # 4. Running again on the finished directory does nothing and succeeds.
    proc = torchrun(spec, run_dir)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0 and "already complete" in out


def test_non_finite_loss_stops_and_names_last_checkpoint(tmp_path: Path, demo_model_dir: Path):
    data = make_training_data(tmp_path / "gen", n_queries=4)
    spec = train_spec(tmp_path, str(demo_model_dir), data, optimizer="rmsprop", lr=1e12,
                      clip_grad_norm=None, save_every=1, max_steps=4)
    run_dir = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(run_dir)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr
    assert "loss became" in r.stderr and "Last good checkpoint" in r.stderr
    assert "step-000001" in r.stderr
    prog = json.loads((run_dir / "progress.json").read_text())
    assert prog["status"] == "failed" and "TrainingDiverged" in prog["message"]


def test_fsdp_ranks_start_from_the_same_weights_as_one_process(tmp_path: Path, demo_model_dir: Path):
    """Under FSDP only rank 0 reads the weights (the others build on the meta device and
    receive their shards by broadcast): the first step's loss and N×N matrix, taken
    before any update, equal a single process's on the same queries."""
    data = make_training_data(tmp_path / "data", n_queries=4)
    fsdp = tmp_path / "fsdp"
    proc = torchrun(train_spec(tmp_path, str(demo_model_dir), data, max_steps=1, save_every=1), fsdp)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    single = tmp_path / "single"
    spec = train_spec(tmp_path, str(demo_model_dir), data, max_steps=1, save_every=1, grad_accum=2)
    res = subprocess.run([sys.executable, "-m", "sami_core", "train", "--spec", str(spec), "--run-dir", str(single)],
                         capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    (a,), (b,) = metrics(fsdp), metrics(single)
    assert "fsdp=True" in out
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    assert torch.allclose(torch.tensor(a["matrix"]), torch.tensor(b["matrix"]), atol=1e-4)
