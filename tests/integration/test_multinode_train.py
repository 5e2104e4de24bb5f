"""A train job over two "nodes" without Slurm: two workers on this machine, each joining
one c10d rendezvous on loopback with one gloo rank (devices.train_nodes = 2; the leader
queues a member job that the other worker claims). The trained weights equal those of
the single-node two-process run on the same data and spec (allclose, not bitwise: the
same arithmetic, but reductions need not be bit-identical across launch layouts)."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from db import queue
from sami_core import contract
from tests.integration.conftest import Sami
from tests.training_data import make_training_data

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_what_one_node_with_two_ranks_trains(sami_sqlite: Sami, tmp_path: Path,
                                                              demo_model_dir: Path) -> None:
    sami = sami_sqlite
    data = make_training_data(tmp_path / "gen", n_queries=4)
    spec = {"model": {"path": str(demo_model_dir), "prompt_format": "plain"}, "data": {"path": str(data)},
            "training": {"optimizer": "adamw", "lr": 1e-3, "max_steps": 2, "save_every": 2, "grad_accum": 1,
                         "queries_per_microbatch": 1, "seed": 0}}

    # One node, two ranks: the reference (the command a one-node worker runs).
    ref_dir = tmp_path / "one-node"
    ref_dir.mkdir()
    (ref_dir / "job_spec.json").write_text(json.dumps(spec))
    cmd = contract.build_command("train", spec_path=ref_dir / "job_spec.json", run_dir=ref_dir, devices=[])
    ref = subprocess.run(cmd, env={**sami.env, **contract.stage_env("train", [])}, cwd=sami.home,
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stdout[-3000:] + ref.stderr[-3000:]

    # Two nodes, one rank each, through the queue: two workers.
    endpoint = f"127.0.0.1:{free_port()}"
    job = sami.enqueue("train", spec={**spec, "launch": {"nodes": 2, "endpoint": endpoint, "procs_per_node": 1}},
                       name="train-1")
    sami.worker("--exit-when-idle")
    sami.worker("--exit-when-idle")
    assert sami.wait_workers(timeout=600) == [0, 0]
    rows = sami.tx(lambda c: queue.list_jobs(c))
    leader = sami.job(job)
    assert leader.status == "succeeded", (leader.error, sami.worker_logs())
    members = [r for r in rows if r.id != job]
    assert [(m.kind, m.status, m.name) for m in members] == [("train", "succeeded", "train-1 node 1")]
    assert members[0].worker_id != leader.worker_id  # two workers took part
    log = (sami.run_dir(job) / "stage.log").read_text()
    assert log.count("--nnodes=2") == 2 and f"--rdzv_endpoint={endpoint}" in log

    two = load_file(sami.run_dir(job) / "checkpoints" / "final" / "model.safetensors")
    one = load_file(ref_dir / "checkpoints" / "final" / "model.safetensors")
    assert two.keys() == one.keys()
    base = load_file(demo_model_dir / "model.safetensors")
    assert any(not torch.equal(one[k], base[k]) for k in one if k in base)  # training changed the weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], atol=1e-5, rtol=1e-5, msg=k)
    ckpts = sami.tx(lambda c: c.exec_driver_sql("SELECT job_id FROM checkpoints").all())
    assert {r.job_id for r in ckpts} == {job}  # the member ingested nothing
