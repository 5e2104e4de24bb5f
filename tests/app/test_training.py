"""Training page: a two-iteration demo experiment submitted through services.experiments, its
train jobs' metrics.jsonl records (as sami_core/train.py writes them) stored through
db.ingest.upsert_metrics; one trace per iteration in each chart, the log-prob matrix at
the chosen step, deep links and empty states."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from app import charts
from app.overview import DEMO_SPEC
from db import ingest
from db.engine import transact
from services import experiments as submit

STEPS = 6


def record(iteration: int, step: int, *, kl: bool) -> dict:
    """One metrics.jsonl record of a train step, with the keys train.py writes."""
    loss = math.log(2) - 0.05 * step * iteration
    rec = {"step": step, "loss": loss, "row_loss": loss, "col_loss": loss, "row_accuracy": 0.5 + 0.05 * step,
           "col_accuracy": 0.45 + 0.05 * step, "mi_lower_bound": math.log(2) - loss, "total_loss": loss,
           "lr": 2e-5 * min(1.0, step / 2), "grad_norm": None, "tokens_per_s": 100.0, "step_time_s": 0.5,
           "matrix": [[-1.0 - 0.1 * step, -2.0], [-2.5, -1.5 + 0.01 * iteration]], "time": 1.7e9 + step}
    if kl:
        rec["kl"] = 0.01 * step
    return rec


def submit_demo(engine, iterations: int = 2) -> dict[str, int]:  # noqa: ANN001
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data["iterations"] = iterations
    prepared = submit.prepare_data(data, source="demo.yaml")
    result = transact(engine, lambda c: submit.submit(c, prepared))
    return {"exp": result.experiment_id, **{j["key"]: j["id"] for j in result.jobs}}


def seed(engine, *, kl: bool = False) -> dict[str, int]:  # noqa: ANN001
    ids = submit_demo(engine)
    for it in (1, 2):
        recs = [record(it, s, kl=kl) for s in range(1, STEPS + 1)]
        transact(engine, lambda c, it=it, recs=recs: ingest.upsert_metrics(c, ids[f"train-{it}"], recs))
    return ids


def specs(at) -> list[dict]:  # noqa: ANN001
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def by_title(at) -> dict[str, dict]:  # noqa: ANN001
    return {s["layout"]["title"]["text"]: s for s in specs(at)}


def test_charts_have_one_trace_per_iteration_and_the_matrix_at_the_chosen_step(open_page, workspace):
    ids = seed(workspace.engine)
    at = open_page("training", experiment=str(ids["exp"]))
    assert at.selectbox(key="training.experiment").value == ids["exp"]
    charts = by_title(at)
    loss = charts["Loss"]
    assert [t["name"] for t in loss["data"]] == ["iteration 1", "iteration 2"]
    assert loss["data"][1]["x"] == list(range(1, STEPS + 1))
    assert loss["data"][1]["y"] == [record(2, s, kl=False)["loss"] for s in range(1, STEPS + 1)]
    assert [t["name"] for t in charts["Row / column accuracy"]["data"]] == [
        "iteration 1 · row_accuracy", "iteration 1 · col_accuracy", "iteration 2 · row_accuracy",
        "iteration 2 · col_accuracy"]
    assert len(charts["MI lower bound"]["data"]) == len(charts["Learning rate"]["data"]) == 2
    assert "KL to the reference" not in charts  # beta = 0: nothing logged, said so
    assert any("KL to the reference: not logged" in c.value for c in at.caption)
    # more metrics, built only when asked for: throughput is plotted; the gradient norm (null
    # without clipping) is said to be missing
    assert "Throughput" not in charts
    at.toggle(key="training.show_more").set_value(True).run()
    charts = by_title(at)
    assert [t["y"] for t in charts["Throughput"]["data"]] == [[100.0] * STEPS] * 2
    assert any("Gradient norm (before clipping): not logged" in c.value for c in at.caption)

    heat = charts[f"iteration 1, step {STEPS}"]["data"][0]
    assert heat["type"] == "heatmap" and heat["z"] == record(1, STEPS, kl=False)["matrix"]
    at.select_slider(key=f"training.matrix_step.{ids['train-1']}").set_value(2).run()
    heat = by_title(at)["iteration 1, step 2"]["data"][0]
    assert heat["z"] == record(1, 2, kl=False)["matrix"]
    at.selectbox(key="training.matrix_job").select(ids["train-2"]).run()
    assert by_title(at)[f"iteration 2, step {STEPS}"]["data"][0]["z"] == record(2, STEPS, kl=False)["matrix"]

    # picking one iteration leaves one trace per chart
    at.multiselect(key=f"training.jobs.{ids['exp']}").unselect(ids["train-1"]).run()
    assert [t["name"] for t in by_title(at)["Loss"]["data"]] == ["iteration 2"]
    assert not at.exception


def test_kl_is_plotted_when_logged(open_page, workspace):
    ids = seed(workspace.engine, kl=True)
    at = open_page("training", experiment=str(ids["exp"]))
    kl = by_title(at)["KL to the reference"]["data"]
    assert [t["name"] for t in kl] == ["iteration 1", "iteration 2"]
    assert kl[0]["y"] == [0.01 * s for s in range(1, STEPS + 1)]


def test_empty_states(open_page, workspace):
    at = open_page("training")
    assert any("No train jobs yet" in i.value for i in at.info)


def test_an_experiment_without_metrics_says_so(open_page, workspace):
    ids = submit_demo(workspace.engine, iterations=1)
    at = open_page("training", experiment=str(ids["exp"]))
    assert any("No metrics logged yet" in i.value for i in at.info)
    assert not at.get("plotly_chart")


def test_lr_axis_smoothing_and_the_matrix_views(open_page, workspace):
    ids = seed(workspace.engine)
    at = open_page("training", experiment=str(ids["exp"]))
    lr = by_title(at)["Learning rate"]
    lo, hi = lr["layout"]["yaxis"]["range"]
    assert 0 < lo < 1e-5 and 2e-5 < hi < 3e-5  # the lr at its size, not a flat line on -1..1

    # smoothing: an EMA over each loss curve, the raw values faint behind it
    at.slider(key="training.smoothing").set_value(0.5).run()
    loss = by_title(at)["Loss"]["data"]
    assert [t["name"] for t in loss] == ["iteration 1 (raw)", "iteration 1", "iteration 2 (raw)", "iteration 2"]
    raw = [record(2, s, kl=False)["loss"] for s in range(1, STEPS + 1)]
    assert loss[3]["y"] == pytest.approx(charts.ema(raw, 0.5))
    assert len(by_title(at)["Learning rate"]["data"]) == 2  # the schedule is not smoothed

    # the log-prob matrix: raw on a scale fixed over the run's steps, or a softmax on [0, 1]
    def heat(at):  # noqa: ANN001, ANN202
        return next(s["data"][0] for s in specs(at) if s["data"] and s["data"][0]["type"] == "heatmap")

    all_entries = [v for s in range(1, STEPS + 1) for row in record(1, s, kl=False)["matrix"] for v in row]
    first = heat(at)
    assert (first["zmin"], first["zmax"]) == (min(all_entries), max(all_entries))
    at.select_slider(key=f"training.matrix_step.{ids['train-1']}").set_value(2).run()
    assert (heat(at)["zmin"], heat(at)["zmax"]) == (first["zmin"], first["zmax"])  # the same scale at every step
    at.radio(key="training.matrix_view").set_value("row softmax").run()
    z = heat(at)["z"]
    m = record(1, 2, kl=False)["matrix"]
    assert z[0][0] == pytest.approx(math.exp(m[0][0]) / (math.exp(m[0][0]) + math.exp(m[0][1])))
    assert [sum(r) for r in z] == pytest.approx([1.0, 1.0])
    assert (heat(at)["zmin"], heat(at)["zmax"]) == (0.0, 1.0)
    assert any("p(y_j | c_i)" in c.value for c in at.caption)
    at.radio(key="training.matrix_view").set_value("column softmax").run()
    z = heat(at)["z"]
    assert [z[0][j] + z[1][j] for j in (0, 1)] == pytest.approx([1.0, 1.0])
