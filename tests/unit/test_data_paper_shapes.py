"""Queries from local files of the public datasets' shapes, built here (no download):
openai/summarize_from_feedback `comparisons` (Parquet, a struct column `info`, repeated
info.id) and Anthropic/hh-rlhf (JSONL dialogues)."""

import json
from pathlib import Path

import pytest

from sami_core.data import first_human_turn, load_queries, load_split
from sami_core.errors import DataError, SpecError
from sami_core.spec import DataSpec, validate_spec

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _comparison_rows(split: str, posts: int, repeats: int) -> list[dict]:
    """Rows like summarize_from_feedback/comparisons: each post in `repeats` rows in a row."""
    rows = []
    for p in range(posts):
        info = {"id": f"{split[0]}{p:03d}", "post": f"{split} post {p} about my cat", "title": f"Title {p}",
                "subreddit": "cats", "site": None, "article": None}
        for r in range(repeats):
            rows.append({"info": info,
                         "summaries": [{"text": f"summary {r}a", "policy": "sup", "note": None},
                                       {"text": f"summary {r}b", "policy": "ppo", "note": None}],
                         "choice": r % 2, "worker": f"w{r}", "batch": "batch3", "split": split,
                         "extra": {"confidence": r}})
    return rows


@pytest.fixture(scope="module")
def tldr_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tldr")
    for split, posts in (("train", 12), ("validation", 5)):
        pq.write_table(pa.Table.from_pylist(_comparison_rows(split, posts, 3)), d / f"{split}.parquet")
    return d


def _tldr(d: Path, **kw) -> DataSpec:
    return DataSpec(source="file", path=str(d / "{split}.parquet"), field="info.post", id_field="info.id", **kw)


def test_nested_fields_duplicates_range_and_template(tldr_dir: Path):
    qs = load_queries(_tldr(tldr_dir))
    assert [q.id for q in qs] == [f"t{p:03d}" for p in range(12)]  # first of each id kept, in order
    assert qs.n_duplicates == 24 and qs.n_rows == 36
    assert qs[0].text == "train post 0 about my cat"

    # a window of distinct queries: skip 2, keep 4 (reading stops once it has them)
    win = load_queries(_tldr(tldr_dir, start=2, max_queries=4, template="POST: {query}"))
    assert [q.id for q in win] == ["t002", "t003", "t004", "t005"]
    assert win[0].text == "POST: train post 2 about my cat"
    assert win.n_duplicates < qs.n_duplicates and win.n_rows < qs.n_rows


def test_reading_in_batches_gives_the_same_queries(tldr_dir: Path, monkeypatch):
    import sami_core.data as data

    spec = _tldr(tldr_dir, start=1, max_queries=7, template="{title}: {query}")
    whole = load_queries(spec)
    monkeypatch.setattr(data, "_BATCH_ROWS", 5)  # batches that split a post's repeated rows
    assert load_queries(spec) == whole and load_queries(spec).n_duplicates == whole.n_duplicates
    by_row = DataSpec(source="file", path=str(tldr_dir / "train.parquet"), field="info.post")  # ids: row index
    assert [q.id for q in load_queries(by_row)][:4] == ["0", "1", "2", "3"] and len(load_queries(by_row)) == 36

    # other fields: a sibling of the query field ({title}) or a path from the row ({info.subreddit})
    t = load_queries(_tldr(tldr_dir, max_queries=1, template="SUBREDDIT: r/{info.subreddit}\nTITLE: {title}\n"
                           "POST: {query}{site}"))
    assert t[0].text == "SUBREDDIT: r/cats\nTITLE: Title 0\nPOST: train post 0 about my cat"


def test_train_and_eval_from_their_own_splits(tldr_dir: Path):
    spec = _tldr(tldr_dir, eval_split="validation", eval_size=3, max_queries=8, train_size=6)
    train, ev = load_split(spec, "train"), load_split(spec, "eval")
    assert [q.id for q in train] == [f"t{p:03d}" for p in range(6)]
    assert [q.id for q in ev] == ["v000", "v001", "v002"]  # the first distinct validation posts
    assert ev[0].text.startswith("validation post") and train.n_duplicates > 0
    # without eval_split: a hashed hold-out of the window, disjoint from training
    spec = _tldr(tldr_dir, eval_size=3, max_queries=8)
    train, ev = load_split(spec, "train"), load_split(spec, "eval")
    assert len(train) == 5 and len(ev) == 3 and not {q.id for q in train} & {q.id for q in ev}
    assert {q.id for q in train} | {q.id for q in ev} == {f"t{p:03d}" for p in range(8)}


