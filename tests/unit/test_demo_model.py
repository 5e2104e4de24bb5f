"""The offline demo model: loadable with the Auto classes, deterministic, safe to build."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from safetensors.torch import load_file

from sami_core import demo_model
from sami_core.demo_model import (
    DEMO_MODEL_VERSION,
    MARKER_FILE,
    build_demo_model,
    default_demo_model_dir,
    ensure_demo_model,
    read_marker,
)
from sami_core.errors import SamiError

TINY = 3  # pretraining steps for builds made inside tests


def first_post() -> str:
    return json.loads((demo_model.DATA_DIR / "posts.jsonl").read_text().splitlines()[0])["post"]


def test_loads_with_auto_classes(demo_model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir)
    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    assert model.config.model_type == "llama"
    assert model.dtype == torch.float32
    assert model.config.vocab_size == len(tok) == 4096
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert tok.padding_side == "left" and tok.model_max_length == 1024
    assert (demo_model_dir / "model.safetensors").is_file()
    # A forward pass gives (B, T, V) logits.
    ids = tok(["POST: hi\n\nTL;DR:"], return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], 4096)


def test_tokenizer_round_trips_a_post(demo_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    post = first_post()
    ids = tok(post)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    assert len(ids) < len(post) / 2  # BPE merges learned from these posts
    assert tok.decode(ids, skip_special_tokens=True) == post
    odd = "naïve café — 東京 🙂\ttabs\n\nand  double  spaces"  # byte-level: anything encodes
    assert tok.decode(tok(odd)["input_ids"], skip_special_tokens=True) == odd


def test_chat_template(demo_model_dir: Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo_model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "POST: hi"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt == "<s>SYSTEM: Be brief.\n\nUSER: POST: hi\n\nASSISTANT:"
    done = tok.apply_chat_template(messages + [{"role": "assistant", "content": "ok"}], tokenize=False)
    assert done.endswith("ASSISTANT: ok</s>")


def test_pretraining_lowers_the_loss(demo_model_dir: Path):
    info = read_marker(demo_model_dir)
    assert info["version"] == DEMO_MODEL_VERSION
    assert abs(info["initial_loss"] - math.log(4096)) < 0.5  # untrained: about uniform
    assert info["final_loss"] < info["initial_loss"] - 1.0


def test_build_is_deterministic_for_a_seed(tmp_path: Path):
    a = build_demo_model(tmp_path / "a", seed=0, pretrain_steps=TINY)
    b = build_demo_model(tmp_path / "b", seed=0, pretrain_steps=TINY)
    c = build_demo_model(tmp_path / "c", seed=1, pretrain_steps=TINY)
    wa, wb, wc = (load_file(d / "model.safetensors") for d in (a, b, c))
    assert wa.keys() == wb.keys()
    assert all(wa[k].equal(wb[k]) for k in wa)
    assert not all(wa[k].equal(wc[k]) for k in wa)  # the seed matters
    assert (a / "tokenizer.json").read_bytes() == (b / "tokenizer.json").read_bytes()
    # The temporary build directories are gone.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]


def test_existing_model_is_reused_not_rebuilt(tmp_path: Path):
    out = build_demo_model(tmp_path / "m", pretrain_steps=TINY)
    weights = out / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert build_demo_model(out, pretrain_steps=TINY) == out
    assert ensure_demo_model(out) == out  # any complete model of this version
    assert weights.stat().st_mtime_ns == stamp
    with pytest.raises(SamiError, match="seed 0 and 3 pretraining steps"):
        build_demo_model(out, seed=5, pretrain_steps=TINY)


def test_builds_into_an_empty_dir_and_replaces_an_old_version(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert read_marker(build_demo_model(empty, pretrain_steps=TINY)) is not None

    old = tmp_path / "old"
    old.mkdir()
    (old / MARKER_FILE).write_text(json.dumps({"format": "sami-demo-model", "version": DEMO_MODEL_VERSION - 1}))
    (old / "stale.bin").write_text("x")
    build_demo_model(old, pretrain_steps=TINY)
    assert read_marker(old)["version"] == DEMO_MODEL_VERSION
    assert not (old / "stale.bin").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "old"]


def test_refuses_a_non_empty_foreign_dir(tmp_path: Path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SamiError, match="not empty and is not a demo model"):
        build_demo_model(foreign, pretrain_steps=TINY)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["mine"]


def test_default_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("SAMI_DEMO_MODEL", str(tmp_path / "x"))
    assert default_demo_model_dir() == tmp_path / "x"
    monkeypatch.delenv("SAMI_DEMO_MODEL")
    assert default_demo_model_dir().name == f"demo-model-v{DEMO_MODEL_VERSION}"
    assert default_demo_model_dir().parent.name == ".cache"


def test_main(tmp_path: Path, capsys: pytest.CaptureFixture):
    assert demo_model.main([str(tmp_path / "cli"), "--pretrain-steps", "2", "--seed", "3"]) == 0
    out, err = capsys.readouterr()
    assert f"demo model at {tmp_path / 'cli'}" in out and "pretraining step 2/2" in err
    assert read_marker(tmp_path / "cli")["seed"] == 3

    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "f").write_text("")
    assert demo_model.main([str(tmp_path / "junk")]) == 2
    assert "not a demo model" in capsys.readouterr().err


def test_concise_and_long_winded_summaries_differ_by_degree_of_filler():
    """The recipe's cue is graded: a concise summary has a few fillers, a long-winded one
    many, so that the base model leaves SAMI room to push the principle's side further."""
    import random

    def filler_share(rate: float | None) -> float:
        words = demo_model._wordy(random.Random(0), " ".join(["w"] * 4000), rate).split()
        starts = sum(1 for a, b in zip(words, words[1:]) if a != "w" and b == "w")  # a filler ends before a word
        return starts / 4000

    concise, long_winded = filler_share(demo_model.CONCISE_FILLER_RATE), filler_share(None)
    assert 0.5 * demo_model.CONCISE_FILLER_RATE < concise < 1.5 * demo_model.CONCISE_FILLER_RATE
    assert 0.8 * demo_model.FILLER_RATE < long_winded < 1.2 * demo_model.FILLER_RATE
    assert long_winded > 3 * concise
