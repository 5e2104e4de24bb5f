"""The read queries of the Responses, Training and Win rates pages (db/reads/responses.py,
training.py, winrates.py) on SQLite and PostgreSQL, on rows written by the real write
paths (db.ingest, db.queue, db.experiments)."""

from __future__ import annotations

from db import ingest, queue
from db.engine import transact
from db.experiments import constitution_version, create_experiment
from db.reads import responses as rr
from db.reads import training as tr
from db.reads import winrates as wr


def seed_pair(c):  # noqa: ANN001, ANN201
    """Two sources: left has queries 0-11 at T=0 and query 0 at T=0.7, right queries 0-9
    at T=0 (so 10 pairs at T=0); judgments on queries 0 (candidate), 1 (baseline, right
    as candidate), 2 (error)."""
    cid, _, _ = constitution_version(c, "c", [{"principle": "be brief", "antithesis": "ramble"}])
    left = ingest.upsert_import_source(c, "left", path="/x/l.json")
    right = ingest.upsert_import_source(c, "right", path="/x/r.json")
    ingest.upsert_responses(c, left, [{"query_id": str(q), "query": f"post {q} 100% true", "temperature": 0.0,
                                       "text": f"Left answer {q}" + (" Needle_x" if q == 7 else "")}
                                      for q in range(12)] + [{"query_id": "0", "temperature": 0.7, "text": "hot"}],
                            constitution_id=cid)
    ingest.upsert_responses(c, right, [{"query_id": str(q), "query": f"post {q}", "temperature": 0.0,
                                        "text": f"right answer {q}"} for q in range(10)], constitution_id=cid)
    lid = {(r["query_id"], r["temperature"]): r["id"] for r in ingest.source_responses(c, left)}
    rid = {r["query_id"]: r["id"] for r in ingest.source_responses(c, right)}

    def j(cand: int, base: int, verdict: str, key: str) -> dict:
        return {"job_id": None, "candidate_id": cand, "baseline_id": base, "constitution_id": cid,
                "candidate_position": "A", "judge_model": "m", "verdict": verdict, "rationale": "why",
                "raw_text": "A", "cache_key": key}

    ingest.upsert_judgments(c, [j(lid[("0", 0.0)], rid["0"], "candidate", "k0"),
                                j(rid["1"], lid[("1", 0.0)], "baseline", "k1"),
                                j(lid[("2", 0.0)], rid["2"], "error", "k2")])
    return left, right, cid


def test_pairs_join_by_query_and_temperature_and_filter_in_sql(engine) -> None:  # noqa: ANN001
    left, right, cid = transact(engine, seed_pair)

    def read(c):  # noqa: ANN001, ANN202
        return {
            "temps": rr.pair_temperatures(c, left, right), "left_temps": rr.source_temperatures(c, left),
            "all": rr.count_pairs(c, left, right), "hot": rr.count_pairs(c, left, right, temperature=0.7),
            "page2": rr.pair_page(c, left, right, page=2, page_size=4),
            "last": rr.pair_page(c, left, right, page=3, page_size=4),
            "needle": rr.pair_page(c, left, right, search="needle_X"),  # case-insensitive, _ literal
            "percent": rr.count_pairs(c, left, right, search="100%"),
            "wildcard": rr.count_pairs(c, left, right, search="answer%4"),  # % is literal
            "right_text": rr.count_pairs(c, left, right, search="RIGHT ANSWER 3"),
            "cand": rr.pair_page(c, left, right, verdict="candidate"),
            "base": rr.pair_page(c, left, right, verdict="baseline"),
            "error": rr.count_pairs(c, left, right, verdict="error"),
            "none": rr.count_pairs(c, left, right, verdict="none"),
            "tie": rr.count_pairs(c, left, right, verdict="tie"),
            "counts": rr.verdict_counts(c, left, right),
            "consts": rr.constitutions_by_id(c, (cid,)),
        }

    got = transact(engine, read)
    assert got["temps"] == [0.0] and got["left_temps"] == [0.0, 0.7]
    assert (got["all"], got["hot"]) == (10, 0)
    assert [p["query_id"] for p in got["page2"]] == ["4", "5", "6", "7"]
    assert [p["query_id"] for p in got["last"]] == ["8", "9"]
    p = got["page2"][0]
    assert (p["left_text"], p["right_text"], p["query"]) == ("Left answer 4", "right answer 4", "post 4 100% true")
    assert [p["query_id"] for p in got["needle"]] == ["7"]
    assert (got["percent"], got["wildcard"], got["right_text"]) == (10, 0, 1)
    assert [p["query_id"] for p in got["cand"]] == ["0"] and [p["query_id"] for p in got["base"]] == ["1"]
    assert (got["error"], got["none"], got["tie"]) == (1, 7, 0)
    assert got["counts"] == {"candidate": 1, "baseline": 1, "error": 1}
    assert got["consts"][cid]["principles"][0]["principle"] == "be brief"

    ids = tuple(x for p in got["cand"] for x in (p["left_id"], p["right_id"]))
    js = transact(engine, lambda c: rr.pair_judgments(c, ids))
    assert [(j["verdict"], j["rationale"]) for j in js] == [("candidate", "why")]
    assert transact(engine, lambda c: rr.pair_judgments(c, ())) == []


