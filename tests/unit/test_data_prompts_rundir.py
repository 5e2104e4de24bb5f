import json
from pathlib import Path

import pytest

from sami_core.data import load_queries, split_queries
from sami_core.errors import DataError, RunDirError
from sami_core.prompts import build_prompt, is_valid, keep_query, postprocess
from sami_core.rundir import JsonlWriter, RunDir
from sami_core.spec import DataSpec, validate_spec


# ---- data -------------------------------------------------------------------------------
def test_demo_set_and_deterministic_split():
    qs = load_queries(DataSpec())
    assert len(qs) == 250 and qs[0].id == "0" and qs[0].text.startswith("This is my first post")
    spec = DataSpec(eval_size=50, seed=0)
    tr1, ev1 = split_queries(qs, spec)
    tr2, ev2 = split_queries(list(reversed(qs)), spec)
    assert [q.id for q in ev1] == [q.id for q in ev2] and len(ev1) == 50 and len(tr1) == 200
    assert not {q.id for q in tr1} & {q.id for q in ev1}
    # capping the training set leaves the eval set alone
    tr3, ev3 = split_queries(qs, DataSpec(eval_size=50, train_size=10))
    assert len(tr3) == 10 and [q.id for q in ev3] == [q.id for q in ev1]
    _, ev4 = split_queries(qs, DataSpec(eval_size=50, seed=1))
    assert [q.id for q in ev4] != [q.id for q in ev1]


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".json"])
def test_local_files(tmp_path: Path, suffix: str):
    rows = [{"qid": f"q{i}", "text": f"query number {i}"} for i in range(5)]
    p = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        p.write_text(json.dumps(rows))
    else:
        p.write_text("qid,text\n" + "".join(f"{r['qid']},{r['text']}\n" for r in rows))
    qs = load_queries(DataSpec(source="file", path=str(p), field="text", id_field="qid"))
    assert [q.id for q in qs] == [f"q{i}" for i in range(5)]
    with pytest.raises(DataError, match=r"no field 'post'; its fields are: qid, text"):
        load_queries(DataSpec(source="file", path=str(p)))


def test_data_errors(tmp_path: Path):
    with pytest.raises(DataError, match="does not exist"):
        load_queries(DataSpec(source="file", path=str(tmp_path / "x.jsonl")))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(DataError, match="not JSON, JSONL, CSV or Parquet"):
        load_queries(DataSpec(source="file", path=str(tmp_path / "x.txt")))
    with pytest.raises(DataError, match="leave none"):
        split_queries(load_queries(DataSpec()), DataSpec(eval_size=250))
    with pytest.raises(DataError, match="offline"):
        load_queries(DataSpec(source="hf", dataset="no-such-org/no-such-dataset-xyz"))


# ---- prompts ----------------------------------------------------------------------------
def test_plain_prompts_and_filters():
    p = build_prompt("summarization", "1. Be brief.", "My cat ate my homework.")
    assert "1. Be brief." in p and "POST: My cat ate my homework." in p and p.endswith("SUMMARY:")
    d = build_prompt("dialogue", "1. Be kind.", "How do I bake bread?")
    assert "Human: How do I bake bread?" in d and d.endswith("Assistant:")
    with pytest.raises(ValueError, match="task must be one of"):
        build_prompt("poetry", "c", "q")
    assert postprocess("  A short summary.\n\nPOST: another", ["\n\nPOST:"]) == "A short summary."
    assert not is_valid("", min_chars=1)
    assert not is_valid("As an AI language model", drop_substrings=["AI language model"])
    assert is_valid("fine", drop_substrings=["AI language model"])
    assert keep_query(["a", "b"], valid=[True, True], require_distinct=True)
    assert not keep_query(["a", "a"], valid=[True, True], require_distinct=True)
    assert keep_query(["a", "a"], valid=[True, True], require_distinct=False)
    assert not keep_query(["a", "b"], valid=[True, False], require_distinct=False)


