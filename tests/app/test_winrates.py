"""Win rates page: on the shipped published responses with judgments stored through
db.ingest.upsert_judgments, the table equals services.exports.winrates on the same rows,
checkpoints are in iteration order, filters narrow, the CSV download is exactly the table
shown, the length-controlled toggle changes what is plotted."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from db import ingest
from db.engine import transact
from db.experiments import create_experiment
from services import exports, judging, results

ITERS = ("iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0",
         "iteration-2-epoch-0.25-from-epoch-0.12-mistral-opus-constitution-temperature-0.0",
         "iteration-3-epoch-0.38-from-epoch-0.25-mistral-opus-constitution-temperature-0.0")
BASES = ("base-mistral-opus-constitution-temperature-0.0", "instruct-mistral-opus-constitution-temperature-0.0")
N_QUERIES = 40


def verdict(k: int, b: int, q: int, cand: str, base: str) -> str:
    """A deterministic mix: later iterations win more; the longer response wins a tie-break."""
    if (q + k + b) % 7 == 0:
        return "tie"
    if q % 11 == 5:
        return "invalid"
    if (q * (k + 2) + b) % 5 < k + 1:
        return "candidate"
    return "candidate" if len(cand) > len(base) + 200 else "baseline"


def seed(engine) -> None:  # noqa: ANN001
    """All ten shipped files (2,500 responses); each opus iteration judged against base and
    instruct (opus) on the first 40 queries, judge gpt-test."""
    for path in results.shipped_results():
        transact(engine, lambda c, path=path: results.import_results_file(c, path))
    ids = {s["label"]: s["id"] for s in transact(engine, ingest.list_sources)}
    resp = {label: {r["query_id"]: r for r in transact(engine, lambda c, s=ids[label]: ingest.source_responses(c, s))}
            for label in ITERS + BASES}
    texts = {label: dict(transact(engine, lambda c, s=ids[label]: [
        (r["query_id"], r["text"]) for r in ingest.response_rows(c, source=s)])) for label in ITERS + BASES}
    rows = []
    for k, cand in enumerate(ITERS):
        for b, base in enumerate(BASES):
            for q in map(str, range(N_QUERIES)):
                rows.append({"job_id": None, "candidate_id": resp[cand][q]["id"], "baseline_id": resp[base][q]["id"],
                             "constitution_id": resp[cand][q]["constitution_id"],
                             "candidate_position": "A" if int(q) % 2 else "B", "judge_model": "gpt-test",
                             "verdict": verdict(k, b, int(q), texts[cand][q], texts[base][q]),
                             "rationale": "r", "raw_text": "r", "cache_key": f"{k}-{b}-{q}"})
    transact(engine, lambda c: ingest.upsert_judgments(c, rows))


def table_records(at) -> list[dict]:  # noqa: ANN001
    df = at.dataframe[0].value
    return df.to_dict("records")


def close(a, b) -> bool:  # noqa: ANN001
    if pd.isna(a) or pd.isna(b):
        return bool(pd.isna(a) and pd.isna(b))
    return abs(float(a) - float(b)) < 1e-9 if isinstance(a, float) or isinstance(b, float) else a == b


def test_table_equals_judging_winrates_in_iteration_order_and_csv_is_what_is_shown(open_page, workspace, served):
    seed(workspace.engine)
    at = open_page("winrates")
    assert not at.exception
    expected = exports.winrates(transact(workspace.engine, ingest.judgment_rows))
    shown = table_records(at)
    assert list(at.dataframe[0].value.columns) == list(exports.WINRATE_COLUMNS)
    assert len(shown) == len(expected) == 6
    key = lambda r: (r["candidate"], r["baseline"])  # noqa: E731
    want = {key(r): r for r in expected}
    for r in shown:
        assert all(close(r[c], want[key(r)][c]) for c in exports.WINRATE_COLUMNS), r
    # checkpoints in iteration order on the x axis
    chart = at.get("plotly_chart")[0]
    import json
    spec = json.loads(chart.proto.spec)
    traces = spec["data"]
    assert {t["name"] for t in traces} == {f"vs {b}" for b in BASES}
    assert traces[0]["x"] == list(ITERS)
    assert "error_y" in traces[0]
    wr = {key(r): r["win_rate"] for r in expected}
    assert traces[0]["y"] == [wr[(c, traces[0]["name"][3:])] for c in ITERS]
    config = json.loads(chart.proto.config)
    assert config["toImageButtonOptions"] == {"format": "png", "filename": "winrates"}
    assert any("camera icon" in c.value for c in at.caption)

    # the CSV: exactly the rows and columns shown
    button = at.get("download_button")[0]
    assert button.proto.label == "Download CSV"
    data = download_bytes(served, button)
    parsed = list(csv.DictReader(io.StringIO(data.decode("utf-8"))))
    assert list(parsed[0]) == list(exports.WINRATE_COLUMNS)
    assert [(r["candidate"], r["baseline"]) for r in parsed] == [key(r) for r in shown]
    for got, row in zip(parsed, shown):
        assert int(got["n"]) == row["n"] and abs(float(got["win_rate"]) - row["win_rate"]) < 1e-12

    # filter by baseline: the table, the chart and the CSV follow
    at.selectbox(key="winrates.baseline").select(BASES[1]).run()
    shown = table_records(at)
    assert {r["baseline"] for r in shown} == {BASES[1]} and len(shown) == 3
    parsed = list(csv.DictReader(io.StringIO(download_bytes(served, at.get("download_button")[0]).decode("utf-8"))))
    assert [(r["candidate"], r["baseline"]) for r in parsed] == [key(r) for r in shown]
    spec = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [t["name"] for t in spec["data"]] == [f"vs {BASES[1]}"]


def test_length_controlled_toggle_changes_the_plotted_values(open_page, workspace):
    import json

    seed(workspace.engine)
    at = open_page("winrates")
    raw = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    at.toggle(key="winrates.lc").set_value(True).run()
    lc = json.loads(at.get("plotly_chart")[0].proto.spec)["data"]
    expected = {(r["candidate"], r["baseline"]): r["lc_win_rate"]
                for r in exports.winrates(transact(workspace.engine, ingest.judgment_rows))}
    assert [t["y"] for t in lc] != [t["y"] for t in raw]
    for t in lc:
        assert "error_y" not in t
        assert t["y"] == [expected[(c, t["name"][3:])] for c in t["x"]]
    # the second chart: mean length per checkpoint
    lengths = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert "length" in lengths["layout"]["title"]["text"]


def test_captions_name_the_interval_shown_and_series_and_baselines_are_visible(open_page, workspace):
    import json

    seed(workspace.engine)
    at = open_page("winrates")
    captions = " ".join(c.value for c in at.caption)
    assert "95% Wilson interval" in captions
    chart = json.loads(at.get("plotly_chart")[0].proto.spec)
    # two baselines at each checkpoint: side by side, each in its own slot
    assert chart["layout"]["scattermode"] == "group"
    assert len({t["offsetgroup"] for t in chart["data"]}) == len(chart["data"]) == 2
    # each baseline's mean length: a horizontal line across the chart, named in the legend
    lengths = json.loads(at.get("plotly_chart")[1].proto.spec)
    lines = {s["name"]: s for s in lengths["layout"]["shapes"]}
    assert set(lines) == {f"{b} (baseline)" for b in BASES}
    expected = exports.winrates(transact(workspace.engine, ingest.judgment_rows))
    base = [r["mean_len_baseline"] for r in expected if r["baseline"] == BASES[0]]
    line = lines[f"{BASES[0]} (baseline)"]
    assert line["showlegend"] and (line["x0"], line["x1"], line["xref"]) == (0, 1, "paper")
    assert line["y0"] == pytest.approx(sum(base) / len(base))

    at.toggle(key="winrates.lc").set_value(True).run()
    captions = " ".join(c.value for c in at.caption)
    assert "Wilson" not in captions and "no interval is shown" in captions


def test_empty_state_without_judgments(open_page):
    at = open_page("winrates")
    assert any("No judgments yet" in i.value for i in at.info)
    assert any("No held-out MI yet" in i.value for i in at.info)
    assert not at.get("download_button") and not at.get("plotly_chart")


def seed_mi(engine) -> int:  # noqa: ANN001
    """An experiment's evaluate jobs: evaluate-base, then iterations 2 and 1 (stored out of
    order), each iteration's responses also scored by the base model."""
    from db import queue

    def figures(bound: float) -> dict:
        out = {"model": "m", "n_queries": 16, "n_constitutions": 2, "loss": 0.69 - bound}
        for name, v in (("mi_lower_bound", bound), ("row_accuracy", 0.5 + bound), ("col_accuracy", 0.5)):
            out.update({name: v, f"{name}_ci_low": v - 0.05, f"{name}_ci_high": v + 0.1})
        return out

    def run(c):  # noqa: ANN001, ANN202
        exp = create_experiment(c, "mi", {})
        for it, own, base in ((0, 0.0, None), (2, 0.3, 0.02), (1, 0.1, 0.01)):
            label = "base" if it == 0 else f"iteration-{it}"
            job = queue.enqueue(c, "evaluate", {}, name=f"evaluate-{it or 'base'}", experiment_id=exp, iteration=it)
            by = {label: figures(own), **({"base": figures(base)} if base is not None else {})}
            ingest.upsert_mi_results(c, job, label, by, experiment_id=exp, iteration=it, temperature=0.0)
        return exp

    return transact(engine, run)


