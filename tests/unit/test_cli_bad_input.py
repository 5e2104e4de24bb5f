"""Bad input and a bad environment give one line naming the thing and the fix, never a
traceback: exit 2 for bad input, 1 for the environment, and nothing half-written. Every
command is run in this process (an uncaught exception fails the test, as a traceback
would) on a real SQLite workspace; the worker and the stage entry point likewise."""

from __future__ import annotations

import fcntl
import json
import os
import sys
from pathlib import Path

import pytest
import yaml

import db.engine
from cli import main as cli
from cli import registry
from cli.registry import COMMANDS
from sami_core.spec import EXAMPLES_DIR

DEMO = EXAMPLES_DIR / "demo.yaml"
LATIN1 = "name: caf\xe9\n".encode("latin-1")
RESULTS_NAME = "ckpt-model-src-constitution-temperature-0.json"


def sami(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    cli._engine.cache_clear()
    try:
        rc = cli.main(list(args))
    except SystemExit as exc:  # argparse / parser.exit
        rc = exc.code
    finally:
        cli._engine.cache_clear()
    out = capsys.readouterr()
    return rc, out.out, out.err


def one_line(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sami: error: "), err
    return lines[0]


# Every command, with arguments that would reach its workspace and database.
ARGS = {
    "init": ["--no-demo-model"], "submit": [str(DEMO), "--dry-run"], "enqueue": ["sleep"], "jobs": [],
    "cancel": ["1"], "retry": ["1"], "logs": ["1"], "workers": [], "import-results": ["--shipped"],
    "sources": [], "judge": ["--candidate", "1", "--baseline", "2"], "winrates": [], "summary": [],
    "export": ["responses", "--out", "x.csv"], "import-training-data": ["missing.json", "--n", "2"], "ui": [],
    "doctor": [],
}
# Further flag usages that reach the database: a clone with an override, a sweep (the
# test writes sweep.yaml: the demo with a `sweep` section).
VARIANTS = [("submit", ["--from", "1", "--set", "training.lr=1e-6"]), ("submit", ["sweep.yaml", "--dry-run"])]
NO_DATABASE = {"import-training-data"}  # reads no database: only the workspace cases apply

BAD_ENVIRONMENTS = [  # (id, SAMI_HOME (None: the fixture's), SAMI_DATABASE_URL, exit code, named in the message)
    ("home is a file", "FILE", None, 2, "SAMI_HOME="),
    ("url garbage", None, "garbage", 2, "SAMI_DATABASE_URL: not a database URL"),
    ("url mysql", None, "mysql://u@localhost/sami", 2, "SAMI_DATABASE_URL: mysql is not supported"),
    ("url under /proc", None, "sqlite:////proc/x/y.db", 1, "SAMI_DATABASE_URL (/proc/x/y.db): cannot create"),
    ("home read-only", "/proc/1", None, 1, "is read-only here"),
    ("home new on an unwritable mount", "/proc/1/ws", None, 1, "cannot create /proc/1/ws"),
]


def test_the_sweep_covers_every_command() -> None:
    assert set(ARGS) | {"worker"} == set(COMMANDS)  # `sami worker` execs the daemon: tested below


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc as an unwritable place")
@pytest.mark.parametrize("case", BAD_ENVIRONMENTS, ids=[c[0] for c in BAD_ENVIRONMENTS])
def test_every_command_names_a_bad_environment_in_one_line(
    case: tuple, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    _, sami_home, url, code, named = case
    if sami_home == "FILE":
        sami_home = str(tmp_path / "a-file")
        Path(sami_home).write_text("x")
    if sami_home is not None:
        monkeypatch.setenv("SAMI_HOME", sami_home)
    if url is not None:
        monkeypatch.setenv("SAMI_DATABASE_URL", url)
    (tmp_path / "sweep.yaml").write_text(DEMO.read_text() + "\nsweep:\n  training.lr: [1.0e-6, 2.0e-6]\n")
    for name, args in [*ARGS.items(), *VARIANTS]:
        if name in NO_DATABASE and url is not None:
            continue
        rc, out, err = sami(capsys, name, *args)
        assert (rc, named in one_line(err)) == (code, True), (name, err)
    assert not (tmp_path / "x.csv").exists()


def test_spec_files_that_cannot_be_read_are_named(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(LATIN1)
    empty = tmp_path / "empty.yaml"
    empty.write_text("\n")
    for args, named in [
        (["submit", str(latin)], f"spec file '{latin}' is not UTF-8 text (byte 0xe9 at offset 9); save it as UTF-8"),
        (["enqueue", "generate", "--spec", str(latin)], f"--spec: spec file '{latin}' is not UTF-8"),
        (["submit", str(empty)], f"spec file '{empty}' is empty"),
        (["enqueue", "generate", "--spec", str(empty)], "is empty"),
        (["submit", str(tmp_path)], f"spec file '{tmp_path}' is a folder; name a YAML or JSON file"),
        (["enqueue", "sleep", "-p", "seconds=NaN"], "sleep: seconds must be a finite number >= 0, not nan"),
        (["enqueue", "sleep", "-p", "seconds=1e999"], "not inf"),
    ]:
        rc, out, err = sami(capsys, *args)
        assert (rc, named in one_line(err)) == (2, True), (args, err)
    for args, named in [
        (["jobs", "--status", "bogus"], "invalid choice: 'bogus'"),
        (["jobs", "--limit", "-5"], "argument --limit: -5 is out of range"),
        (["enqueue", "sleep", "--priority", "9" * 20], "argument --priority: 9999"),
        (["retry", "9" * 20], "argument id: 9999"),
        (["cancel", "1", "--wait", "nan"], "argument --wait: nan is out of range"),
        (["judge", "--candidate", "a", "--baseline", "b", "--temperature", "inf"], "--temperature: inf is out of"),
        (["ui", "--port", "70000"], "argument --port: 70000 is out of range; use 1..65535"),
    ]:  # argparse's usage errors: the usage line, then one error line
        rc, out, err = sami(capsys, *args)
        assert rc == 2 and named in err.strip().splitlines()[-1] and "Traceback" not in err, (args, err)
    rc, out, err = sami(capsys, "enqueue", "sleep", "--experiment", "999")
    assert rc == 2 and "experiment 999 does not exist" in one_line(err)
    rc, out, err = sami(capsys, "jobs", "--json")
    assert (rc, json.loads(out)) == (0, [])  # nothing was enqueued


def _results(folder: Path, name: str, response: object) -> Path:
    p = folder / name
    p.write_text(json.dumps({"constitution": {"0": "Be concise."}, "question": {"0": "q"}, "response": {"0": response}}))
    return p


def test_results_imports_are_all_or_nothing_and_name_the_bad_file(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tmp_path / "results"
    folder.mkdir()
    _results(folder, "a-" + RESULTS_NAME, "fine")
    bad = folder / ("b-" + RESULTS_NAME)
    bad.write_bytes(b'{"constitution": {"0": "c"}, "question": {"0": "q"}, "response": {"0": "caf\xe9"}}')
    rc, out, err = sami(capsys, "import-results", str(folder))
    assert rc == 2 and f"{bad}: not UTF-8 text" in one_line(err) and "(nothing was imported)" in err
    nulls = _results(tmp_path, "c-" + RESULTS_NAME, None)
    rc, out, err = sami(capsys, "import-results", str(nulls))
    assert rc == 2 and "'response' at index 0 is null, not text" in one_line(err)
    assert sami(capsys, "sources", "--json")[:2] == (0, "[]\n")  # the good file was not imported either
    bad.unlink()
    rc, out, err = sami(capsys, "import-results", str(folder))
    assert rc == 0 and "(1 responses" in out


def test_exports_go_where_the_user_asks_and_refuse_what_cannot_be_written(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for args, code, named in [
        (["export", "responses", "--out", str(tmp_path)], 2, f"--out {tmp_path} is a folder; name a file in it"),
        (["export", "responses", "--out", "x.csv", "--out-dir", str(a_file)], 2, "is a file, not a folder"),
        (["export", "responses", "--out", str(a_file / "x.csv")], 2, f"{a_file} is a file, not a folder"),
        (["winrates", "--csv", str(tmp_path)], 2, "is a folder"),
    ] + ([(["export", "responses", "--out", "x.csv", "--out-dir", "/proc"], 1, "/proc is read-only here")]
         if sys.platform.startswith("linux") else []):
        rc, out, err = sami(capsys, *args)
        assert (rc, named in one_line(err)) == (code, True), (args, err)
    assert a_file.read_text() == "x" and not list(tmp_path.glob("*.csv"))
    # Absolute and relative paths, in folders that do not exist yet: the user's choice.
    target = tmp_path / "elsewhere" / "responses.csv"
    rc, out, err = sami(capsys, "export", "responses", "--out", str(target))
    assert rc == 0 and target.read_text(encoding="utf-8").startswith("source_id,source,kind")
    rc, out, err = sami(capsys, "winrates", "--csv", "tables/wr.csv")
    assert rc == 0 and (tmp_path / "tables" / "wr.csv").read_text().startswith("experiment_id,")
    assert not list(tmp_path.rglob("*.part"))  # written through a temporary file, renamed


def test_a_write_waiting_for_another_process_says_so_and_gives_up_at_its_deadline(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    assert sami(capsys, "jobs")[0] == 0  # creates the workspace and its database
    monkeypatch.setattr(registry, "WRITE_DEADLINE_S", 1.0)
    monkeypatch.setattr(db.engine, "WRITE_LOCK_NOTICE_S", 0.2)
    fd = os.open(home / "sami.db.lock", os.O_RDWR | os.O_CREAT)  # another open file: flock excludes it as another process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, out, err = sami(capsys, "enqueue", "sleep")
    finally:
        os.close(fd)
    lines = err.strip().splitlines()
    assert rc == 1 and len(lines) == 2 and "Traceback" not in err, err
    assert lines[0].startswith("sami: waiting for the database's write lock, held by another process")
    assert "giving up after 1 s" in lines[0]
    assert lines[1].startswith("sami: error: the database's write lock") and "stayed held" in lines[1]
    rc, out, err = sami(capsys, "enqueue", "sleep")  # lock released: it goes through
    assert rc == 0 and out.strip() == "1" and err == ""


def _prepare(data: dict) -> str:
    from sami_core.errors import SpecError
    from services.experiments import prepare_data

    with pytest.raises(SpecError) as info:
        prepare_data(data, source="x.yaml")
    return str(info.value)


def test_submit_checks_what_it_can_before_anything_runs(tmp_path: Path) -> None:
    demo = yaml.safe_load(DEMO.read_text())
    assert "training.lr: Input should be a finite number" in _prepare({**demo, "training": {"lr": float("inf")}})
    assert "iterations: must be between 1 and 100" in _prepare({**demo, "iterations": 100000})
    long = {"principles": [{"principle": "x" * 2001, "antithesis": "y"}, {"principle": "a", "antithesis": "b"}]}
    assert "constitution.principles: principle 1 has 2,001 characters; at most 2,000" in _prepare(
        {**demo, "constitution": long})
    rows = tmp_path / "queries.jsonl"
    rows.write_text("".join(json.dumps({"post": f"query {i}"}) + "\n" for i in range(3)))
    data = {"source": "file", "path": str(rows), "eval_size": 3}
    assert "data.eval_size: 3 held out but queries.jsonl gives at most 3 queries" in _prepare({**demo, "data": data})
    rows.write_text("")
    assert "data.path: queries.jsonl: the file is empty" in _prepare({**demo, "data": data})
    assert "is a folder but not a model (no config.json" in _prepare({**demo, "model": {"path": str(tmp_path)}})


def test_the_stage_entry_refuses_a_run_dir_it_cannot_use(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sami_core.__main__ import main as stage_main

    spec = tmp_path / "gen.json"
    spec.write_text("{}")
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    cases = [(a_file, 2, "is a file, not a folder"), (a_file / "sub", 2, f"{a_file} is a file, not a folder")]
    if sys.platform.startswith("linux"):
        cases.append((Path("/proc/x/run"), 1, "cannot be written"))
    for run_dir, code, named in cases:
        assert stage_main(["generate", "--spec", str(spec), "--run-dir", str(run_dir)]) == code
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --run-dir {run_dir}: ") and named in err and "\n" not in err
    assert a_file.read_text() == "x"


@pytest.mark.parametrize("args, named", [
    (["--devices", "abc"], "--devices 'abc': 'abc' is no GPU id"),
    (["--devices", "0,0"], "a GPU is listed twice"),
    (["--log-level", "loud"], "--log-level 'loud'"),
])
def test_the_worker_refuses_bad_options_in_one_line(
    home: Path, capsys: pytest.CaptureFixture, args: list[str], named: str
) -> None:
    from workers.__main__ import main as worker_main

    with pytest.raises(SystemExit) as info:
        worker_main([*args, "--exit-when-idle"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and named in err and "\n" not in err and "Traceback" not in err


def test_an_empty_data_file_is_named_as_empty_by_the_stage(tmp_path: Path) -> None:
    from sami_core.data import load_queries
    from sami_core.errors import DataError
    from sami_core.spec import DataSpec

    empty = tmp_path / "queries.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"^data\.path: .*queries\.jsonl is empty; it needs one query per row$"):
        load_queries(DataSpec(source="file", path=str(empty)))


def test_submit_names_a_bad_tracking_section_in_one_line(home: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    spec = tmp_path / "tracked.yaml"
    bad = {"wandb": {"project": "sami", "mode": "sometimes"}}
    spec.write_text(yaml.safe_dump({**yaml.safe_load(DEMO.read_text()), "tracking": bad}))
    rc, _, err = sami(capsys, "submit", str(spec), "--dry-run")
    assert rc == 2 and "Traceback" not in err and err.startswith("sami: error: ")
    assert "  tracking.wandb.mode: Input should be 'online', 'offline' or 'disabled'" in err.splitlines()
