"""The workbench in a real browser (headless Chromium + Selenium), end to end.

One researcher's path through the app on a temporary workspace, with a real worker
running the jobs: create a constitution, submit the demo experiment with it, watch the
queue until every job succeeded, compare two sources' responses side by side, download
the win-rate CSV and check it against the database. A screenshot of each page is saved
under test-artifacts/browser/.

And: refreshing the Queue page while a job runs does not touch the job.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import time

import pytest

pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")

from selenium.webdriver.common.by import By  # noqa: E402

from db import ingest, queue  # noqa: E402
from db.engine import transact  # noqa: E402
from tests.browser.conftest import ROOT, Workbench, sami_cli  # noqa: E402
from tests.browser.st_driver import StreamlitPage  # noqa: E402
from services import exports, judging, results  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The demo experiment cut to one iteration takes about 3 min through the queue on an idle
# 2-core machine (seven jobs; evaluate-base and evaluate-1 score 64 posts); the limit leaves
# room for a loaded CI runner.
DEMO_TIMEOUT_S = 600
TERMINAL = {"succeeded", "failed", "cancelled", "blocked"}
# The README's screenshot: written by a run with SAMI_README_SCREENSHOT=1 (not on every run:
# it is a tracked file).
README_SCREENSHOT = ROOT / "docs" / "screenshots" / "workbench.png"


def _read(bench: Workbench, fn):  # noqa: ANN001, ANN202
    engine = bench.engine()
    try:
        return transact(engine, fn, write=False)
    finally:
        engine.dispose()


def _write(bench: Workbench, fn):  # noqa: ANN001, ANN202
    engine = bench.engine()
    try:
        return transact(engine, fn, write=True)
    finally:
        engine.dispose()


def _jobs(bench: Workbench, experiment_id: int | None = None) -> list[dict]:
    return _read(bench, lambda c: [dict(r._mapping) for r in queue.list_jobs(c, experiment_id=experiment_id)])


# --- the constitution ------------------------------------------------------------------------

PRINCIPLES = [
    ("Summaries should be concise.", "Summaries should be long-winded."),
    ("Summaries should keep the post's facts.", "Summaries should invent facts."),
]


def _grid(page: StreamlitPage):  # noqa: ANN202
    """The data editor whose columns are "principle" and "antithesis" (other tables on
    the page, e.g. the versions list, are data frames too)."""
    xpath = ("//*[@data-testid='stDataFrame'][.//th[normalize-space(.)='principle']]"
             "[.//th[normalize-space(.)='antithesis']]")
    return page.until(lambda: page.driver.find_element(By.XPATH, xpath), "the principles editor")


def _grid_cells(page: StreamlitPage) -> list[list[str]]:
    """The editor's rows as glide's accessible table (inside its canvas) lists them."""
    canvas = _grid(page).find_element(By.CSS_SELECTOR, "canvas[data-testid='data-grid-canvas']")
    return [[td.get_attribute("textContent") or "" for td in tr.find_elements(By.CSS_SELECTOR, "td")]
            for tr in canvas.find_elements(By.CSS_SELECTOR, "tbody tr")]


def _edit_cell(page: StreamlitPage, row: int, col: int, text: str) -> None:
    """Type ``text`` into cell (row, col) of the st.data_editor grid, which glide draws on
    a canvas: a real click on the cell selects it, Enter opens glide's overlay editor
    (a textarea in #portal) where the text is typed, Enter commits (and Streamlit
    reruns). Geometry: a 36 px header, 35 px rows, a narrow row-marker column, then
    "principle" and "antithesis" (the second column is clicked at 3/4 of the grid's
    width, inside it whatever the first column's width)."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    canvas = _grid(page).find_element(By.CSS_SELECTOR, "canvas[data-testid='data-grid-canvas']")
    size = canvas.size
    x = 80 if col == 0 else int(size["width"] * 0.75)
    y = 36 + 35 * row + 17
    # Selenium's offsets are from the element's centre.
    ActionChains(page.driver).move_to_element_with_offset(
        canvas, x - size["width"] // 2, y - size["height"] // 2).click().perform()
    ActionChains(page.driver).send_keys(Keys.ENTER).perform()  # opens the overlay editor
    editor = page.until(lambda: next((e for e in page.driver.find_elements(
        By.CSS_SELECTOR, "#portal textarea, #portal input, .gdg-input") if e.is_displayed()), None),
        "glide's cell editor", timeout=10)
    editor.send_keys(Keys.CONTROL, "a")
    editor.send_keys(text)
    editor.send_keys(Keys.ENTER)  # commits
    page.wait_idle()


def _create_constitution(page: StreamlitPage, name: str) -> None:
    """Write constitution ``name`` in the Constitutions page's editor and save it."""
    page.open("constitutions", expect="Constitution name")
    page.assert_no_exception()
    _fill_editor(page, name)
    page.click("Save as new version", expect="Saved")
    assert re.search(r"Saved .*version", page.text()), page.text()[-2000:]
    page.assert_no_exception()


def _fill_editor(page: StreamlitPage, name: str) -> None:
    """Name the constitution and write its principles row by row in the data editor."""
    page.type("Constitution name", name)
    for row, (principle, antithesis) in enumerate(PRINCIPLES):
        # The toolbar shows on hover only: click its button through the DOM.
        page.until(lambda: page.driver.execute_script("arguments[0].click(); return true;", _grid(page).find_element(
            By.CSS_SELECTOR, "button[aria-label='Add row']")), "the editor's Add row button")
        page.wait_idle()
        _edit_cell(page, row, 0, principle)
        _edit_cell(page, row, 1, antithesis)
    page.until(lambda: _grid_cells(page)[:len(PRINCIPLES)] == [list(p) for p in PRINCIPLES],
               "the principles in the editor", timeout=20)


# --- the flow --------------------------------------------------------------------------------


def test_researcher_flow(workbench: Workbench, browser, screenshot) -> None:  # noqa: ANN001
    started = time.monotonic()
    page = StreamlitPage(browser, workbench.url, token=workbench.token)

    # Overview renders.
    page.open("", expect="Overview")
    page.assert_no_exception()
    screenshot(browser, "overview")

    # Constitutions: a new constitution, saved as a version.
    name = "browser-test"
    _create_constitution(page, name)
    screenshot(browser, "constitutions")
    stored = _read(workbench, lambda c: [dict(r._mapping) for r in c.exec_driver_sql(
        "SELECT id, version, principles FROM constitutions WHERE name = ?", (name,))])
    assert stored, "the constitution was not saved"
    version = stored[-1]["version"]
    principles = stored[-1]["principles"]
    principles = json.loads(principles) if isinstance(principles, str) else principles
    assert [(p["principle"], p["antithesis"]) for p in principles] == PRINCIPLES, principles

    # New experiment: the demo experiment with that constitution, submitted.
    page.open("new_experiment", expect="New experiment")
    page.click("Load the demo experiment")
    # One iteration on 8 sampled posts: the flow, in minutes (the demo's three take ~10).
    page.type("Iterations", "1", testid="stNumberInput")
    page.type("Eval queries to sample (empty = all held out)", "8", testid="stNumberInput")
    page.select("Constitution", f"{name} v{version}")
    page.click("Submit experiment", expect="submitted", timeout=120)
    submitted_at = time.monotonic()
    match = re.search(r"Experiment (\d+) submitted", page.text())
    assert match, page.text()[-2000:]
    experiment_id = int(match.group(1))
    page.assert_no_exception()
    screenshot(browser, "new_experiment")
    jobs = _jobs(workbench, experiment_id)
    assert jobs, f"experiment {experiment_id} has no jobs"
    assert {j["constitution_id"] for j in jobs if j["kind"] in ("generate", "train")} == {stored[-1]["id"]}

    # Queue: watch it until every job of the experiment succeeded.
    page.open("queue", expect="Queue", experiment=str(experiment_id))
    while True:
        jobs = _jobs(workbench, experiment_id)
        states = {j["status"] for j in jobs}
        if states <= TERMINAL:
            break
        if time.monotonic() - submitted_at > DEMO_TIMEOUT_S:
            pytest.fail(f"the demo experiment did not finish in {DEMO_TIMEOUT_S} s: "
                        f"{[(j['id'], j['kind'], j['status']) for j in jobs]}\n{workbench.log_tail('worker')}")
        time.sleep(2)
    queue_s = time.monotonic() - submitted_at
    bad = [(j["id"], j["kind"], j["status"], j["error"]) for j in jobs if j["status"] != "succeeded"]
    assert not bad, f"{bad}\n{workbench.log_tail('worker')}"
    # The page updates live (no reload): it reaches "<n> succeeded" for all the jobs.
    page.wait_text(f"{len(jobs)} succeeded", timeout=60)
    # ... and so does the sidebar's job count (a fragment of its own)
    page.wait_sidebar_text("0 running, 0 queued", timeout=30)
    page.assert_no_exception()
    screenshot(browser, "queue")

    # Training renders the experiment's curves.
    page.open("training", expect="Training", experiment=str(experiment_id))
    page.assert_no_exception()
    screenshot(browser, "training")

    # Responses: the experiment's checkpoint and the base model side by side.
    sources = _read(workbench, ingest.list_sources)
    mine = [src for src in sources if src.get("experiment_id") == experiment_id]
    checkpoint = next(src for src in mine if src["kind"] == "checkpoint")
    baseline = next(src for src in mine if src["kind"] == "baseline")
    page.open("responses", expect="Responses")
    _compare(page, workbench, checkpoint, baseline)
    page.assert_no_exception()
    # And two imported published sources (real texts): iteration 3 against the base model.
    iteration3 = next(src for src in sources if src["kind"] == "import" and src["label"].startswith("iteration-3"))
    base = next(src for src in sources if src["kind"] == "import" and src["label"].startswith("base")
                and src.get("constitution_source") == iteration3.get("constitution_source"))
    first = _compare(page, workbench, iteration3, base)
    page.assert_no_exception()
    # A taller window for this one: the pickers and the first pair, side by side.
    bottom = browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);"
                                    "return arguments[0].getBoundingClientRect().bottom;", first)
    browser.set_window_size(1400, max(1000, int(bottom) + 160))
    page.wait_idle()
    screenshot(browser, "responses")
    browser.set_window_size(1400, 1000)
    if os.environ.get("SAMI_README_SCREENSHOT") == "1":  # refresh the README's picture (a tracked file)
        README_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / "test-artifacts" / "browser" / "responses.png", README_SCREENSHOT)

    # Win rates of the experiment: the CSV download holds exactly the database's rows.
    page.open("winrates", expect="Download CSV", experiment=str(experiment_id))
    page.assert_no_exception()
    screenshot(browser, "winrates")
    page.click("Download CSV")
    path = page.wait_download(browser.downloads, ".csv")
    with open(path, newline="", encoding="utf-8") as f:
        got = list(csv.DictReader(f))
    expected = [r for r in exports.winrates(_read(workbench, ingest.judgment_rows))
                if r["experiment_id"] == experiment_id]
    assert expected, "the experiment's judge job stored no judgments"
    for col in WINRATE_KEY:
        assert col in (got[0] if got else {}), f"column {col!r} missing from {path.name}: {got[:1]}"
    assert sorted(map(_winrate_key, got)) == sorted(map(_winrate_key, expected)), (got, expected)
    assert sum(int(r["n"]) for r in got) == len(
        [j for j in _read(workbench, lambda c: ingest.judgment_rows(c, experiment_id=experiment_id))])

    print(f"\nbrowser flow: {time.monotonic() - started:.1f} s (the demo experiment's jobs, from submit to the "
          f"last one done: {queue_s:.1f} s)")