def test_held_out_mi_per_checkpoint_with_intervals_without_judgments(open_page, workspace):
    import json

    exp = seed_mi(workspace.engine)
    at = open_page("winrates", experiment=str(exp))
    assert not at.exception
    assert any("No judgments yet" in i.value for i in at.info)
    (chart,) = at.get("plotly_chart")
    spec = json.loads(chart.proto.spec)
    assert "MI lower bound" in spec["layout"]["title"]["text"]
    traces = {t["name"]: t for t in spec["data"]}
    assert set(traces) == {"own", "scored by base"}
    own, by_base = traces["own"], traces["scored by base"]
    assert own["x"] == ["base", "iteration-1", "iteration-2"] and own["y"] == pytest.approx([0.0, 0.1, 0.3])
    assert own["error_y"]["array"] == pytest.approx([0.1] * 3) and own["error_y"]["arrayminus"] == pytest.approx([0.05] * 3)
    assert by_base["x"] == ["iteration-1", "iteration-2"] and by_base["y"] == pytest.approx([0.01, 0.02])
    table = at.dataframe[0].value
    assert list(table.columns) == list(exports.MI_COLUMNS) and len(table) == 5
    assert list(table["label"]) == ["base", "iteration-1", "iteration-1", "iteration-2", "iteration-2"]


