"""Experiments page: the comparison table (filtered by text and state), curves of picked
experiments overlaid, a sweep's outcome per point, and "Edit and resubmit" loading an
experiment's spec into the New experiment form. Seeded through the real write paths:
services.sweeps (a sweep of 2 points), db.ingest (metrics, MI, responses, judgments)."""

from __future__ import annotations

import json

import yaml
from sqlalchemy import select

from app.overview import DEMO_SPEC
from db import ingest
from db.engine import transact
from db.models import Job
from db.reads.experiments import sweep_rows as reads_sweeps
from services import sweeps

LRS = [1.0e-4, 3.0e-4]


def _seed(engine) -> list[int]:
    """A sweep over training.lr (2 points, 1 iteration each): both log a train loss, point 1
    is evaluated (MI) and judged (3 of 4 won against the base model)."""
    data = yaml.safe_load(DEMO_SPEC.read_text())
    data.update(iterations=1, name="lrs", sweep={"training.lr": LRS})
    data["judge"]["judge"] = {"provider": "rule", "model": "concision"}
    prepared = sweeps.prepare_sweep(data, source="test")
    ids = [s.experiment_id for s in transact(engine, lambda c: sweeps.submit_sweep(c, prepared)).points]

    def fill(conn) -> None:  # noqa: ANN001
        for k, exp_id in enumerate(ids):
            jobs = {j.name: j for j in conn.execute(select(Job).where(Job.experiment_id == exp_id)).all()}
            ingest.upsert_metrics(conn, jobs["train-1"].id, [{"step": s, "loss": 0.7 - 0.1 * s * (k + 1)}
                                                             for s in range(1, 5)])
        jobs = {j.name: j for j in conn.execute(select(Job).where(Job.experiment_id == ids[0])).all()}
        figures = {"model": "m", "n_queries": 8, "n_constitutions": 2, "mi_lower_bound": 0.25,
                   "mi_lower_bound_ci_low": 0.1, "mi_lower_bound_ci_high": 0.4, "row_accuracy": 0.7,
                   "row_accuracy_ci_low": 0.6, "row_accuracy_ci_high": 0.8, "col_accuracy": 0.7,
                   "col_accuracy_ci_low": 0.6, "col_accuracy_ci_high": 0.8, "loss": 0.44}
        ingest.upsert_mi_results(conn, jobs["evaluate-1"].id, "iteration-1", {"iteration-1": figures},
                                 experiment_id=ids[0], iteration=1)
        srcs = {}
        for label, job in (("base", jobs["sample-base"]), ("iteration-1", jobs["sample-1"])):
            srcs[label] = ingest.upsert_response_source(conn, job.id, kind="baseline" if label == "base" else
                                                        "checkpoint", label=label, model="demo", experiment_id=ids[0])
            ingest.upsert_responses(conn, srcs[label], [{"query_id": str(q), "query": "q", "temperature": 0.0,
                                                         "text": f"{label} {q}"} for q in range(4)])
        cand = ingest.source_responses(conn, srcs["iteration-1"])
        base = {r["query_id"]: r for r in ingest.source_responses(conn, srcs["base"])}
        ingest.upsert_judgments(conn, [{
            "job_id": jobs["judge-1"].id, "candidate_id": r["id"], "baseline_id": base[r["query_id"]]["id"],
            "candidate_position": "A", "judge_model": "rule:concision", "cache_key": f"k{r['query_id']}",
            "verdict": "baseline" if r["query_id"] == "0" else "candidate"} for r in cand])

    transact(engine, fill)
    return ids


def test_empty_workspace_says_how_to_start(open_page):
    at = open_page("experiments")
    assert "sweep:" in " ".join(i.value for i in at.info)