def test_wrong_paths_list_the_fields_at_their_level(tldr_dir: Path):
    with pytest.raises(DataError, match=r"data.field: no field 'info.pst'; fields under 'info': "
                                        r"id, post, title, subreddit, site, article"):
        load_queries(_tldr(tldr_dir).model_copy(update={"field": "info.pst"}))
    with pytest.raises(DataError, match=r"data.id_field: the data has no field 'inf.id'; its fields are: info, "):
        load_queries(_tldr(tldr_dir).model_copy(update={"id_field": "inf.id"}))
    with pytest.raises(DataError, match=r"data.field: no field 'choice.x'; 'choice' holds int64"):
        load_queries(_tldr(tldr_dir).model_copy(update={"field": "choice.x"}))
    with pytest.raises(DataError, match=r"data.field: 'info' is a struct.*info.post"):
        load_queries(_tldr(tldr_dir).model_copy(update={"field": "info"}))
    with pytest.raises(DataError, match=r"data.template: placeholder \{titel\} names no field.*"
                                        r"fields under 'info': id, post, title"):
        load_queries(_tldr(tldr_dir, template="{titel}: {query}"))
    with pytest.raises(DataError, match=r"data.path: file .*test.parquet.* \(split 'test'\) does not exist"):
        load_split(_tldr(tldr_dir, eval_split="test"), "eval")
    with pytest.raises(DataError, match=r"data.start: 20 skips all 12 distinct queries"):
        load_queries(_tldr(tldr_dir, start=20))


def test_spec_validation_names_the_field():
    def errors(data: dict) -> list:
        with pytest.raises(SpecError) as exc:
            validate_spec("generate", {"data": data})
        return exc.value.errors

    assert errors({"template": "POST: {}"})[0][0] == "data.template"
    assert errors({"template": "POST: {query!r}"})[0][0] == "data.template"
    assert errors({"template": "POST: {query"})[0][0] == "data.template"
    assert errors({"field": "info..post"})[0][0] == "data.field"
    assert errors({"extract": "last_turn"})[0][0] == "data.extract"
    assert errors({"start": -1})[0][0] == "data.start"
    assert "{split}" in errors({"source": "file", "path": "x.parquet", "eval_split": "validation"})[0][1]
    assert "demo" in errors({"eval_split": "validation"})[0][1]
    assert "only with source 'hf'" in errors({"data_dir": "harmless-base"})[0][1]
    with pytest.raises(DataError, match="data_dir 'harmless-base'.*offline"):
        load_queries(DataSpec(source="hf", dataset="no-such-org/no-such-dataset-xyz", data_dir="harmless-base"))
    assert validate_spec("generate", {"data": {"template": "TITLE: {info.title} {{x}} POST: {query}"}})


HH_ROWS = [
    {"chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Whiskers.\n\nHuman: Another?\n\n"
               "Assistant: Mittens.",
     "rejected": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Dog."},
    {"chosen": "\n\nHuman: How do I bake bread?\nI have flour.\n\nAssistant: Knead it.",
     "rejected": "\n\nHuman: How do I bake bread?\nI have flour.\n\nAssistant: No."},
    {"chosen": "no turns at all", "rejected": "none"},
    {"chosen": "\n\nHuman: What is a good name for a cat?\n\nAssistant: Tom.", "rejected": "x"},
]


def test_hh_rlhf_first_human_turn(tmp_path: Path):
    assert first_human_turn(HH_ROWS[0]["chosen"]) == "What is a good name for a cat?"
    assert first_human_turn(HH_ROWS[1]["chosen"]) == "How do I bake bread?\nI have flour."
    assert first_human_turn("no turns at all") is None
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HH_ROWS))
    spec = DataSpec(source="file", path=str(tmp_path / "{split}.jsonl"), field="chosen",
                    extract="first_human_turn", template="{query}", eval_split="test", eval_size=2)
    qs = load_split(spec, "train")
    assert [q.text for q in qs] == [first_human_turn(r["chosen"]) for r in HH_ROWS if "Human" in r["chosen"]]
    assert qs.n_empty == 1  # the row without a human turn
    ev = load_split(spec, "eval")
    assert len(ev) == 2 and not {q.id for q in ev} & {q.id for q in qs}  # row ids told apart by split
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"chosen": "x", "rejected": "no dialogue here"}) + "\n")
    with pytest.raises(DataError, match=r"data.field: no non-empty 'rejected' values with a 'first_human_turn'"):
        load_queries(DataSpec(source="file", path=str(bad), field="rejected", extract="first_human_turn"))


def test_paths_checked_on_a_parquet_schema_without_reading_rows(tldr_dir: Path):
    from sami_core.data_paths import check_file_spec

    spec = _tldr(tldr_dir, eval_split="validation", template="{title}: {query}")
    assert check_file_spec(spec, ["train", "validation"]) is None
    where, why = check_file_spec(spec.model_copy(update={"field": "info.pst"}), ["train"])
    assert where == "data.field" and "fields under 'info': id, post, title, subreddit, site, article" in why
    where, why = check_file_spec(spec.model_copy(update={"field": "summaries.text"}), ["train"])
    assert where == "data.field" and "'summaries' holds a list" in why
    where, _ = check_file_spec(spec.model_copy(update={"template": "{titel}"}), ["train"])
    assert where == "data.template"