WINRATE_KEY = ("experiment_id", "candidate", "baseline", "judge_model", "temperature", "n", "wins", "losses",
               "ties")


def _winrate_key(r: dict) -> tuple:
    """A win-rate row's identity and counts, the same whether read from CSV text or the database."""
    return (int(r["experiment_id"]), str(r["candidate"]), str(r["baseline"]), str(r["judge_model"]),
            float(r["temperature"]), *(int(float(r[k])) for k in ("n", "wins", "losses", "ties")))


def _squash(text: str) -> str:
    return " ".join(text.split())


def _compare(page: StreamlitPage, bench: Workbench, left: dict, right: dict):  # noqa: ANN201
    """Pick ``left`` and ``right`` as the Responses page's two sources and check that
    each pair shows the left source's response in a column left of the right source's;
    returns the first pair's right-hand column (element)."""
    # An option reads "#<id> <short alias>" (the full label is the caption under it).
    page.select("Left source", lambda t: t.startswith(f"#{left['id']} "), search=f"#{left['id']} ")
    page.select("Right source", lambda t: t.startswith(f"#{right['id']} "), search=f"#{right['id']} ")
    page.wait_text(f"{left['label']} ·")
    page.wait_text(f"{right['label']} ·")
    texts = {side: {_squash(r["text"]) for r in _read(bench, lambda c, s=src: ingest.response_rows(c, source=s["id"]))}
             - {""} for side, src in (("left", left), ("right", right))}
    columns = page.driver.find_elements(By.CSS_SELECTOR, '[data-testid="stColumn"]')
    shown = [(_squash(c.get_attribute("textContent") or ""), c.rect["x"], c) for c in columns]
    lefts = [(t, x) for t, x, _ in shown if t.startswith(f"{left['label']} ·")]
    rights = [(t, x) for t, x, _ in shown if t.startswith(f"{right['label']} ·")]
    assert lefts and len(lefts) == len(rights), (left["label"], right["label"], [t[:80] for t, _, _ in shown])
    assert all(lx < rx for (_, lx), (_, rx) in zip(lefts, rights)), "the left source is not on the left"
    for side, cols in (("left", lefts), ("right", rights)):
        if texts[side]:  # the demo model's responses can be empty strings
            assert any(any(x in t for x in texts[side]) for t, _ in cols), (side, [t[:200] for t, _ in cols])
    return next(c for t, _, c in shown if t.startswith(f"{right['label']} ·"))