# ---- run directories --------------------------------------------------------------------
def test_run_dir_resume_and_refuse(tmp_path: Path):
    spec = validate_spec("generate", {})
    rd = RunDir(tmp_path / "run")
    assert rd.open("generate", spec) is False
    assert RunDir(tmp_path / "run").open("generate", spec) is True
    other = validate_spec("generate", {"n_constitutions": 3, "generation": {"temperature": 0.5}})
    with pytest.raises(RunDirError, match="generation.temperature, n_constitutions"):
        RunDir(tmp_path / "run").open("generate", other)
    with pytest.raises(RunDirError, match="belongs to stage 'generate'"):
        RunDir(tmp_path / "run").open("sample", validate_spec("sample", {}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "something.txt").write_text("x")
    with pytest.raises(RunDirError, match="not empty"):
        RunDir(tmp_path / "busy").open("generate", spec)
    # An attempt that refused its spec left only its exit record: the fixed spec may start there.
    from sami_core.rundir import record_exit

    record_exit(tmp_path / "refused", 2, "SpecError: training.lr: must be > 0")
    assert RunDir(tmp_path / "refused").open("generate", spec) is False



def test_a_run_dir_whose_attempt_failed_before_any_output_takes_the_fixed_spec(tmp_path: Path):
    """A stage that refuses its input after claiming the directory leaves spec.json, a failed
    progress.json and exit_status.json: another spec may start there. Anything produced, or a
    run still going, keeps the directory the first spec's."""
    from sami_core.rundir import record_exit

    first, fixed = validate_spec("generate", {"n_constitutions": 3}), validate_spec("generate", {})
    rd = RunDir(tmp_path / "run")
    rd.open("generate", first)
    rd.progress("generate", 0, 0, "", "DataError: data.eval_size: too large", status="failed")
    record_exit(tmp_path / "run", 2, "DataError: data.eval_size: too large")
    assert RunDir(tmp_path / "run").open("generate", fixed) is False
    assert json.loads((tmp_path / "run" / "spec.json").read_text())["spec"]["n_constitutions"] == 2
    assert not (tmp_path / "run" / "exit_status.json").exists() and not (tmp_path / "run" / "progress.json").exists()
    assert RunDir(tmp_path / "run").open("generate", fixed) is True  # and now it resumes as usual

    for name, progress in (("produced", ("failed", 0)), ("running", ("running", 0)), ("half-done", ("failed", 5))):
        RunDir(tmp_path / name).open("generate", first)
        RunDir(tmp_path / name).progress("generate", progress[1], 10, "responses", "", status=progress[0])
        if name == "produced":
            (tmp_path / name / "generations.jsonl").write_text("{}\n")
        with pytest.raises(RunDirError, match="made by another spec"):
            RunDir(tmp_path / name).open("generate", fixed)


def test_the_same_command_with_the_spec_fixed_runs_in_the_refused_run_dir(tmp_path: Path):
    """`python -m sami_core write_constitution` refused (a writer that can only judge) and
    then, with the spec fixed, run in the same --run-dir against a real OpenAI-speaking server."""
    from sami_core.__main__ import main
    from tests.openai_server import OpenAIServer

    run_dir, spec_file = tmp_path / "draft", tmp_path / "writer.yaml"
    # refused by the schema (before the run directory is claimed), then by the stage (after)
    for refused in ("writer: {model: w}\ntask_description: summarise posts\nn_principles: 0\n",
                    "writer: {provider: hf, model: demo}\ntask_description: summarise posts\nn_principles: 2\n"):
        spec_file.write_text(refused)
        assert main(["write_constitution", "--spec", str(spec_file), "--run-dir", str(run_dir)]) == 2
        assert json.loads((run_dir / "exit_status.json").read_text())["code"] == 2
    assert (run_dir / "spec.json").exists()
    with OpenAIServer() as srv:
        spec_file.write_text(f"writer: {{base_url: '{srv.base_url}', model: writer, api_key_env: null, "
                             "max_attempts: 2, backoff_initial_s: 0.01}\ntask_description: summarise posts\n"
                             "n_principles: 2\n")
        assert main(["write_constitution", "--spec", str(spec_file), "--run-dir", str(run_dir)]) == 0
    assert json.loads((run_dir / "outputs.json").read_text())["n_principles"] >= 1
    assert json.loads((run_dir / "spec.json").read_text())["spec"]["writer"]["provider"] == "openai"


def test_progress_and_metrics(tmp_path: Path):
    rd = RunDir(tmp_path)
    rd.progress("train", 3, 10, "steps", "loss 0.6")
    prog = json.loads((tmp_path / "progress.json").read_text())
    assert (prog["done"], prog["total"], prog["status"]) == (3, 10, "running")
    rd.append_metrics({"step": 1, "loss": 0.7})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a line cut by a crash
    assert rd.read_metrics() == [{"step": 1, "loss": 0.7}]

    # A non-writer (a rank other than 0 under torchrun) changes nothing in the run directory.
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert set(before) == {"progress.json", "metrics.jsonl"}
    other_rank = RunDir(tmp_path, is_writer=False)
    other_rank.progress("train", 9, 10, "steps", "loss 0.1", status="succeeded")
    other_rank.append_metrics({"step": 9, "loss": 0.1})
    other_rank.write_outputs({"steps": 9})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # ... and the same calls through a writer do change it (the check above can fail).
    rd.append_metrics({"step": 9, "loss": 0.1})
    rd.progress("train", 9, 10, "steps", "loss 0.1")
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after["metrics.jsonl"] != before["metrics.jsonl"] and after["progress.json"] != before["progress.json"]


def test_jsonl_writer_drops_partial_line(tmp_path: Path):
    p = tmp_path / "g.jsonl"
    w = JsonlWriter(p, key="key")
    w.write({"key": ["a", 0], "v": 1})
    w.write({"key": ["a", 1], "v": 2})
    with open(p, "a") as f:
        f.write('{"key": ["b", 0], "v"')
    w2 = JsonlWriter(p, key="key")
    assert w2.done_keys() == {("a", 0), ("a", 1)}
    w2.write({"key": ["b", 0], "v": 3})
    assert [json.loads(x)["v"] for x in p.read_text().splitlines()] == [1, 2, 3]


def test_chat_prompts_and_truncation_with_the_demo_tokenizer(demo_model_dir):
    from transformers import AutoTokenizer

    from sami_core.prompts import PromptBuilder, use_chat_format

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    assert use_chat_format("auto", tok) and not use_chat_format("plain", tok)
    chat = build_prompt("summarization", "1. Be brief.", "A post.", tokenizer=tok, chat=True)
    plain = build_prompt("summarization", "1. Be brief.", "A post.")
    assert chat != plain and "1. Be brief." in chat and "A post." in chat
    long_post = " ".join(["the cat sat on the mat"] * 200)
    for is_chat in (False, True):
        build = PromptBuilder("summarization", tok, is_chat, max_prompt_tokens=120)
        p = build("1. Be brief.", long_post)
        assert build.n_tokens(p) <= 120 and build.truncations == 1
        assert "1. Be brief." in p  # the constitution is never cut
        assert is_chat or p.endswith("SUMMARY:")
        assert build("1. Be brief.", "short post") and build.truncations == 1  # fits: not truncated
    with pytest.raises(ValueError, match="shorten the constitution"):
        PromptBuilder("summarization", tok, False, max_prompt_tokens=10)("1. " + "very long principle " * 20, "x")