def test_training_reads_metrics_and_the_matrix_per_step(engine) -> None:  # noqa: ANN001
    def write(c):  # noqa: ANN001, ANN202
        exp = create_experiment(c, "e", {})
        t2 = queue.enqueue(c, "train", {}, experiment_id=exp, iteration=2, name="train-2")
        t1 = queue.enqueue(c, "train", {}, experiment_id=exp, iteration=1, name="train-1")
        queue.enqueue(c, "sample", {}, experiment_id=exp, iteration=1)
        loose = queue.enqueue(c, "train", {}, name="by hand")
        for job, scale in ((t1, 1.0), (t2, 2.0)):
            ingest.upsert_metrics(c, job, [
                {"step": s, "loss": scale * s, "lr": 1e-5, "grad_norm": None, "kl": float("nan"),
                 "matrix": [[-1.0 * s, -2.0], [-3.0, -4.0]]} for s in (2, 1)])
        return exp, t1, t2, loose

    exp, t1, t2, loose = transact(engine, write)

    def read(c):  # noqa: ANN001, ANN202
        return (tr.training_experiments(c), tr.train_jobs(c, exp), tr.train_jobs(c, None),
                tr.scalar_metrics(c, (t1, t2), ("loss", "kl", "grad_norm")), tr.matrix_steps(c, t1),
                tr.matrix_at(c, t1, 2), tr.matrix_at(c, t1, 9), tr.scalar_metrics(c, (), ("loss",)))

    exps, jobs, outside, metrics, steps, matrix, missing, nothing = transact(engine, read)
    assert exps == [{"id": exp, "name": "e", "n_train_jobs": 2}]
    assert [(j["id"], j["iteration"]) for j in jobs] == [(t1, 1), (t2, 2)]
    assert [j["id"] for j in outside] == [loose]
    # nan and null values are left out; by job id (train-2 was enqueued first), name, step
    assert [(m["job_id"], m["name"], m["step"], m["value"]) for m in metrics] == [
        (t2, "loss", 1, 2.0), (t2, "loss", 2, 4.0), (t1, "loss", 1, 1.0), (t1, "loss", 2, 2.0)]
    assert steps == [1, 2] and matrix == [[-2.0, -2.0], [-3.0, -4.0]] and missing is None and nothing == []


def test_source_order_gives_checkpoints_their_iteration_and_step(engine) -> None:  # noqa: ANN001
    def write(c):  # noqa: ANN001, ANN202
        exp = create_experiment(c, "e", {})
        train = queue.enqueue(c, "train", {}, experiment_id=exp, iteration=3)
        sample = queue.enqueue(c, "sample", {}, experiment_id=exp)
        base_job = queue.enqueue(c, "sample", {}, experiment_id=exp)
        ingest.upsert_checkpoints(c, train, [{"step": 32, "path": "/ck/32"}], experiment_id=exp, iteration=3)
        ck = ingest.find_checkpoint(c, "/ck/32")
        ingest.upsert_response_source(c, sample, kind="checkpoint", label="iteration-3", checkpoint_id=ck,
                                      experiment_id=exp)
        ingest.upsert_response_source(c, base_job, kind="baseline", label="base", model="m", experiment_id=exp)
        return exp

    exp = transact(engine, write)
    rows = transact(engine, wr.source_order)
    assert [(r["label"], r["kind"], r["experiment_id"], r["iteration"], r["step"]) for r in rows] == [
        ("iteration-3", "checkpoint", exp, 3, 32), ("base", "baseline", exp, None, None)]
    assert transact(engine, wr.experiment_choices) == [{"id": exp, "name": "e"}]


def test_queries_and_verdicts_are_counted_per_temperature(engine) -> None:  # noqa: ANN001
    """Four queries at two temperatures are 8 pairs but 4 queries; the judgments' counts
    follow the temperature filter."""
    def seed(c):  # noqa: ANN001, ANN202
        a = ingest.upsert_import_source(c, "a", path="/x/a.json")
        b = ingest.upsert_import_source(c, "b", path="/x/b.json")
        for src, name in ((a, "a"), (b, "b")):
            ingest.upsert_responses(c, src, [{"query_id": str(q), "temperature": t, "text": f"{name} {q} at {t}"}
                                             for q in range(4) for t in (0.0, 1.0)])
        ids = {(s, r["query_id"], r["temperature"]): r["id"] for s in (a, b) for r in ingest.source_responses(c, s)}

        def j(q: str, t: float, verdict: str) -> dict:
            return {"job_id": None, "candidate_id": ids[(a, q, t)], "baseline_id": ids[(b, q, t)],
                    "constitution_id": None, "candidate_position": "A", "judge_model": "m", "verdict": verdict,
                    "rationale": None, "raw_text": "A", "cache_key": f"{q}-{t}"}

        ingest.upsert_judgments(c, [j("0", 0.0, "candidate"), j("1", 0.0, "baseline"), j("0", 1.0, "baseline")])
        return a, b

    a, b = transact(engine, seed)
    got = transact(engine, lambda c: {
        "pairs": rr.count_pairs(c, a, b), "queries": rr.count_pair_queries(c, a, b),
        "queries_hot": rr.count_pair_queries(c, a, b, temperature=1.0),
        "queries_search": rr.count_pair_queries(c, a, b, search="a 2 at"),
        "all": rr.verdict_counts(c, a, b), "cold": rr.verdict_counts(c, a, b, temperature=0.0),
        "hot": rr.verdict_counts(c, b, a, temperature=1.0)})
    assert (got["pairs"], got["queries"], got["queries_hot"], got["queries_search"]) == (8, 4, 4, 1)
    assert got["all"] == {"candidate": 1, "baseline": 2}
    assert got["cold"] == {"candidate": 1, "baseline": 1} and got["hot"] == {"baseline": 1}