# --- refreshing never touches a running job --------------------------------------------------


def test_refreshing_queue_leaves_running_job_alone(workbench: Workbench, browser, screenshot) -> None:  # noqa: ANN001
    # Long enough to be still running after three refreshes of a page on a loaded machine
    # (each one waits for the page to settle); a job that ended meanwhile would fail the checks.
    seconds = 60
    job_id = _write(workbench, lambda c: queue.enqueue(c, "sleep", {"seconds": seconds}, name="browser-refresh",
                                                         max_attempts=1))
    page = StreamlitPage(browser, workbench.url, token=workbench.token)
    page.open("queue", expect="Queue")
    running = page.until(lambda: (j := _read(workbench, lambda c: queue.get_job(c, job_id))).status == "running"
                         and j.pid is not None and j, f"job {job_id} to start", timeout=120)
    page.wait_text("1 running", timeout=30)
    for _ in range(3):
        browser.refresh()
        page.wait_idle()
        page.wait_text("1 running")
        page.assert_no_exception()
        job = _read(workbench, lambda c: queue.get_job(c, job_id))
        assert (job.status, job.pid, job.attempts) == ("running", running.pid, 1), (job.status, job.pid)
    screenshot(browser, "queue_running")
    # Leaving the page (its session closes) changes nothing either.
    browser.get("about:blank")
    page.until(lambda: _read(workbench, lambda c: queue.get_job(c, job_id)).status in TERMINAL,
               f"job {job_id} to finish", timeout=seconds + 120)
    job = _read(workbench, lambda c: queue.get_job(c, job_id))
    assert (job.status, job.attempts) == ("succeeded", 1), (job.status, job.attempts, job.error)
    page.open("queue", expect="succeeded")


