"""Launching beyond one machine, without the machines: the Slurm batch script and sbatch
options a job gets (workers.slurm), the multi-node torchrun line (sami_core.contract),
and the queue's member jobs and re-adoption (db.queue) on a real SQLite database."""

from __future__ import annotations

from pathlib import Path

import pytest

from db import queue
from db.engine import open_database, transact
from db.experiments import SLURM_DEVICES, worker_capacity
from db.testing import new_database_url
from sami_core import contract
from workers import slurm

RUN = Path("/ws/runs/job-000007-train")


def test_a_cpu_job_asks_for_no_gpus_and_a_gpu_train_job_spans_its_nodes() -> None:
    cpu = slurm.sbatch_args(slurm.SlurmOptions(partition="cpu"), job_id=3, kind="sleep", devices_required=0,
                            nodes=1, run_dir=RUN, workdir=Path("/ws"))
    assert not any(a.startswith("--gres") for a in cpu)
    assert {"--partition=cpu", "--nodes=1", "--requeue", "--job-name=sami-3", f"--output={RUN}/stage.log"} <= set(cpu)
    gpu = slurm.sbatch_args(slurm.SlurmOptions(account="lab", time="4:00:00", extra=["--constraint=a100"]), job_id=7,
                            kind="train", devices_required=4, nodes=2, run_dir=RUN, workdir=Path("/ws"))
    assert {"--gres=gpu:4", "--nodes=2", "--ntasks-per-node=1", "--account=lab", "--time=4:00:00",
            "--constraint=a100"} <= set(gpu)
    cmd = contract.build_command("train", spec_path=RUN / "job_spec.json", run_dir=RUN, devices=["0"] * 4)
    script = slurm.batch_script(cmd, kind="train", job_id=7, nodes=2, gpus=4, env={"SAMI_JOB_KEY": "k:7:1"})
    line = next(ln for ln in script.splitlines() if ln.startswith("srun "))
    assert "--nnodes=2" in line and "--nproc_per_node=4" in line and "--standalone" not in line
    assert "--rdzv_endpoint=$head:$port" in line and "--rdzv_id=sami-$SLURM_JOB_ID" in line
    assert "export SAMI_JOB_KEY=k:7:1" in script and script.rstrip().endswith("exit $rc")
    one = slurm.batch_script(cmd, kind="train", job_id=7, nodes=1, gpus=4, env={})
    assert "srun " in one and "--standalone" in one and "rdzv" not in one


def test_slurm_exit_codes_and_states_are_read() -> None:
    assert slurm._exit("0:0") == (0, None) and slurm._exit("2:0") == (2, None) and slurm._exit("0:9") == (0, 9)
    assert slurm.SlurmState("PENDING").active and not slurm.SlurmState("COMPLETED").active
    assert slurm.nodes_of("train", {"launch": {"nodes": 3}}) == 3 and slurm.nodes_of("sample", {}) == 1


def test_the_multinode_torchrun_line_joins_a_rendezvous() -> None:
    cmd = contract.build_command("train", spec_path=RUN / "s.json", run_dir=RUN, devices=[], nodes=2,
                                 rendezvous=("node01:29407", "sami-7-1"), procs_per_node=1)
    assert cmd[3:8] == ["--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=node01:29407", "--rdzv_id=sami-7-1",
                        "--nproc_per_node=1"]
    with pytest.raises(contract.KindError, match="rendezvous"):
        contract.build_command("train", spec_path=RUN / "s.json", run_dir=RUN, devices=[], nodes=2)


def test_member_jobs_follow_their_leader_and_a_restarted_worker_adopts_its_jobs(tmp_path: Path) -> None:
    engine = open_database(new_database_url("sqlite", tmp_path, migrated=True))

    def tx(fn):  # noqa: ANN001, ANN202
        return transact(engine, fn)

    old = tx(lambda c: queue.register_worker(c, name="n:slurm", host="n", pid=1, devices=[], kinds=None))
    spec = {"data": {"path": "gen"}, "launch": {"nodes": 3}}
    job = tx(lambda c: queue.enqueue(c, "train", spec, name="train-1", devices_required=2, priority=5))
    leader = tx(lambda c: queue.claim(c, old, devices=2, lease_seconds=30))
    members = tx(lambda c: queue.enqueue_members(c, leader, spec, nodes=3, endpoint="n:29401"))
    rows = [tx(lambda c, m=m: queue.get_job(c, m)) for m in members]
    assert [(r.name, r.priority, r.max_attempts, r.devices_required, r.run_dir, r.experiment_id) for r in rows] == [
        (f"train-1 node {k}", 6, 1, 2, leader.run_dir, None) for k in (1, 2)]
    assert rows[0].spec["launch"] == {"nodes": 3, "endpoint": "n:29401", "member_of": job, "attempt": 1}
    assert tx(lambda c: queue.leader_running(c, job, 1)) and not tx(lambda c: queue.leader_running(c, job, 2))

    # The worker stops (its job runs on, e.g. in Slurm); a new one of the same name adopts it.
    tx(lambda c: queue.stop_worker(c, old))
    new = tx(lambda c: queue.register_worker(c, name="n:slurm", host="n", pid=2, devices=[], kinds=None))
    other = tx(lambda c: queue.register_worker(c, name="other", host="n", pid=3, devices=[], kinds=None))
    assert tx(lambda c: queue.adopt(c, other, name="other", lease_seconds=30, stale_s=90)) == []
    adopted = tx(lambda c: queue.adopt(c, new, name="n:slurm", lease_seconds=30, stale_s=90))
    assert [(r.id, r.attempts, r.worker_id) for r in adopted] == [(job, 1, new)]
    assert tx(lambda c: queue.adopt(c, new, name="n:slurm", lease_seconds=30, stale_s=90)) == []  # already its own

    # A Slurm worker registers devices ["slurm"]: a submit check lets any GPU count through.
    tx(lambda c: queue.register_worker(c, name="s", host="n", pid=4, devices=list(SLURM_DEVICES),
                                       kinds=None))
    assert max(n for n, _ in tx(worker_capacity)) >= 1024
    engine.dispose()
