"""`sami submit`: experiment spec -> constitution version + experiment + DAG of jobs, or a
refusal naming the field with nothing written. Runs the CLI in this process on a real
database (SQLite and PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy import func, select

from db import queue
from db.engine import make_engine, transact
from db.models import Constitution, Experiment, Job
from db.testing import BACKENDS, new_database_url, postgres_unavailable_reason
from sami_core.errors import SpecError
from sami_core.spec import EXAMPLES_DIR
from cli import main as cli
from services import experiments as submit

DEMO = EXAMPLES_DIR / "demo.yaml"
TLDR = EXAMPLES_DIR / "tldr-mistral-7b.yaml"


class Workspace:
    def __init__(self, home: Path, url: str) -> None:
        self.home = home
        self.engine = make_engine(url)

    def sami(self, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
        cli._engine.cache_clear()
        try:
            rc = cli.main(list(args))
        except SystemExit as exc:  # argparse / parser.exit
            rc = exc.code
        out = capsys.readouterr()
        return rc, out.out, out.err

    def tx(self, fn: Callable[[Any], Any]) -> Any:
        return transact(self.engine, fn)

    def count(self, model: type) -> int:
        return self.tx(lambda c: c.execute(select(func.count()).select_from(model)).scalar_one())

    def spec_file(self, data: dict, name: str = "exp.yaml") -> Path:
        p = self.home / name
        p.write_text(yaml.safe_dump(data))
        return p


JUDGE_KEY_VARS = ("OPENAI_API_KEY", "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "AZURE_OPENAI_DEPLOYMENT",
                  "OPENAI_API_VERSION")


@pytest.fixture(params=BACKENDS)
def ws(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Workspace:
    if request.param == "postgresql" and (reason := postgres_unavailable_reason()):
        pytest.skip(reason)
    for var in JUDGE_KEY_VARS:  # the demo's judge is `provider: auto`: no key here, unless a test plants one
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "ws"
    home.mkdir()
    url = new_database_url(request.param, home, migrated=True)
    monkeypatch.setenv("SAMI_HOME", str(home))
    monkeypatch.setenv("SAMI_DATABASE_URL", url)
    monkeypatch.chdir(tmp_path)
    w = Workspace(home, url)
    yield w
    cli._engine.cache_clear()
    w.engine.dispose()


def demo_spec(**changes: Any) -> dict:
    data = yaml.safe_load(DEMO.read_text())
    for dotted, value in changes.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def test_the_example_specs_validate_and_expand() -> None:
    demo = submit.prepare(DEMO)
    plans = submit.expand(demo.exp, "runs/x")
    per_iteration = [f"{k}-{t}" for t in (1, 2, 3) for k in ("generate", "train", "sample", "evaluate")]
    assert [p.key for p in plans] == ["sample-base", "evaluate-base", *per_iteration, "judge-1", "judge-2", "judge-3"]
    assert {p.devices for p in plans} == {0}
    by_key = {p.key: p for p in plans}
    # the demo: prompts cut to 200 tokens, iteration t samples from t-1's checkpoint and trains the base
    # model (train_from: base), with a KL to it; the concision rule judges
    assert {by_key[k].spec["max_prompt_tokens"] for k in ("generate-2", "sample-3", "evaluate-base")} == {200}
    assert by_key["generate-2"].spec["model"]["path"].endswith("train-1/checkpoints/final")
    assert by_key["train-2"].spec["model"]["path"] == by_key["train-1"].spec["model"]["path"] == "demo"
    assert by_key["train-2"].spec["reference_model"]["path"] == "demo"
    assert by_key["judge-3"].spec["judge"]["provider"] == "rule"
    assert demo.constitution_name == "demo:opus/0" and len(demo.principles) == 2
    tldr = submit.prepare(TLDR)
    plans = submit.expand(tldr.exp, "runs/x")
    # base + instruct samples, 3 x (generate, train, sample), and per iteration a judge job
    # against base and instruct (and against iteration-1 from iteration 2 on).
    assert len(plans) == 2 + 3 * 3 + (2 + 3 + 3)
    assert tldr.exp.model.path == "mistralai/Mistral-7B-v0.1"
    assert [m["name"] for m in tldr.members] == [f"demo:mistral/{k}" for k in range(6)]  # the paper's set of six
    assert {p.kind: p.devices for p in plans} == {"sample": 1, "generate": 1, "train": 8, "judge": 0}
    by_key = {p.key: p for p in plans}
    assert by_key["sample-instruct"].spec["model"]["path"] == "mistralai/Mistral-7B-Instruct-v0.2"
    assert by_key["judge-2-vs-instruct"].depends_on == ["sample-2", "sample-instruct"]
    assert tldr.exp.training.lr == 5e-7 and tldr.exp.training.grad_accum == 16


def test_submit_the_demo_creates_its_jobs_in_one_go(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = ws.sami(capsys, "submit", str(DEMO), "--json")
    assert rc == 0, err
    assert "no worker is registered yet" in err  # allowed, with a warning
    result = json.loads(out)
    exp_id = result["experiment_id"]
    assert result["runs_dir"] == f"runs/exp-{exp_id:06d}-demo"

    rows = ws.tx(lambda c: queue.list_jobs(c, experiment_id=exp_id))
    edges = ws.tx(lambda c: queue.dependencies(c, [r.id for r in rows]))
    by_name = {r.name: r for r in rows}
    names = {r.id: r.name for r in rows}
    deps = {r.name: sorted(names[d] for d in edges[r.id]) for r in rows}
    expected = {"sample-base": [], "evaluate-base": []}
    labels = {("sample-base", 0, "base"), ("evaluate-base", 0, "base")}
    for t in (1, 2, 3):  # the demo's three iterations, each from the previous one's checkpoint
        expected |= {f"generate-{t}": [f"train-{t - 1}"] if t > 1 else [], f"train-{t}": [f"generate-{t}"],
                     f"sample-{t}": [f"train-{t}"], f"evaluate-{t}": [f"train-{t}"],
                     f"judge-{t}": [f"sample-{t}", "sample-base"]}
        labels |= {(f"generate-{t}", t, f"iteration-{t} data"), (f"train-{t}", t, f"iteration-{t}"),
                   (f"sample-{t}", t, f"iteration-{t}"), (f"evaluate-{t}", t, f"iteration-{t}"),
                   (f"judge-{t}", t, f"iteration-{t} vs base")}
    assert deps == expected
    assert {(r.name, r.iteration, r.label) for r in rows} == labels
    assert {r.status for r in rows} == {"queued"}
    assert {(r.devices_required, r.max_attempts) for r in rows} == {(0, 2)}
    assert all(r.run_dir == f"{result['runs_dir']}/{r.name}" for r in rows)
    # The constitution: one stored version, inline in every stage spec that uses it.
    (c,) = ws.tx(lambda c: c.execute(select(Constitution.__table__)).all())
    assert (c.name, c.version) == ("demo:opus/0", 1)
    assert {r.constitution_id for r in rows} == {c.id}
    for name in ("sample-base", "generate-1", "sample-1"):
        spec = by_name[name].spec["constitution"]
        assert spec["path"] is None and [p["principle"] for p in spec["principles"]] == [
            p["principle"] for p in c.principles]
    assert by_name["train-1"].spec["data"]["path"] == f"{result['runs_dir']}/generate-1"
    assert by_name["sample-1"].spec["model"]["path"] == f"{result['runs_dir']}/train-1/checkpoints/final"
    judge = by_name["judge-1"].spec
    assert (judge["candidate"], judge["baseline"]) == (
        {"path": f"{result['runs_dir']}/sample-1", "name": "iteration-1", "temperature": None},
        {"path": f"{result['runs_dir']}/sample-base", "name": "base", "temperature": None})
    assert (judge["judge"]["provider"], judge["judge"]["model"], judge["shared_cache"]) == (
        "rule", "concision", "judge-cache")
    exp = ws.tx(lambda c: c.execute(select(Experiment.__table__)).one())
    assert exp.name == "demo" and exp.spec["iterations"] == 3 and exp.spec["constitution"]["principles"]


def test_constitution_versions_are_reused_or_added(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    def principles(*texts: str) -> list[dict]:
        return [{"principle": t, "antithesis": f"not {t}"} for t in texts]

    def submit_with(ps: list[dict]) -> int:
        spec = ws.spec_file(demo_spec(constitution={"name": "mine", "principles": ps}))
        rc, out, err = ws.sami(capsys, "submit", str(spec), "--json")
        assert rc == 0, err
        return json.loads(out)["constitution"]["id"]

    v1 = submit_with(principles("be brief", "be kind"))
    v2 = submit_with(principles("be brief", "be exact"))
    assert submit_with(principles("be brief", "be kind")) == v1  # same principles: same version
    rows = ws.tx(lambda c: c.execute(select(Constitution.id, Constitution.version, Constitution.parent_id)
                                     .order_by(Constitution.id)).all())
    assert [tuple(r) for r in rows] == [(v1, 1, None), (v2, 2, v1)]
    assert submit_with(principles("be brief", "be kind")) == v1
    assert ws.count(Experiment) == 4


BAD_SPECS = [
    ("unknown key", demo_spec(modle={"path": "demo"}), ["modle: unknown key"]),
    ("nested unknown key", demo_spec(training__lrr=1e-5), ["training.lrr: unknown key"]),
    ("wrong type", demo_spec(iterations="three"), ["iterations:", "valid integer"]),
    ("wrong nested type", demo_spec(sampling__temperatures="hot"), ["sampling.temperatures:", "valid list"]),
    ("missing constitution file", demo_spec(constitution={"path": "no/such/constitution.json"}),
     ["constitution.path:", "does not exist"]),
    ("unknown shipped constitution", demo_spec(constitution={"path": "demo:nope/1"}),
     ["constitution.path:", "not shipped"]),
    ("N < 2", demo_spec(n_constitutions=1), ["n_constitutions: must be >= 2"]),
    ("N beyond the constitution", demo_spec(n_constitutions=8), ["constitution.path:", "8 variants requested"]),
    ("iterations < 1", demo_spec(iterations=0), ["iterations: must be between 1 and 100"]),
    ("missing data file", demo_spec(data={"source": "file", "path": "nope.jsonl"}), ["data.path:", "does not exist"]),
    ("missing split file", demo_spec(data={"source": "file", "path": "nope/{split}.jsonl", "eval_split": "validation"}),
     ["data.path:", "train.jsonl", "(split 'train') does not exist"]),
    ("bad template", demo_spec(data={"template": "POST: {}"}), ["data.template:", "must name a field"]),
]


@pytest.mark.parametrize("data, expected", [case[1:] for case in BAD_SPECS], ids=[case[0] for case in BAD_SPECS])
def test_bad_specs_are_refused_naming_the_field(
    ws: Workspace, capsys: pytest.CaptureFixture, data: dict, expected: list[str]
) -> None:
    rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(data)))
    assert rc == 2 and out == ""
    assert err.startswith("sami: error: ") and "exp.yaml" in err
    for text in expected:
        assert text in err, err
    assert (ws.count(Job), ws.count(Experiment), ws.count(Constitution)) == (0, 0, 0)


def test_more_devices_than_any_worker_has_is_refused(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    ws.tx(lambda c: queue.register_worker(c, name="a", host="h", pid=1, devices=["0", "1"], kinds=None))
    ws.tx(lambda c: queue.register_worker(c, name="b", host="h", pid=2, devices=[], kinds=None))
    spec = ws.spec_file(demo_spec(devices={"generate": 1, "train": 4, "sample": 1}))
    rc, out, err = ws.sami(capsys, "submit", str(spec))
    assert rc == 2
    assert "devices.train: 4 GPUs needed but the largest registered worker has 2" in err
    assert (ws.count(Job), ws.count(Experiment), ws.count(Constitution)) == (0, 0, 0)
    # Within what the workers have: accepted, without a warning.
    spec = ws.spec_file(demo_spec(devices={"generate": 1, "train": 2, "sample": 1}))
    rc, out, err = ws.sami(capsys, "submit", str(spec))
    assert rc == 0 and "experiment 1 (demo): 17 jobs" in out
    assert err.splitlines() == []  # no device warning (and the demo's rule judge needs no choosing)


def test_dry_run_and_name_override(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = ws.sami(capsys, "submit", str(DEMO), "--dry-run", "--name", "My Run #1")
    assert rc == 0 and "nothing enqueued" in out and "train-1" in out
    assert (ws.count(Job), ws.count(Experiment), ws.count(Constitution)) == (0, 0, 0)
    rc, out, err = ws.sami(capsys, "submit", str(DEMO), "--name", "My Run #1")
    assert rc == 0 and "run directories in runs/exp-000001-my-run-1" in out


def test_one_file_per_split_is_checked_and_kept(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    for split in ("train", "validation"):
        (ws.home / f"tldr-{split}.jsonl").write_text('{"info": {"id": "a", "post": "my post"}}\n')
    data = {"source": "file", "path": str(ws.home / "tldr-{split}.jsonl"), "field": "info.post",
            "id_field": "info.id", "eval_split": "validation", "template": "POST: {query}"}
    rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(demo_spec(data=data))), "--dry-run", "--json")
    assert rc == 0, err
    # a field, id field or template placeholder the file lacks is refused at submit, listing what is there
    for change, expected in (({"field": "info.pst"}, "data.field: tldr-train.jsonl: no field 'info.pst'; "
                                                     "fields under 'info': id, post"),
                             ({"template": "{titel}: {query}"}, "data.template: tldr-train.jsonl: placeholder "
                                                                "{titel} names no field")):
        rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(demo_spec(data={**data, **change}))), "--dry-run")
        assert rc == 2 and expected in err, err
    (ws.home / "tldr-validation.jsonl").unlink()
    rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(demo_spec(data=data))), "--dry-run")
    assert rc == 2 and "data.path:" in err and "(split 'validation') does not exist" in err


def test_jobs_check_exits_non_zero_unless_all_succeeded(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    rc, _, err = ws.sami(capsys, "jobs", "--experiment", "latest", "--check")
    assert rc == 2 and "no experiment has been submitted yet" in err
    assert ws.sami(capsys, "submit", str(DEMO))[0] == 0
    rc, out, err = ws.sami(capsys, "jobs", "--experiment", "latest", "--check")
    assert rc == 1 and "not done: 17 job(s): 17 queued" in err and "sample-base" in out
    ws.tx(lambda c: c.execute(Job.__table__.update().values(status="succeeded")))
    rc, out, err = ws.sami(capsys, "jobs", "--experiment", "1", "--check", "--json")
    assert rc == 0 and "ok: 17 job(s): 17 succeeded" in err and len(json.loads(out)) == 17


def test_enqueue_validates_stage_specs(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    rc, out, err = ws.sami(capsys, "enqueue", "train", "-p", "data.path=runs/gen", "-p", "training.lr=0")
    assert rc == 2 and "training.lr: must be > 0" in err
    rc, out, err = ws.sami(capsys, "enqueue", "sample", "-p", "temprature=1")
    assert rc == 2 and "temprature: unknown key" in err
    assert ws.count(Job) == 0
    rc, out, err = ws.sami(capsys, "enqueue", "train", "-p", "data.path=runs/gen")
    assert rc == 0
    job = ws.tx(lambda c: queue.get_job(c, int(out)))
    assert job.spec["training"]["lr"] == 5e-7  # stored with the defaults: what the stage will run


PLANTED_KEY = "sk-planted-4f9c2e7a1b-never-stored"


def _stored_text(ws: Workspace) -> str:
    """Every experiment and job row as text (specs, descriptions, labels)."""
    rows = ws.tx(lambda c: [dict(r._mapping) for r in c.execute(select(Experiment.__table__)).all()]
                 + [dict(r._mapping) for r in c.execute(select(Job.__table__)).all()])
    return json.dumps(rows, default=str)


def test_an_auto_judge_is_chosen_at_submit_and_recorded_without_the_key(
    ws: Workspace, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    auto = ws.spec_file(demo_spec(iterations=1, judge__judge={"provider": "auto", "model": "gpt-4o"}))

    # No key in the environment: the local hf judge on the demo model, said on stderr.
    rc, out, err = ws.sami(capsys, "submit", str(auto), "--json")
    assert rc == 0, err
    assert "judge: provider auto -> the local hf judge on the demo model" in err
    result = json.loads(out)
    assert any("provider auto -> the local hf judge" in w for w in result["warnings"])
    exp = ws.tx(lambda c: c.execute(select(Experiment.__table__).where(Experiment.id == result["experiment_id"])).one())
    assert (exp.spec["judge"]["judge"]["provider"], exp.spec["judge"]["judge"]["model"]) == ("hf", "demo")
    assert "provider auto -> the local hf judge" in exp.description

    # A planted key: OpenAI's GPT-4-class default; the spec names the variable, never its value.
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    rc, out, err = ws.sami(capsys, "submit", str(auto), "--json")
    assert rc == 0, err
    assert "judge: provider auto -> OpenAI 'gpt-4o' (OPENAI_API_KEY is set" in err
    exp_id = json.loads(out)["experiment_id"]
    exp = ws.tx(lambda c: c.execute(select(Experiment.__table__).where(Experiment.id == exp_id)).one())
    judge = exp.spec["judge"]["judge"]
    assert (judge["provider"], judge["model"], judge["api_key_env"]) == ("openai", "gpt-4o", "OPENAI_API_KEY")
    (job,) = ws.tx(lambda c: c.execute(select(Job.__table__).where(Job.experiment_id == exp_id,
                                                                   Job.kind == "judge")).all())
    assert (job.spec["judge"]["provider"], job.spec["judge"]["model"]) == ("openai", "gpt-4o")
    assert PLANTED_KEY not in _stored_text(ws) + out + err

    # Azure OpenAI when its key and endpoint are set (the app calls prepare_data directly).
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", PLANTED_KEY + "-azure")
    monkeypatch.setenv("AZURE_OPENAI_ENDPOINT", "https://lab.openai.azure.com")
    prepared = submit.prepare_data(demo_spec(judge__judge={"provider": "auto"}), source="form")
    judge = prepared.exp.judge.judge
    assert (judge.provider, judge.azure_endpoint, judge.api_key_env) == (
        "azure", "https://lab.openai.azure.com", "AZURE_OPENAI_API_KEY")
    result = ws.tx(lambda c: submit.submit(c, prepared))
    assert any("Azure OpenAI deployment 'gpt-4o'" in w for w in result.warnings)
    assert PLANTED_KEY not in _stored_text(ws)


def test_an_instruct_model_baseline_is_enqueued_as_a_sample_job(
    ws: Workspace, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    (tmp_path / "models" / "my-instruct").mkdir(parents=True)  # a local model directory, relative to the cwd
    (tmp_path / "models" / "my-instruct" / "config.json").write_text("{}")
    spec = demo_spec(iterations=1, judge__baselines=["base", {"model": "models/my-instruct", "label": "instruct"}])
    rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(spec)), "--json")
    assert rc == 0, err
    result = json.loads(out)
    jobs = {j["key"]: j for j in result["jobs"]}
    assert list(jobs) == ["sample-base", "sample-instruct", "evaluate-base", "generate-1", "train-1", "sample-1",
                          "evaluate-1", "judge-1-vs-base", "judge-1-vs-instruct"]
    assert jobs["judge-1-vs-instruct"]["depends_on"] == ["sample-1", "sample-instruct"]
    assert (jobs["sample-instruct"]["label"], jobs["sample-instruct"]["iteration"]) == ("instruct", 0)
    rows = {r.name: r for r in ws.tx(lambda c: queue.list_jobs(c, experiment_id=result["experiment_id"]))}
    # Made absolute at submit (stages run in the workspace), like the experiment's own model.
    assert rows["sample-instruct"].spec["model"]["path"] == str((tmp_path / "models" / "my-instruct").resolve())
    assert rows["sample-instruct"].spec["constitution"] == rows["sample-base"].spec["constitution"]

    bad = demo_spec(judge__baselines=["base", {"model": "mistralai/Mistral-7B-Instruct-v0.2", "label": "base"}])
    rc, out, err = ws.sami(capsys, "submit", str(ws.spec_file(bad)))
    assert rc == 2 and "judge.baselines.1.label: 'base' names the experiment's own samples" in err


def test_an_api_judge_without_its_key_here_is_submitted_with_a_note() -> None:
    spec = demo_spec(judge__judge={"provider": "openai", "model": "gpt-4o", "api_key_env": "LAB_OPENAI_KEY"})
    assert submit.prepare_data(spec, env={}).notes == [
        "judge: $LAB_OPENAI_KEY is not set here; the workers that run the judge jobs need it in their environment"]
    assert submit.prepare_data(spec, env={"LAB_OPENAI_KEY": "k"}).notes == []


def test_a_local_model_path_that_does_not_exist_is_refused_by_field(tmp_path):
    from sami_core.errors import SpecError
    from services.experiments import prepare_data

    data = yaml.safe_load(DEMO.read_text())
    data["model"] = {"path": str(tmp_path / "no-such-model")}
    with pytest.raises(SpecError, match=r"model\.path: local directory .* does not exist"):
        prepare_data(data, source="x.yaml")
    data["model"] = {"path": str(tmp_path)}  # a folder that holds no model is refused at submit
    with pytest.raises(SpecError, match=r"model\.path: .* is a folder but not a model \(no config\.json"):
        prepare_data(data, source="x.yaml")
    (tmp_path / "config.json").write_text("{}")  # a model directory is accepted as given
    assert prepare_data(data, source="x.yaml").exp.model.path == str(tmp_path)


def test_submit_errors_carry_their_field_as_spec_errors_do(tmp_path):
    from sami_core.errors import SpecError
    from sami_core.pipeline import expand
    from sami_core.experiment_spec import validate_experiment

    exp = validate_experiment({"devices": {"train": 2}})
    with pytest.raises(submit.SubmitError) as info:
        submit.check_devices(expand(exp, "runs/x"), [(1, None)])
    reason = ("2 GPUs needed but the largest registered worker has 1; lower devices.train or start a worker with "
              "more GPUs (`sami worker --devices ...`)")
    assert info.value.errors == [("devices.train", reason)] and str(info.value) == f"devices.train: {reason}"
    with pytest.raises(SpecError) as info:
        submit.prepare_data({"data": {"source": "file", "path": str(tmp_path / "no.jsonl")}}, source="form")
    assert info.value.errors == [("data.path", f"file {str(tmp_path / 'no.jsonl')!r} does not exist")]
    assert str(info.value) == f"form: invalid spec\n  data.path: file {str(tmp_path / 'no.jsonl')!r} does not exist"


def test_device_checks_cover_only_the_kinds_an_experiment_runs() -> None:
    from sami_core.pipeline import expand
    from sami_core.experiment_spec import validate_experiment

    workers = [(0, ["generate", "train", "sample", "judge"])]  # a worker from before evaluate jobs existed
    plain = validate_experiment({"devices": {"generate": 0, "train": 0, "sample": 0}})
    assert submit.check_devices(expand(plain, "runs/x"), workers) == []
    evaluated = validate_experiment({"devices": {"generate": 0, "train": 0, "sample": 0, "evaluate": 0},
                                     "evaluation": {}})
    assert submit.check_devices(expand(evaluated, "runs/x"), workers) == [
        "devices.evaluate: no registered worker runs evaluate jobs (see `sami workers`)"]
    with pytest.raises(submit.SubmitError) as info:
        submit.check_devices(expand(validate_experiment({"evaluation": {}, "devices": {"evaluate": 2}}), "runs/x"),
                             [(1, None)])
    assert [field for field, _ in info.value.errors] == ["devices.evaluate"]


def test_submit_if_absent_submits_the_demo_once(ws: Workspace, capsys: pytest.CaptureFixture) -> None:
    """`make run` submits the demo with --if-absent: once per workspace, whatever the reruns."""
    rc, out, _ = ws.sami(capsys, "submit", str(DEMO), "--if-absent")
    assert rc == 0 and "experiment 1 (demo): 17 jobs" in out
    rc, out, _ = ws.sami(capsys, "submit", str(DEMO), "--if-absent")
    assert rc == 0 and out.strip() == "experiment 1 (demo) is already in the workspace: not submitted again"
    assert ws.count(Experiment) == 1 and ws.count(Job) == 17
    rc, out, _ = ws.sami(capsys, "submit", str(DEMO), "--if-absent", "--name", "demo-2")  # another name: submitted
    assert rc == 0 and ws.count(Experiment) == 2


def test_a_prompt_that_leaves_no_room_for_a_query_is_refused_at_submit(demo_model_dir: Path) -> None:
    """For a local model folder, the constitution's prompt is counted with its tokenizer.json
    at submit: a budget it already fills is refused naming the field, not hours later."""
    local = {"path": str(demo_model_dir), "prompt_format": "plain"}
    ok = submit.prepare_data(demo_spec(model=local, max_prompt_tokens=200), source="t.yaml")
    assert ok.exp.max_prompt_tokens == 200
    with pytest.raises(SpecError) as err:
        submit.prepare_data(demo_spec(model=local, max_prompt_tokens=24), source="t.yaml")
    (field, reason), = err.value.errors
    assert field == "max_prompt_tokens" and "leaving no room for a query" in reason
    with pytest.raises(SpecError) as err:  # no budget given: the model's 1,024 tokens less the responses'
        submit.prepare_data(demo_spec(model=local, max_prompt_tokens=None, generation__max_new_tokens=1020),
                            source="t.yaml")
    assert err.value.errors[0][0] == "generation.max_new_tokens"
    # the demo shorthand and hub ids are left to the stage
    assert submit.prepare_data(demo_spec(max_prompt_tokens=24), source="t.yaml").exp.max_prompt_tokens == 24