# --- access: the per-start token and the Host check ------------------------------------------


def test_without_the_token_or_from_a_foreign_host_the_page_shows_nothing(workbench: Workbench, browser) -> None:  # noqa: ANN001
    port = workbench.url.rsplit(":", 1)[1]
    shown = {}
    for name, base, token in (("no token", workbench.url, None), ("wrong token", workbench.url, "guess"),
                              # DNS rebinding: attacker.example resolves to 127.0.0.1, the right token
                              # even (the page could not know it, but the Host check must hold alone)
                              ("foreign host", f"http://attacker.example:{port}", workbench.token)):
        page = StreamlitPage(browser, base)
        page.open("queue", expect="Access refused", **({"token": token} if token else {}))
        shown[name] = browser.find_element("tag name", "body").text  # sidebar included
    assert "not at attacker.example" in shown["foreign host"]
    for name, text in shown.items():
        # nothing of the workspace: no navigation, no workspace path, no job or experiment table
        for secret in (str(workbench.home), "Overview", "Constitutions", "experiment", "sleep"):
            assert secret not in text, (name, secret, text[:500])
    page = StreamlitPage(browser, workbench.url, token=workbench.token)
    page.open("queue", expect="Queue")
    page.assert_no_exception()


# --- compare experiments and a sweep -----------------------------------------------------------