def test_held_out_mi_is_shown_below_the_win_rates(open_page, workspace):
    import json

    seed(workspace.engine)
    seed_mi(workspace.engine)
    at = open_page("winrates")
    charts = [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]
    assert len(charts) == 3 and "Win rate" in charts[0] and "MI lower bound" in charts[2]
    assert list(at.dataframe[0].value.columns) == list(exports.WINRATE_COLUMNS)
    assert list(at.dataframe[1].value.columns) == list(exports.MI_COLUMNS)


def test_a_deep_link_picks_the_experiment_and_a_bad_one_is_ignored(open_page, workspace):
    first, _ = transact(workspace.engine, lambda c: (create_experiment(c, "a", {}), create_experiment(c, "b", {})))
    at = open_page("winrates", experiment=str(first))
    assert at.selectbox(key="winrates.experiment").value == first
    for bad in ("999", "x", "0"):
        assert open_page("winrates", experiment=bad).selectbox(key="winrates.experiment").value is None


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """{file id: bytes} of every file the app hands to Streamlit's media storage (where a
    download button's data goes; AppTest's storage lives only during a run)."""
    from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

    files: dict[str, bytes] = {}
    original = MemoryMediaFileStorage.load_and_get_id

    def record(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001, ANN202
        file_id = original(self, path_or_data, mimetype, kind, filename)
        files[file_id] = self._files_by_id[file_id].content
        return file_id

    monkeypatch.setattr(MemoryMediaFileStorage, "load_and_get_id", record)
    return files


def download_bytes(served: dict[str, bytes], button) -> bytes:  # noqa: ANN001
    """The bytes behind a download button (its url ends in <file id>.<ext>)."""
    file_id = button.proto.url.rsplit("/", 1)[-1].split(".")[0]
    return served[file_id]