def test_table_filters_overlays_and_the_sweep_view(open_page, workspace):
    ids = _seed(workspace.engine)
    at = open_page("experiments")
    table, sweep_table = (df.value for df in at.dataframe)
    rows = {r["id"]: r for r in table.to_dict("records")}
    assert set(rows) == set(ids)
    first, second = rows[ids[0]], rows[ids[1]]
    assert (first["model"], first["N"], first["iterations"], first["state"]) == ("demo", 2, 1, "queued")
    assert first["lr"] == LRS[0] and second["lr"] == LRS[1] and first["constitution"] == "demo:opus/0 v1"
    assert abs(first["win rate"] - 0.75) < 1e-9 and first["judged"] == "iteration-1 vs base (n=4)"
    assert abs(first["MI (nats)"] - 0.25) < 1e-9 and second["MI (nats)"] != second["MI (nats)"]  # NaN: none
    assert abs(first["final loss"] - 0.3) < 1e-9 and abs(second["final loss"] + 0.1) < 1e-9

    # Filters: text (name), then state.
    at.text_input(key="experiments.filter").input("lr=0.0003").run()
    assert list(at.dataframe[0].value["id"]) == [ids[1]]
    at.text_input(key="experiments.filter").input("").run()
    at.multiselect(key="experiments.states").select("queued").run()
    assert len(at.dataframe[0].value) == 2

    # Overlays: the two newest are picked by default; loss has one trace each.
    assert len(at.get("plotly_chart")) == 4  # loss, win rate, MI, the sweep's outcome
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    loss = next(f for f in figs if "Train loss" in f["layout"]["title"]["text"])
    assert sorted(len(t["y"]) for t in loss["data"]) == [4, 4]
    wr = next(f for f in figs if "Win rate" in f["layout"]["title"]["text"])
    assert [t["y"] for t in wr["data"]] == [[0.75]]

    # The sweep view: one row per point, in grid order, and its outcome chart.
    sweep_table = at.dataframe[-1].value
    assert list(sweep_table["training.lr"]) == LRS and list(sweep_table["experiment"]) == ids
    sweep_fig = next(f for f in figs if "per point" in f["layout"]["title"]["text"])
    assert [t["x"] for t in sweep_fig["data"]] == [[LRS[0]]]  # only point 1 was judged
    at.selectbox(key="experiments.outcome").select("final train loss").run()
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    sweep_fig = next(f for f in figs if "per point" in f["layout"]["title"]["text"])
    assert sweep_fig["data"][0]["x"] == LRS and abs(sweep_fig["data"][0]["y"][1] + 0.1) < 1e-9


def test_edit_and_resubmit_loads_the_spec_into_the_new_experiment_form(open_page, workspace):
    ids = _seed(workspace.engine)
    at = open_page("experiments")
    at.selectbox(key="experiments.resubmit").select(ids[1]).run()
    at.button(key="experiments.edit").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "new_experiment.yaml" in at.session_state  # st.switch_page ran the New experiment page
    at.switch_page("views/new_experiment.py").run()  # AppTest's later runs stay on it
    spec = yaml.safe_load(at.session_state["new_experiment.yaml"])
    assert spec["name"] == "lrs lr=0.0003" and spec["training"]["lr"] == LRS[1]
    assert at.text_input(key="new_experiment.name").value == "lrs lr=0.0003"
    assert any(f"experiment {ids[1]}" in i.value for i in at.info)
    at.text_input(key="new_experiment.name").input("lrs again").run()
    at.button(key="new_experiment.submit").click().run()
    assert not at.exception and [s.value for s in at.success][0].startswith(f"Experiment {ids[1] + 1} submitted")


def test_a_sweep_written_in_the_new_experiment_yaml_submits_every_point(open_page, workspace):
    at = open_page("new_experiment")
    at.button(key="new_experiment.demo").click().run()
    spec = yaml.safe_load(at.text_area(key="new_experiment.yaml").value)
    spec.update(iterations=1, sweep={"training.lr": [1.0e-4, 2.0e-4], "training.beta": [0, -1]})
    at.text_area(key="new_experiment.yaml").input(yaml.safe_dump(spec, sort_keys=False)).run()
    at.button(key="new_experiment.submit").click().run()
    errors = " ".join(e.value for e in at.error)
    assert "sweep point 2 of 4 (lr=0.0001 beta=-1)" in errors and "training.beta" in errors
    assert not at.success and not transact(workspace.engine, reads_sweeps, write=False)

    spec["sweep"]["training.beta"] = [0, 0.1]
    at.text_area(key="new_experiment.yaml").input(yaml.safe_dump(spec, sort_keys=False)).run()
    at.button(key="new_experiment.submit").click().run()
    assert [s.value for s in at.success][0].startswith("Sweep 1 submitted: 4 experiments")
    points = at.dataframe[0].value
    assert list(points["training.lr"]) == ["0.0001", "0.0001", "0.0002", "0.0002"]
    (sweep,) = transact(workspace.engine, reads_sweeps, write=False)
    assert sweep["n_experiments"] == 4