def _figures(page: StreamlitPage) -> dict[str, list[dict]]:
    """The page's plotly charts as drawn: title -> traces (name, x, y)."""
    return page.driver.execute_script(
        "const out = {};"
        "for (const g of document.querySelectorAll('.js-plotly-plot')) {"
        "  const t = g.layout && g.layout.title; const title = (t && (t.text || t)) || '';"
        "  out[String(title).replace(/<[^>]*>/g, '')] = (g.data || []).map(d => ({name: d.name, x: Array.from(d.x || []),"
        "                                            y: Array.from(d.y || [])}));"
        "} return out;")


def test_a_sweep_submitted_then_compared_and_read_per_point(workbench: Workbench, browser, screenshot,
                                                            tmp_path) -> None:  # noqa: ANN001
    """`sami submit` of a spec with a `sweep:` section makes one experiment per point; the
    Experiments page filters to them, overlays the picked points' loss curves and shows the
    sweep's outcome against the swept value. The points' jobs are cancelled at once (running
    them is the queue tests' business) and each point's train job gets the loss records a
    train job's metrics.jsonl holds, stored by the ingest code the worker uses."""
    import yaml

    lrs = [3.0e-5, 1.0e-4]
    spec = yaml.safe_load((ROOT / "sami_core" / "examples" / "demo.yaml").read_text())
    spec.update(name="browser-sweep", iterations=1, sweep={"training.lr": lrs})
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    out = sami_cli(["submit", str(path)], workbench.env, timeout=120)
    points = {float(m.group(2)): int(m.group(1)) for m in re.finditer(r"experiment (\d+): training\.lr=(\S+)", out)}
    assert sorted(points) == lrs, out
    sweep_id = int(re.search(r"sweep (\d+) \(browser-sweep\): 2 experiments", out).group(1))

    slopes = {lrs[0]: 0.01, lrs[1]: 0.03}  # the larger lr's loss falls faster

    def cancel_and_log(conn) -> None:  # noqa: ANN001
        for lr, exp in points.items():
            jobs = queue.list_jobs(conn, experiment_id=exp)
            for job in jobs:
                queue.cancel(conn, job.id)  # a running one: its worker kills it
            train = min(j.id for j in jobs if j.kind == "train")
            ingest.upsert_metrics(conn, train, [{"step": s, "loss": 0.69 - slopes[lr] * s} for s in range(1, 9)])

    _write(workbench, cancel_and_log)
    labels = {lr: f"{exp}: browser-sweep lr={lr:g}" for lr, exp in points.items()}

    page = StreamlitPage(browser, workbench.url, token=workbench.token)
    page.open("experiments", expect="Compare")
    page.type("Filter", "browser-sweep")
    page.wait_text("2 of ")
    page.multiselect("Experiments to compare", [labels[lrs[0]], labels[lrs[1]]])
    loss = page.until(lambda: _figures(page).get("Train loss per step"), "the loss overlay")
    assert sorted(t["name"] for t in loss) == sorted(labels.values()), loss
    for trace in loss:
        lr = next(lr for lr, label in labels.items() if label == trace["name"])
        assert trace["y"] == pytest.approx([0.69 - slopes[lr] * s for s in range(1, 9)]), trace
    page.assert_no_exception()
    screenshot(browser, "experiments")

    page.select("Sweep", lambda t: t.startswith(f"#{sweep_id}: browser-sweep"), search=f"#{sweep_id}:")
    page.select("Outcome", "final train loss")
    chart = page.until(lambda: _figures(page).get("final train loss per point"), "the sweep chart")
    assert len(chart) == 1 and chart[0]["x"] == pytest.approx(lrs), chart
    assert chart[0]["y"] == pytest.approx([0.69 - slopes[lr] * 8 for lr in lrs]), chart
    page.assert_no_exception()
    screenshot(browser, "sweep")
