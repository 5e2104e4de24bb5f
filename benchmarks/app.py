"""The workbench's server-side speed: each page's first render with a full database, and
the app's import time.

    python benchmarks/app.py              # 3 timed renders per page
    python benchmarks/app.py --repeats 1
    python benchmarks/app.py --experiments 1   # the single drained experiment only

A fresh temporary workspace (SQLite, as `sami init` makes it) is seeded through the
real write paths (services.experiments, db.queue, db.ingest) with what a researcher's
workspace holds after a real experiment:

* the demo experiment submitted with 4 iterations (its DAG of generate / train / sample /
  judge jobs), drained by a registered worker (claim -> outputs -> succeed), where
* each train job logs 200 steps of the train stage's metrics (losses, accuracies, MI
  bound, lr, the N x N matrix) and emits 25 checkpoints (100 in all),
* each checkpoint gets a sample job and a response source with 100 responses (50
  queries x 2 temperatures: 10,000), the base model 100 more,
* each judge job stores 1,250 judgments (25 checkpoints x 50 queries against the base
  model: 5,000);
* then 99 more experiments (``--experiments``, 100 in all) submitted as one sweep over
  training.lr x training.beta (services.sweeps), whose train jobs each log the same 200
  steps of metrics and whose evaluate jobs each store a held-out MI row: about 1.1
  million metric rows in all. Their jobs stay queued;
* the drained experiment's generate jobs store 100,000 generated responses in all
  (``--generated``: queries x N=2, a prompt of ~150 words and a response of 20-50 each,
  kept or dropped by one of the filters), read by the Generated data page.

Then, per page of app.views.PAGES: a new AppTest of the real entry file
(navigation + sidebar) switched to that page, ``at.run()`` timed (Streamlit's script
run: every read, table and figure the page builds; the browser's drawing is not
included). A first pass renders every page once ("first ever": it includes the module
imports that page is the first to need, e.g. pandas on the Overview). Then each page is
rendered ``--repeats`` times with the read caches cleared (``st.cache_data.clear()``),
as its first render in a running server whose cache has expired: the median and the
worst are reported. ``slowest_page_s`` is the slowest render measured, first pass
included (the conservative figure).

Import time: a fresh interpreter importing streamlit, pandas, plotly and every module of
app/ (what the server imports before the first page; page scripts are run, not
imported), timed inside the process; also checked that torch and transformers stay out.

The Generated data page is also timed with a search typed in and with a filter chosen
(each a rerun of the page with cleared caches: the SQL LIKE scan over the job's rows).

Target: every page < 1 s. The last line is ``slowest_page_s: X``.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as a script, this folder is sys.path[0]: its modules (queue.py) would shadow the
# standard library's. Import from the checkout instead (no `pip install -e .`).
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

ENTRY = ROOT / "app" / "streamlit_app.py"
DEMO_SPEC = ROOT / "sami_core" / "examples" / "demo.yaml"

ITERATIONS = 4
STEPS = 200  # train steps logged per iteration
CHECKPOINTS_PER_ITERATION = 25  # every 8 steps: 100 checkpoints in all
QUERIES = 50
TEMPERATURES = (0.0, 1.0)  # 50 queries x 2 = 100 responses per source
JUDGED_QUERIES = 50  # per checkpoint, at temperature 0: 25 x 50 = 1,250 per judge job


def _text(i: int, words: int) -> str:
    return " ".join(f"w{(i * 7 + k) % 997}" for k in range(words))


def _responses(seed: int) -> list[dict]:
    return [{"query_id": str(q), "query": f"Post {q}: " + _text(q, 60), "temperature": t,
             "text": _text(seed * 31 + q, 20 + (seed + q) % 30), "n_tokens": 30 + (seed + q) % 40}
            for q in range(QUERIES) for t in TEMPERATURES]


def _train_metrics(iteration: int) -> list[dict]:
    out = []
    for step in range(1, STEPS + 1):
        loss = 0.7 - 0.3 * step / STEPS + 0.01 * ((step * 13) % 7)
        out.append({"step": step, "loss": loss, "total_loss": loss, "row_loss": loss + 0.02, "col_loss": loss - 0.02,
                    "mi_lower_bound": 0.6931 - loss, "row_accuracy": 0.5 + 0.4 * step / STEPS,
                    "col_accuracy": 0.5 + 0.35 * step / STEPS, "kl": 0.001 * step, "lr": 2e-5,
                    "grad_norm": 0.1, "tokens_per_s": 1800.0 + iteration, "step_time_s": 1.9,
                    "matrix": [[-6.1, -6.0 - step / 1000], [-6.2, -6.05]]})
    return out


def seed(engine) -> dict[str, int]:  # noqa: ANN001
    """Fill the workspace database (see the module docstring); returns counts."""
    from db import ingest, queue
    from db.engine import transact
    from services import experiments as submit

    data = yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8"))
    data["iterations"] = ITERATIONS
    data.setdefault("judge", {})["judge"] = {"provider": "hf", "model": "demo"}  # no API key needed, no note
    prepared = submit.prepare_data(data, source=str(DEMO_SPEC), name="bench")
    exp_id = transact(engine, lambda c: submit.submit(c, prepared)).experiment_id
    worker = transact(engine, lambda c: queue.register_worker(c, name="bench", host="bench", pid=os.getpid(),
                                                               devices=[], kinds=None))
    checkpoints: dict[int, list[tuple[int, int]]] = {}  # iteration -> [(checkpoint id, step)]
    sources: dict[int, list[int]] = {}  # iteration -> response source ids
    counts = {"jobs": 0, "checkpoints": 0, "responses": 0, "judgments": 0, "metrics": 0}

    def run_one(conn) -> bool:  # noqa: ANN001
        job = queue.claim(conn, worker, devices=0, lease_seconds=600)
        if job is None:
            return False
        it = job.iteration
        if job.kind == "train":
            counts["metrics"] += ingest.upsert_metrics(conn, job.id, _train_metrics(it))
            every = STEPS // CHECKPOINTS_PER_ITERATION
            items = [{"step": s, "path": f"{job.run_dir}/checkpoints/step-{s:06d}", "final": s == STEPS}
                     for s in range(every, STEPS + 1, every)]
            counts["checkpoints"] += ingest.upsert_checkpoints(conn, job.id, items, experiment_id=exp_id,
                                                               iteration=it)
            rows = conn.exec_driver_sql("SELECT id, step FROM checkpoints WHERE job_id = ? ORDER BY step",
                                        (job.id,)).all()
            checkpoints[it] = [(r[0], r[1]) for r in rows]
            # One sample job per checkpoint but the last (the DAG's own sample job takes
            # that one); priority 1: sampled before the iteration's judge job runs.
            queue.enqueue_many(conn, [{
                "kind": "sample", "name": f"sample-{it}-step-{s}", "experiment_id": exp_id, "iteration": it,
                "constitution_id": job.constitution_id, "depends_on": [job.id], "priority": 1,
                "label": f"iteration-{it}-step-{s}", "spec": {"checkpoint_step": s}}
                for _, s in checkpoints[it][:-1]])
        elif job.kind == "sample":
            if it is None or job.name == "sample-base":
                src = ingest.upsert_response_source(conn, job.id, kind="baseline", label="base", model="demo",
                                                    experiment_id=exp_id, temperatures=list(TEMPERATURES))
                sources.setdefault(0, []).append(src)
            else:
                step = (job.spec or {}).get("checkpoint_step", STEPS)
                ckpt = next(c for c, s in checkpoints[it] if s == step)
                label = f"iteration-{it}" if step == STEPS else f"iteration-{it}-step-{step}"
                src = ingest.upsert_response_source(conn, job.id, kind="checkpoint", label=label,
                                                    checkpoint_id=ckpt, model=f"step-{step}", experiment_id=exp_id,
                                                    temperatures=list(TEMPERATURES))
                sources.setdefault(it, []).append(src)
            counts["responses"] += ingest.upsert_responses(conn, src, _responses(src),
                                                           constitution_id=job.constitution_id)
        elif job.kind == "judge":
            base = {r["query_id"]: r for r in ingest.source_responses(conn, sources[0][0]) if r["temperature"] == 0}
            rows = []
            for src in sources.get(it, []):
                for r in ingest.source_responses(conn, src):
                    q = r["query_id"]
                    if r["temperature"] != 0 or int(q) >= JUDGED_QUERIES:
                        continue
                    h = (src * 1009 + int(q) * 17) % 10
                    rows.append({"job_id": job.id, "candidate_id": r["id"], "baseline_id": base[q]["id"],
                                 "constitution_id": r["constitution_id"], "candidate_position": "AB"[h % 2],
                                 "judge_model": "gpt-4o",
                                 "verdict": ("candidate", "baseline", "tie")[0 if h < 5 + it else 1 if h < 9 else 2],
                                 "rationale": f"Summary {'AB'[h % 2]} is more concise. " + _text(h, 30),
                                 "raw_text": "...", "cache_key": f"{src}:{q}"})
            counts["judgments"] += ingest.upsert_judgments(conn, rows)
        queue.heartbeat(conn, job.id, worker, lease_seconds=600, progress={"done": 1, "total": 1})
        queue.succeed(conn, job.id, worker, outputs={})
        counts["jobs"] += 1
        return True

    while transact(engine, run_one):
        pass
    transact(engine, lambda c: queue.stop_worker(c, worker))
    counts["experiment_id"] = exp_id
    return counts


def seed_sweep(engine, points: int) -> dict[str, int]:  # noqa: ANN001
    """``points`` more experiments as one sweep (services.sweeps, 3 betas x points // 3 lrs):
    each of their train jobs logs STEPS steps of metrics as the drained experiment's do,
    each evaluate job a held-out MI row; their jobs stay queued (no worker ran them)."""
    from sqlalchemy import select

    from db import ingest
    from db.engine import transact
    from db.models import Job
    from services import sweeps

    data = yaml.safe_load(DEMO_SPEC.read_text(encoding="utf-8"))
    data["iterations"] = ITERATIONS
    data.setdefault("judge", {})["judge"] = {"provider": "hf", "model": "demo"}
    data["sweep"] = {"training.lr": [round(1e-6 * (k + 1), 12) for k in range(max(1, points // 3))],
                     "training.beta": [0.0, 0.05, 0.1]}
    prepared = sweeps.prepare_sweep(data, source=str(DEMO_SPEC), name="bench-sweep",
                                    cap=max(sweeps.MAX_SWEEP_POINTS, points))
    ids = [s.experiment_id for s in transact(engine, lambda c: sweeps.submit_sweep(c, prepared)).points]
    counts = {"experiments": len(ids), "metrics": 0}

    def fill(conn, exp_id: int, k: int) -> None:  # noqa: ANN001
        for job in conn.execute(select(Job.id, Job.kind, Job.iteration).where(Job.experiment_id == exp_id)):
            if job.kind == "train":
                counts["metrics"] += ingest.upsert_metrics(conn, job.id, _train_metrics(job.iteration))
            elif job.kind == "evaluate" and job.iteration:
                mi = 0.05 * job.iteration + 0.001 * k
                figures = {"model": "demo", "n_queries": 64, "n_constitutions": 2, "mi_lower_bound": mi,
                           "mi_lower_bound_ci_low": mi - 0.05, "mi_lower_bound_ci_high": mi + 0.05,
                           "row_accuracy": 0.6, "row_accuracy_ci_low": 0.5, "row_accuracy_ci_high": 0.7,
                           "col_accuracy": 0.6, "col_accuracy_ci_low": 0.5, "col_accuracy_ci_high": 0.7,
                           "loss": 0.69 - mi}
                label = f"iteration-{job.iteration}"
                ingest.upsert_mi_results(conn, job.id, label, {label: figures}, experiment_id=exp_id,
                                         iteration=job.iteration)

    for k, exp_id in enumerate(ids):
        transact(engine, lambda c, e=exp_id, k=k: fill(c, e, k))
    return counts


def seed_generated(engine, total: int) -> int:  # noqa: ANN001
    """``total`` generated responses (N=2 per query) spread over the generate jobs, stored
    through db.ingest.upsert_generated as the worker stores a generate run's filtered.jsonl."""
    from sqlalchemy import select

    from db import ingest
    from db.engine import transact
    from db.models import Job

    job_ids = transact(engine, lambda c: list(c.execute(select(Job.id).where(Job.kind == "generate")
                                                        .order_by(Job.id)).scalars()))
    reasons = (None, None, None, "ends_with", "other_response", "drop_substrings", "require_distinct", None)
    per_job = total // max(1, len(job_ids)) // 2
    n = 0
    for j in job_ids:
        for start in range(0, per_job, 2000):  # a transaction per 4,000 rows
            records = []
            for q in range(start, min(per_job, start + 2000)):
                reason = reasons[(q * 7 + j) % len(reasons)]
                for v in range(2):
                    r = reason if reason in (None, "require_distinct") else (reason if v == 0 else "other_response")
                    records.append({"query_id": f"t3_{q:06d}", "query": f"Post {q}: " + _text(q, 120), "variant": v,
                                    "constitution": f"1. Summaries should be {'brief' if v == 0 else 'long'}.",
                                    "prompt": f"Constitution {v}. Post {q}: " + _text(q, 150),
                                    "response": _text(q * 3 + v, 20 + (q + v) % 30), "n_tokens": 30 + q % 40,
                                    "kept": reason is None, "dropped_by": r})
            n += transact(engine, lambda c, j=j, rec=records: ingest.upsert_generated(c, j, rec))
    return n


def time_generated_filters(repeats: int) -> list[tuple[str, float]]:
    """The Generated data page rerun with a search typed in, then with a filter chosen:
    (what, median seconds over ``repeats`` reruns with cleared caches)."""
    import streamlit as st
    from app.testing import app_test

    at = app_test(120)
    at.switch_page("views/generated.py")
    at.run()
    out = []
    for what, act in (("search 'w5 w'", lambda: at.text_input(key="generated.search").input("w5 w")),
                      ("filter ends_with", lambda: at.selectbox(key="generated.status").set_value("ends_with"))):
        times = []
        for _ in range(repeats):
            st.cache_data.clear()
            act()
            t0 = time.perf_counter()
            at.run()
            times.append(time.perf_counter() - t0)
            if at.exception:
                raise SystemExit(f"generated.py raised: {at.exception[0].value}")
        out.append((what, statistics.median(times)))
    return out


def time_pages(repeats: int) -> list[tuple]:
    """Per page: (title, first render ever, median and worst of ``repeats`` renders with
    cleared caches, and what the page drew: tables, plotly charts, text elements)."""
    import streamlit as st
    from streamlit import logger as streamlit_logger

    from app.testing import app_test, scan_components
    from app.views import PAGES

    def render(file: str) -> float:
        at = app_test(120)
        at.switch_page(f"views/{file}")
        t0 = time.perf_counter()
        at.run()
        dt = time.perf_counter() - t0
        if at.exception:
            raise SystemExit(f"{file} raised: {at.exception[0].value}")
        shown[file] = (len(at.dataframe), len(at.get("plotly_chart")), len(at.text))
        return dt

    shown: dict[str, tuple[int, int, int]] = {}  # what each page drew: tables, charts, texts
    # Outside a server, Streamlit warns on every render and cache clear that there is no
    # script run context and no runtime: true, and not news here.
    for name in ("streamlit.runtime.scriptrunner_utils.script_run_context", "streamlit.runtime.caching.storage",
                 "streamlit.runtime.caching.cache_data_api", "streamlit"):
        streamlit_logger.get_logger(name).addFilter(lambda record: record.levelno >= logging.ERROR)

    # What the server does once at start, not per page: scan the installed packages for
    # Streamlit components (AppTest would do it in every new instance).
    print(f"component scan (server start, once): {scan_components():.2f} s")
    first = {p.file: render(p.file) for p in PAGES}  # warm-up: imports land here
    out = []
    for p in PAGES:
        times = []
        for _ in range(repeats):
            st.cache_data.clear()
            times.append(render(p.file))
        out.append((p.title, first[p.file], statistics.median(times), max(times), *shown[p.file]))
    return out


IMPORT_PROBE = """
import pkgutil, sys, time
t0 = time.perf_counter()
import streamlit, pandas, plotly.graph_objects
import app
for m in pkgutil.iter_modules(app.__path__):
    if not m.ispkg and m.name != "testing":  # app.testing: AppTest for tests, not served
        __import__(f"app.{m.name}")
import app.views
dt = time.perf_counter() - t0
heavy = sorted(m for m in ("torch", "transformers", "datasets", "accelerate") if m in sys.modules)
print(f"{dt:.3f} {','.join(heavy) or '-'}")
"""


def time_import() -> tuple[float, float, str]:
    """(in-process import seconds, whole interpreter wall seconds, heavy modules loaded)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", IMPORT_PROBE], cwd=ROOT, capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.split()
    return float(out[0]), time.perf_counter() - t0, out[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3, help="timed renders per page (default 3)")
    ap.add_argument("--experiments", type=int, default=100,
                    help="experiments in all (default 100): the drained one, and the others as one sweep whose "
                         "train jobs log the same metrics (about 1,100,000 metric rows for 100)")
    ap.add_argument("--generated", type=int, default=100_000,
                    help="generated responses over the generate jobs (default 100,000)")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="sami-bench-app-") as tmp:
        os.environ["SAMI_HOME"] = tmp
        os.environ.pop("SAMI_DATABASE_URL", None)
        from db.engine import open_database
        from db.workspace import Workspace

        ws = Workspace(Path(tmp))
        ws.create()
        engine = open_database(ws.database_url)
        t0 = time.perf_counter()
        counts = seed(engine)
        more = seed_sweep(engine, args.experiments - 1) if args.experiments > 1 else {"experiments": 0,
                                                                                        "metrics": 0}
        n_generated = seed_generated(engine, args.generated) if args.generated else 0
        seed_s = time.perf_counter() - t0
        engine.dispose()
        print(f"seeded in {seed_s:.1f} s: experiment {counts['experiment_id']}, {counts['jobs']} jobs, "
              f"{counts['checkpoints']} checkpoints, {counts['responses']} responses, {counts['judgments']} "
              f"judgments, {counts['metrics']} metric rows; a sweep of {more['experiments']} more experiments "
              f"with {more['metrics']} metric rows ({counts['metrics'] + more['metrics']:,} in all); "
              f"{n_generated:,} generated responses")

        import_s, import_wall_s, heavy = time_import()
        print(f"app import: {import_s:.2f} s in process ({import_wall_s:.2f} s with interpreter start); "
              f"torch/transformers loaded: {heavy}")

        rows = time_pages(args.repeats)
        print(f"\n{'page':<16} {'first ever s':>12} {'median s':>9} {'worst s':>8} {'tables':>7} {'charts':>7} "
              f"{'texts':>6}   (median, worst: caches cleared, {args.repeats} run{'s' if args.repeats > 1 else ''})")
        for title, first, med, worst, tables, charts, texts in rows:
            flag = "" if worst < 1.0 else "  > 1 s"
            print(f"{title:<16} {first:>12.3f} {med:>9.3f} {worst:>8.3f} {tables:>7} {charts:>7} {texts:>6}{flag}")
        if n_generated:
            for what, med in time_generated_filters(args.repeats):
                print(f"Generated data, {what}: median {med:.3f} s" + ("" if med < 1.0 else "  > 1 s"))
        slowest = max(rows, key=lambda r: max(r[1], r[3]))
        print(f"slowest page: {slowest[0]}")
        print(f"slowest_page_s: {max(slowest[1], slowest[3]):.3f}")


if __name__ == "__main__":
    main()
