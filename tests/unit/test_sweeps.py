"""Sweeps and clones (services.sweeps): the grid's expansion, dotted-path overrides, and
submitting a sweep on a real database (every point in one transaction, or none); the
`sami submit` lines for a sweep and for `--from ID --set PATH=VALUE`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from sqlalchemy import func, select

from cli import main as cli
from db import queue
from db.engine import open_database, transact
from db.models import Experiment, Job, Sweep
from db.reads import experiments as reads
from db.workspace import Workspace
from sami_core.errors import SpecError
from sami_core.spec import EXAMPLES_DIR
from services import experiments, sweeps

DEMO = yaml.safe_load((EXAMPLES_DIR / "demo.yaml").read_text())
SMALL = {**DEMO, "iterations": 1, "name": "grid"}


def _errors(fn, *args, **kwargs) -> list[tuple[str, str]]:  # noqa: ANN001
    with pytest.raises(SpecError) as info:
        fn(*args, **kwargs)
    return info.value.errors


# ---- expansion and overrides (pure) -----------------------------------------------------------------------
def test_the_grid_is_every_combination_first_path_slowest() -> None:
    points = sweeps.expand_grid({"training.lr": [1e-7, "5e-7"], "training.beta": [0, 0.1], "iterations": [2]})
    assert points == [{"training.lr": 1e-7, "training.beta": 0, "iterations": 2},
                      {"training.lr": 1e-7, "training.beta": 0.1, "iterations": 2},
                      {"training.lr": 5e-7, "training.beta": 0, "iterations": 2},  # "5e-7": YAML 1.1 text, a number
                      {"training.lr": 5e-7, "training.beta": 0.1, "iterations": 2}]
    assert sweeps.point_label(points[1]) == "lr=1e-07 beta=0.1 iterations=2"
    assert sweeps.point_label({"training.seed": 1, "generation.seed": 2}) == "training.seed=1 generation.seed=2"


@pytest.mark.parametrize("grid, where, reason", [
    ({"trainin.lr": [1]}, "sweep.trainin.lr", "the spec has no field 'trainin'; did you mean training?"),
    ({"training.lrr": [1]}, "sweep.training.lrr", "did you mean training.lr?"),
    ({"training.lr.x": [1]}, "sweep.training.lr.x", "training.lr is a value, not a section"),
    ({"name": ["a", "b"]}, "sweep.name", "'name' cannot be set this way"),
    ({"training..lr": [1]}, "sweep.training..lr", "not a dotted field path"),
    ({"training.lr": 1e-6}, "sweep.training.lr", "give a non-empty list of values, e.g. [1e-06], not float"),
    ({"training.lr": []}, "sweep.training.lr", "not an empty list"),
    ({"training.lr": [1e-6, "1e-6"]}, "sweep.training.lr", "1e-06 is listed twice"),
    ({}, "sweep", "give a mapping of dotted field paths"),
    ([1, 2], "sweep", "give a mapping of dotted field paths"),
])
def test_a_bad_grid_names_the_path(grid: object, where: str, reason: str) -> None:
    errors = _errors(sweeps.expand_grid, grid)
    assert errors[0][0] == where and reason in errors[0][1], errors


def test_the_number_of_points_is_capped() -> None:
    grid = {"training.lr": [i * 1e-7 for i in range(1, 11)], "training.beta": [0, 0.1],
            "iterations": [1, 2, 3, 4, 5, 6]}
    (err,) = _errors(sweeps.expand_grid, grid)
    assert err == ("sweep", "120 points (10 x 2 x 6); a sweep has at most 100: drop values, or split it into "
                            "several sweeps")
    assert len(sweeps.expand_grid(grid, cap=120)) == 120


def test_overrides_set_fields_by_dotted_path_with_yaml_values() -> None:
    data = sweeps.apply_overrides(SMALL, ["training.lr=1e-6", "sampling.temperatures=[0, 0.7]", "evaluation=null",
                                          "data.eval_size=32", "model.prompt_format=chat"])
    assert data["training"]["lr"] == 1e-6 and isinstance(data["training"]["lr"], float)
    assert data["sampling"]["temperatures"] == [0, 0.7] and data["evaluation"] is None
    assert data["data"]["eval_size"] == 32 and data["model"]["prompt_format"] == "chat"
    assert SMALL["training"]["lr"] == 1e-4  # the original is untouched
    # A section that is null (or absent) is made to hold the field.
    assert sweeps.set_path({"evaluation": None}, "evaluation.limit", 8) == {"evaluation": {"limit": 8}}
    assert sweeps.set_path({"judge": {"baselines": ["base", "x"]}}, "judge.baselines.1", "y") == {
        "judge": {"baselines": ["base", "y"]}}


@pytest.mark.parametrize("text, named", [
    ("training.lr", "--set: --set 'training.lr': write PATH=VALUE"),
    ("training.lrr=1", "--set: training.lrr: training has no field 'lrr'; did you mean training.lr?"),
    ("training.beta=[", "--set: training.beta: '[' is not a YAML value"),
    ("=3", "write PATH=VALUE"),
])
def test_a_bad_override_is_one_line_naming_the_field(text: str, named: str) -> None:
    with pytest.raises(SpecError) as info:
        sweeps.parse_override(text)
    assert named in str(info.value) and "\n" not in str(info.value)


def test_each_point_is_validated_as_a_full_spec_naming_the_point() -> None:
    data = {**SMALL, "sweep": {"training.lr": [1e-6, 2e-6], "training.beta": [0, -1]}}
    errors = _errors(sweeps.prepare_sweep, data, source="grid.yaml")
    assert errors == [("training.beta", "sweep point 2 of 4 (lr=1e-06 beta=-1): Input should be greater than or "
                                        "equal to 0")]
    bad_type = {**SMALL, "sweep": {"iterations": [1, "many"]}}
    (path, reason), = _errors(sweeps.prepare_sweep, bad_type)
    assert path == "iterations" and reason.startswith("sweep point 2 of 2 (iterations=many): ")


# ---- a real database ------------------------------------------------------------------------------------------
def _count(engine, model: type) -> int:  # noqa: ANN001
    return transact(engine, lambda c: c.execute(select(func.count()).select_from(model)).scalar_one(), write=False)


def test_a_sweep_is_one_group_of_experiments_written_in_one_transaction(engine) -> None:  # noqa: ANN001
    data = {**SMALL, "sweep": {"training.lr": [1e-6, 2e-6, 4e-6], "training.beta": [0, 0.1]}}
    prepared = sweeps.prepare_sweep(data, source="grid.yaml")
    assert [p.exp.training.lr for p in prepared.points] == [1e-6, 1e-6, 2e-6, 2e-6, 4e-6, 4e-6]
    result = transact(engine, lambda c: sweeps.submit_sweep(c, prepared))
    assert len(result.points) == 6 and result.sweep_id is not None
    rows = transact(engine, lambda c: reads.experiment_rows(c, sweep_id=result.sweep_id), write=False)
    assert sorted(r["sweep_point"]["training.lr"] for r in rows) == [1e-6, 1e-6, 2e-6, 2e-6, 4e-6, 4e-6]
    assert {r["name"] for r in rows} >= {"grid lr=1e-06 beta=0", "grid lr=4e-06 beta=0.1"}
    assert all(r["spec"]["training"]["lr"] == r["sweep_point"]["training.lr"] for r in rows)
    assert all(r["spec"]["training"]["beta"] == r["sweep_point"]["training.beta"] for r in rows)
    (sweep,) = transact(engine, reads.sweep_rows, write=False)
    assert (sweep["name"], sweep["n_experiments"], sweep["grid"]) == ("grid", 6, data["sweep"])
    jobs_per_point = len(prepared.points[0].plans)
    assert _count(engine, Job) == 6 * jobs_per_point

    # A point refused while writing (a worker too small for its devices) undoes the whole sweep.
    transact(engine, lambda c: queue.register_worker(c, name="cpu", host="h", pid=1, devices=[], kinds=None))
    big = {**SMALL, "sweep": {"devices.train": [0, 4]}}
    prepared = sweeps.prepare_sweep(big, source="big.yaml")
    with pytest.raises(experiments.SubmitError, match="devices.train: 4 GPUs needed"):
        transact(engine, lambda c: sweeps.submit_sweep(c, prepared))
    assert (_count(engine, Sweep), _count(engine, Experiment), _count(engine, Job)) == (1, 6, 6 * jobs_per_point)


# ---- the CLI ------------------------------------------------------------------------------------------------------
def sami(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    cli._engine.cache_clear()
    try:
        rc = cli.main(list(args))
    except SystemExit as exc:
        rc = exc.code
    finally:
        cli._engine.cache_clear()
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_sami_submit_prints_one_line_per_point_and_clones_with_overrides(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec = tmp_path / "grid.yaml"
    # As a user writes it: 1e-7 is text to YAML 1.1, and still a number here.
    spec.write_text(yaml.safe_dump({**SMALL, "evaluation": None}) + "sweep:\n  training.lr: [1e-7, 5e-7]\n")
    rc, out, err = sami(capsys, "submit", str(spec))
    assert rc == 0, err
    assert out.splitlines() == ["sweep 1 (grid): 2 experiments, " + out.split(", ", 1)[1].splitlines()[0],
                                "experiment 1: training.lr=1e-07", "experiment 2: training.lr=5e-07"]
    rc, out, err = sami(capsys, "submit", str(spec), "--dry-run", "--json", "--set", "iterations=2")
    assert rc == 0 and [p["values"] for p in json.loads(out)["points"]] == [{"training.lr": 1e-7},
                                                                          {"training.lr": 5e-7}]

    rc, out, err = sami(capsys, "submit", "--from", "2", "--set", "training.beta=0.1", "--set", "iterations=2",
                        "--name", "again", "--json")
    assert rc == 0, err
    new_id = json.loads(out)["experiment_id"]
    engine = open_database(Workspace(home).database_url)
    stored = transact(engine, lambda c: c.execute(select(Experiment.spec, Experiment.name, Experiment.sweep_id,
                                                        Experiment.description)
                                                 .where(Experiment.id == new_id)).one(), write=False)
    engine.dispose()
    assert stored.spec["training"]["lr"] == 5e-7 and stored.spec["training"]["beta"] == 0.1
    assert stored.spec["iterations"] == 2 and stored.name == "again" and stored.sweep_id is None
    assert stored.description.startswith("submitted from experiment 2")

    for args, named in [
        (["submit", "--from", "99"], "sami: error: --from: experiment 99 does not exist"),
        (["submit"], "sami: error: name a spec file or --from EXPERIMENT_ID (one of them)"),
        (["submit", str(spec), "--from", "1"], "name a spec file or --from EXPERIMENT_ID"),
        (["submit", "--from", "1", "--set", "training.lrr=1"], "sami: error: --set: training.lrr: training has no "
                                                                "field 'lrr'; did you mean training.lr?"),
    ]:
        rc, out, err = sami(capsys, *args)
        assert rc == 2 and err.strip() == err.strip().splitlines()[0] and named in err, (args, err)
