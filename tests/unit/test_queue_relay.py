"""The worker's pure parts: run-dir relay, error tails, per-kind commands, CLI parsing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from sami_core import contract
from services import jobs
from workers import relay
from workers.diag import runs_inline
from cli.jobs import parse_params
from cli.registry import CliError
from workers.diag import count_executions, record_inline_execution, run_sleep


def write_progress(run_dir: Path, done: int, total: int, **extra: object) -> None:
    path = run_dir / "progress.json"
    path.write_text(json.dumps({"stage": "x", "status": "running", "done": done, "total": total,
                                "unit": "steps", "message": "m", "updated_at": 0.0, **extra}))
    os.utime(path, ns=(done * 10**9, done * 10**9))  # a new mtime per write, even within a tick


def test_progress_is_read_only_when_it_changed_and_gets_an_eta(tmp_path: Path) -> None:
    reader = relay.RunDirReader(tmp_path)
    assert reader.progress() is None  # no file yet
    write_progress(tmp_path, 0, 100)
    first = reader.progress()
    assert first["done"] == 0 and first["total"] == 100 and first["eta_s"] is None
    assert reader.progress() is None  # unchanged
    # Pretend the first sample was 1000 s ago: the real time between the two reads (even
    # seconds on a loaded machine) then moves the estimate by well under the tolerance.
    reader._first = (reader._first[0] - 1000.0, 0)
    write_progress(tmp_path, 20, 100)
    p = reader.progress()
    assert p["unit"] == "steps" and p["message"] == "m"
    assert p["eta_s"] == pytest.approx(4000.0, rel=0.01)  # 20 steps per 1000 s, 80 to go


def test_progress_that_is_not_json_is_skipped(tmp_path: Path) -> None:
    (tmp_path / "progress.json").write_text('{"done": 1, ')
    assert relay.RunDirReader(tmp_path).progress() is None


def test_metrics_are_read_by_offset_a_complete_line_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = relay.RunDirReader(tmp_path)
    assert reader.new_metrics() == ([], 0)
    path.write_text('{"step": 1, "loss": 0.5}\nnot json\n{"loss": 1}\n{"step": 2, "loss"')
    records, offset = reader.new_metrics()
    assert records == [{"step": 1, "loss": 0.5}]  # bad lines skipped, partial line left
    assert offset == len('{"step": 1, "loss": 0.5}\nnot json\n{"loss": 1}\n')
    reader.metrics_offset = offset
    with open(path, "a") as f:
        f.write(': 0.25, "matrix": [[0, -1], [-1, 0]]}\n')
    records, offset = reader.new_metrics()
    assert records == [{"step": 2, "loss": 0.25, "matrix": [[0, -1], [-1, 0]]}]
    assert offset == path.stat().st_size
    reader.metrics_offset = offset
    assert reader.new_metrics() == ([], offset)
    path.write_text('{"step": 0, "loss": 9}\n')  # the stage rewrote the file: start over
    assert reader.new_metrics()[0] == [{"step": 0, "loss": 9}]


def test_metrics_replaced_by_a_resumed_stage_are_read_from_the_start(tmp_path: Path) -> None:
    """A resumed training run replaces metrics.jsonl (atomically: a new file) without
    the steps after its last state, then logs them again: even when the new file has
    grown past the old offset by the next poll, it is read from its start."""
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 5)]
    path.write_text("".join(lines))
    reader = relay.RunDirReader(tmp_path)
    records, reader.metrics_offset = reader.new_metrics()
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    tmp = tmp_path / ".metrics.tmp"
    tmp.write_text("".join(lines[:2]) + "".join(json.dumps({"step": s, "loss": 0.5 / s, "extra": 1}) + "\n"
                                                for s in (3, 4, 5)))
    os.replace(tmp, path)  # longer than before: only the new inode tells
    records, offset = reader.new_metrics()
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5] and offset == path.stat().st_size


def test_log_tail_reads_only_this_attempt(tmp_path: Path) -> None:
    log = tmp_path / "stage.log"
    log.write_text("old attempt\n" * 5)
    start = log.stat().st_size
    with open(log, "a") as f:
        f.writelines(f"line {i}\n" for i in range(30))
    tail = relay.log_tail(log, start, lines=20)
    assert tail.splitlines() == [f"line {i}" for i in range(10, 30)]
    assert relay.log_tail(tmp_path / "missing.log") == ""


def test_redact_hides_secrets_from_the_environment_and_urls() -> None:
    env = {"OPENAI_API_KEY": "sk-supersecret", "HF_TOKEN": "hf_abcdef", "HOME": "/root", "SHORT_KEY": "abc"}
    text = "key sk-supersecret, token hf_abcdef, home /root, abc, postgresql://u:pa55word@host/db"
    assert relay.redact(text, env) == "key ***, token ***, home /root, abc, postgresql://u:***@host/db"


def test_sleep_spec_validation() -> None:
    assert jobs.validate_job_spec("sleep", {"seconds": "2", "exit_code": 3}) == {"seconds": 2.0, "exit_code": 3}
    with pytest.raises(contract.KindError, match="unknown job kind"):
        jobs.validate_job_spec("nap", {})
    with pytest.raises(contract.KindError, match="unknown param"):
        jobs.validate_job_spec("sleep", {"secs": 1})
    with pytest.raises(contract.KindError, match=">= 0"):
        jobs.validate_job_spec("sleep", {"seconds": -1})
    with pytest.raises(contract.KindError, match="0..255"):
        jobs.validate_job_spec("sleep", {"exit_code": 256})



def test_stage_specs_are_validated_with_their_schema() -> None:
    spec = jobs.validate_job_spec("train", {"data": {"path": "runs/gen"}, "training": {"lr": 1e-6}})
    assert spec["training"]["lr"] == 1e-6 and spec["training"]["grad_accum"] == 16  # defaults filled in
    with pytest.raises(contract.KindError) as err:
        jobs.validate_job_spec("train", {"anything": 1})
    assert "data: required key is missing" in str(err.value) and "anything: unknown key" in str(err.value)
    with pytest.raises(contract.KindError, match="generation.max_new_tokens"):
        jobs.validate_job_spec("sample", {"generation": {"max_new_tokens": "many"}})
    with pytest.raises(contract.KindError, match="n_constitutions: must be >= 2"):
        jobs.validate_job_spec("generate", {"n_constitutions": 1})


def test_cpu_training_gets_one_openmp_thread_per_rank() -> None:
    assert contract.stage_env("train", []) == {"OMP_NUM_THREADS": "1"}
    assert contract.stage_env("train", ["0", "1"]) == {}
    assert contract.stage_env("sample", []) == {}


def test_only_trivial_sleep_jobs_run_inline() -> None:
    assert runs_inline("sleep", {"seconds": 0, "exit_code": 0})
    assert runs_inline("sleep", {})
    assert not runs_inline("sleep", {"seconds": 0.1})
    assert not runs_inline("sleep", {"seconds": 0, "exit_code": 1})
    assert not runs_inline("sleep", {"seconds": 0, "grandchild": True})
    assert not runs_inline("generate", {})


def test_stage_command_lines(tmp_path: Path) -> None:
    spec, run = tmp_path / "job_spec.json", tmp_path
    io = ["--spec", str(spec), "--run-dir", str(run)]
    py = sys.executable

    def cmd(kind: str, devices: list[str]) -> list[str]:
        return contract.build_command(kind, spec_path=spec, run_dir=run, devices=devices)

    assert cmd("generate", ["0"]) == [py, "-m", "sami_core", "generate", *io]
    assert cmd("judge", []) == [py, "-m", "sami_core", "judge", *io]
    assert cmd("train", ["2", "3"]) == [py, "-m", "torch.distributed.run", "--standalone",
                                         "--nproc_per_node=2", "-m", "sami_core", "train", *io]
    assert cmd("train", [])[4] == f"--nproc_per_node={contract.CPU_TRAIN_PROCS}"  # CPU: gloo ranks
    assert cmd("sleep", []) == [py, "-m", "workers.diag", "sleep", *io]
    with pytest.raises(contract.KindError):
        cmd("nap", [])


def test_checkpoint_paths_are_stored_relative_to_the_workspace(tmp_path: Path) -> None:
    from db.workspace import Workspace

    ws = Workspace(tmp_path)
    run_dir = tmp_path / "runs" / "job-1"
    assert relay.workspace_path("ckpt/step-32", run_dir, ws) == "runs/job-1/ckpt/step-32"
    assert relay.workspace_path("/elsewhere/x", run_dir, ws) == "/elsewhere/x"


def test_read_outputs(tmp_path: Path) -> None:
    assert relay.read_outputs(tmp_path) is None
    (tmp_path / "outputs.json").write_text("[1]")
    with pytest.raises(relay.OutputsError, match="JSON object"):
        relay.read_outputs(tmp_path)
    (tmp_path / "outputs.json").write_text('{"checkpoints": []}')
    assert relay.read_outputs(tmp_path) == {"checkpoints": []}


def test_sleep_stage_files_and_execution_count(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs" / "a"
    assert run_sleep(run_dir, 0.0, 0, checkpoints=2, metrics=3) == 0
    assert json.loads((run_dir / "progress.json").read_text())["status"] == "succeeded"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert run_sleep(run_dir, 0.0, 0, checkpoints=2, metrics=3) == 0  # run again (a handed-back job)
    steps = [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2]  # each step once
    outputs = json.loads((run_dir / "outputs.json").read_text())
    assert [c["step"] for c in outputs["checkpoints"]] == [1, 2] and outputs["checkpoints"][1]["final"]
    assert run_sleep(run_dir, 0.0, 4, fail_attempts=3) == 4  # third execution in this run dir
    assert run_sleep(run_dir, 0.0, 4, fail_attempts=3) == 0  # fourth: "resumed", succeeds
    record_inline_execution(tmp_path / "runs", 7)
    assert count_executions(tmp_path / "runs", {1: run_dir, 7: tmp_path / "runs" / "b"}) == {1: 4, 7: 1}


def test_parse_params() -> None:
    assert parse_params(["seconds=2", "exit_code=3", "name=abc", "flag=true", "xs=[1,2]"]) == {
        "seconds": 2, "exit_code": 3, "name": "abc", "flag": True, "xs": [1, 2]}
    assert parse_params(["training.lr=1e-6", "training.optimizer=adamw", "model.path=demo"]) == {
        "training": {"lr": 1e-6, "optimizer": "adamw"}, "model": {"path": "demo"}}
    with pytest.raises(CliError, match="key=value"):
        parse_params(["novalue"])


def test_devices_come_from_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.daemon import detect_devices
    from sami_core.launch import child_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert detect_devices() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert detect_devices() == []
    env = child_env("k", ["3"], base={"PATH": "/bin", "OPENAI_API_KEY": "sk-x"})
    assert env["CUDA_VISIBLE_DEVICES"] == "3" and env["SAMI_JOB_KEY"] == "k"
    assert env["OPENAI_API_KEY"] == "sk-x"  # keys reach the stage through the environment only
    assert child_env("k", [], base={})["CUDA_VISIBLE_DEVICES"] == ""


def test_a_stage_recorded_exit_is_read_back_by_the_worker(tmp_path):
    from sami_core.contract import EXIT_STATUS_FILE, read_exit_status, stage_exit_code
    from sami_core.rundir import record_exit

    assert read_exit_status(tmp_path) is None
    record_exit(tmp_path, 2, "DataError: data.path: no queries")
    assert read_exit_status(tmp_path) == {"code": 2, "reason": "DataError: data.path: no queries", "rank": 0}
    # torchrun folds a rank's exit code 2 into 1: the record restores it; another code stays
    assert stage_exit_code(1, tmp_path)[0] == 2
    assert stage_exit_code(0, tmp_path) == (0, None)
    record_exit(tmp_path, 1, "RuntimeError: boom")
    assert stage_exit_code(1, tmp_path)[0] == 1
    (tmp_path / EXIT_STATUS_FILE).write_text("{not json")
    assert read_exit_status(tmp_path) is None


def test_metrics_lines_are_untrusted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "_MAX_METRICS_CHUNK", 64)  # a "huge" line is one over a poll's read
    path = tmp_path / "metrics.jsonl"
    reader = relay.RunDirReader(tmp_path)
    path.write_bytes(b'{"step": 1e30, "loss": 1}\n{"step": -1}\n{"step": 1.5}\n\xff\n{"step": 2.0, "loss": 3}\n')
    records, reader.metrics_offset = reader.new_metrics()  # reads up to 64 bytes: the bad lines
    assert records == [] and reader.metrics_offset == 55
    records, reader.metrics_offset = reader.new_metrics()
    assert records == [{"step": 2, "loss": 3}]
    with open(path, "ab") as f:
        f.write(b'{"step": 3, "pad": "' + b"x" * 100)  # longer than a read, its end not written yet
    assert reader.new_metrics() == ([], reader.metrics_offset)
    with open(path, "ab") as f:
        f.write(b'"}\n{"step": 4}\n')
    records, reader.metrics_offset = reader.new_metrics()  # the long line is skipped whole
    assert records == []
    records, _ = reader.new_metrics()
    assert records == [{"step": 4}]


def test_remote_code_fields_are_found_anywhere_in_a_spec() -> None:
    from workers.daemon import remote_code_fields

    spec = {"model": {"path": "x", "trust_remote_code": False},
            "reference_model": {"trust_remote_code": True},
            "judge": {"judge": {"provider": "hf", "trust_remote_code": True}},
            "score_models": [{"model": "a"}, {"model": "b", "trust_remote_code": True}]}
    assert remote_code_fields(spec) == ["reference_model.trust_remote_code", "judge.judge.trust_remote_code",
                                        "score_models.1.trust_remote_code"]
    assert remote_code_fields({"model": {"trust_remote_code": False}}) == []
