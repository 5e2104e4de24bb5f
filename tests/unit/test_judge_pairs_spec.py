"""Response sources, pair joining, and the judge / write_constitution specs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_core.errors import DataError, SpecError
from sami_core.judge.pairs import load_responses, make_pairs
from sami_core.results import PUBLISHED_DIR
from sami_core.spec import STAGE_SPECS, validate_spec

CONST = "1. Be concise.\n2. Be accurate."


def _write(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(qid, temp, text, const=CONST):
    return {"key": [qid, temp], "query_id": qid, "query": f"post {qid}", "temperature": temp,
            "constitution": const, "response": text, "n_tokens": len(text)}


def test_sample_run_dirs_join_on_query_and_temperature(tmp_path: Path):
    _write(tmp_path / "ckpt" / "responses.jsonl", [_row(q, t, f"c{q}{t}") for q in (1, 2, 3) for t in (0.0, 1.0)])
    _write(tmp_path / "base" / "responses.jsonl", [_row(q, t, f"b{q}{t}") for q in (2, 3, 4) for t in (0.0, 1.0)])
    cand, base = load_responses(tmp_path / "ckpt"), load_responses(tmp_path / "base" / "responses.jsonl")
    assert cand.name == "ckpt" and base.name == "base"
    pairs = make_pairs(cand, base)
    assert [(p.query_id, p.temperature) for p in pairs] == [("2", 0.0), ("2", 1.0), ("3", 0.0), ("3", 1.0)]
    assert pairs[1].candidate == "c21.0" and pairs[1].baseline == "b21.0" and pairs[1].candidate_tokens == 5
    # explicit temperatures: candidate at 1.0 against baseline at 0.0
    c1 = load_responses(tmp_path / "ckpt", "it1", temperature=1.0)
    b0 = load_responses(tmp_path / "base", temperature=0.0)
    pairs = make_pairs(c1, b0, join_on_temperature=False)
    assert [(p.candidate, p.baseline) for p in pairs] == [("c21.0", "b20.0"), ("c31.0", "b30.0")]
    with pytest.raises(DataError, match="no responses at temperature 0.5"):
        load_responses(tmp_path / "ckpt", temperature=0.5)


def test_pairs_need_the_same_constitution(tmp_path: Path):
    a = _write(tmp_path / "a.jsonl", [_row(1, 0.0, "x")])
    b = _write(tmp_path / "b.jsonl", [_row(1, 0.0, "y", const="1. Be long.")])
    with pytest.raises(DataError, match="different constitutions"):
        make_pairs(load_responses(a), load_responses(b))
    c = _write(tmp_path / "c.jsonl", [_row(9, 0.0, "y")])
    with pytest.raises(DataError, match="no query"):
        make_pairs(load_responses(a), load_responses(c))
    with pytest.raises(DataError, match="does not exist"):
        load_responses(tmp_path / "missing.jsonl")


def test_published_files_pair_up():
    it1 = load_responses(PUBLISHED_DIR / "iteration-1-epoch-0.12-mistral-opus-constitution-temperature-0.0.json")
    base = load_responses(PUBLISHED_DIR / "base-mistral-opus-constitution-temperature-0.0.json")
    pairs = make_pairs(it1, base)
    assert len(pairs) == 250 and pairs[0].candidate_source.startswith("iteration-1")
    other = load_responses(PUBLISHED_DIR / "base-mistral-mistral-constitution-temperature-0.0.json")
    with pytest.raises(DataError, match="different constitutions"):
        make_pairs(it1, other)


def test_judge_spec_defaults_and_errors():
    assert STAGE_SPECS["judge"].__name__ == "JudgeSpec" and "write_constitution" in STAGE_SPECS
    s = validate_spec("judge", {"candidate": {"path": "a"}, "baseline": {"path": "b"}})
    assert s.judge.provider == "openai" and s.judge.api_key_env == "OPENAI_API_KEY" and s.order == "random"
    bad = [
        ({"judge": {"api_key_env": "sk-abc123"}}, "judge.api_key_env: must be the NAME"),
        ({"judge": {"concurrency": 257}}, "judge.concurrency"),
        ({"judge": {"concurrency": 0}}, "judge.concurrency"),
        ({"judge": {"provider": "azure"}}, "needs `azure_endpoint` and `api_version`"),
        ({"judge": {"api_version": "2024-06-01"}}, "for provider 'azure' only"),
        ({"order": "sideways"}, "order"),
        ({"baseline": {"path": "a"}}, "same responses"),
    ]
    for extra, msg in bad:
        data = {"candidate": {"path": "a"}, "baseline": {"path": "b"}, **extra}
        with pytest.raises(SpecError, match=msg.replace("(", r"\(")):
            validate_spec("judge", data)
    w = validate_spec("write_constitution", {"task_description": "summarise posts"})
    assert w.n_principles == 4 and w.writer.temperature == 0.7
