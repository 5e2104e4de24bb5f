"""Batched generation on the demo model: order, greedy equivalences, seeds, load errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sami_core.demo_model import DATA_DIR
from sami_core.errors import ModelLoadError
from sami_core.generation import (
    GenerationConfig,
    available_backends,
    generate_texts,
    load_model_and_tokenizer,
)
from tests.greedy import assert_greedy


@pytest.fixture(scope="module")
def model_tok(demo_model_dir: Path):
    return load_model_and_tokenizer(str(demo_model_dir))


@pytest.fixture(scope="module")
def prompts() -> list[str]:
    """Five prompts of different lengths, so that batches are padded."""
    posts = [json.loads(line)["post"] for line in (DATA_DIR / "posts.jsonl").read_text().splitlines()[:5]]
    return [f"POST: {p[: 80 + 60 * i]}\n\nTL;DR:" for i, p in enumerate(posts)]


def run(model_tok, prompts, **config) -> list[tuple[int, str, int]]:
    model, tok = model_tok
    return list(generate_texts(model, tok, prompts, GenerationConfig(**config)))


def test_load(model_tok):
    model, tok = model_tok
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert not model.training and str(next(model.parameters()).device) == "cpu"


def test_results_in_prompt_order_with_progress(model_tok, prompts):
    model, tok = model_tok
    calls = []
    out = list(generate_texts(model, tok, prompts, GenerationConfig(max_new_tokens=4, batch_size=2),
                              on_batch=lambda done, total: calls.append((done, total))))
    assert [i for i, _, _ in out] == [0, 1, 2, 3, 4]
    assert calls == [(2, 5), (4, 5), (5, 5)]
    assert all(isinstance(text, str) and 0 <= n <= 4 for _, text, n in out)
    assert list(generate_texts(model, tok, [], GenerationConfig())) == []


def test_greedy_batched_and_one_at_a_time_are_both_greedy(model_tok, prompts):
    """Left-padded batches decode as each prompt alone would: every token of both runs is
    the most likely next token of its own unpadded prompt (tests/greedy.py replays them
    with full forward passes). Their texts may differ only where two logits are tied to
    within rounding: padding changes the kernels' shapes, so the last bits may differ."""
    model, tok = model_tok
    batched = run(model_tok, prompts, temperature=0, max_new_tokens=16, batch_size=5)
    single = run(model_tok, prompts, temperature=0, max_new_tokens=16, batch_size=1)
    assert [i for i, _, _ in batched] == [i for i, _, _ in single] == list(range(len(prompts)))
    for out in (batched, single):
        assert_greedy(model, tok, prompts, [(text, n) for _, text, n in out], max_new_tokens=16)


def test_temperature_zero_is_greedy(model_tok, prompts):
    """Each token is the argmax of a full forward pass (no cache, no padding), up to a
    near-tie; the seed plays no part (the same batch layout in one process: the same texts)."""
    model, tok = model_tok
    out = run(model_tok, prompts, temperature=0, max_new_tokens=12, seed=0)
    assert_greedy(model, tok, prompts, [(text, n) for _, text, n in out], max_new_tokens=12)
    assert run(model_tok, prompts, temperature=0, max_new_tokens=12, seed=1) == out


def test_the_greedy_check_rejects_sampled_text(model_tok, prompts):
    """tests/greedy.py can fail: samples at temperature 1 are not greedy completions."""
    model, tok = model_tok
    sampled = run(model_tok, prompts, temperature=1.0, max_new_tokens=12, batch_size=5, seed=7)
    with pytest.raises(AssertionError, match="not a greedy completion"):
        assert_greedy(model, tok, prompts, [(text, n) for _, text, n in sampled], max_new_tokens=12)


def test_sampling_reproducible_for_a_seed(model_tok, prompts):
    import torch

    state = torch.get_rng_state()
    a = run(model_tok, prompts, temperature=1.0, max_new_tokens=12, batch_size=2, seed=7)
    b = run(model_tok, prompts, temperature=1.0, max_new_tokens=12, batch_size=2, seed=7)
    c = run(model_tok, prompts, temperature=1.0, max_new_tokens=12, batch_size=2, seed=8)
    assert a == b and a != c
    assert torch.get_rng_state().equal(state)  # the caller's RNG is left alone


def test_resume_at_a_batch_boundary_gives_the_same_texts(model_tok, prompts):
    model, tok = model_tok
    config = GenerationConfig(temperature=1.0, top_p=0.9, max_new_tokens=10, batch_size=2, seed=3)
    full = list(generate_texts(model, tok, prompts, config))
    rest = list(generate_texts(model, tok, prompts[2:], config, start_index=2))
    assert rest == full[2:]


def test_ignore_eos_generates_max_new_tokens(model_tok, prompts):
    out = run(model_tok, prompts, temperature=1.0, max_new_tokens=9, batch_size=5, ignore_eos=True)
    assert [n for _, _, n in out] == [9] * 5


def test_chat_prompt_gets_no_second_bos(model_tok):
    from sami_core.generation import _encode

    _, tok = model_tok
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    plain, templated = _encode(tok, ["USER: hi", chat])
    assert plain.count(tok.bos_token_id) == 1 and templated.count(tok.bos_token_id) == 1


def test_missing_path_raises_model_load_error(tmp_path: Path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer(str(missing))
    assert str(missing) in str(err.value) and "make-demo-model" in str(err.value)


def test_uncached_hub_id_raises_model_load_error_offline():
    with pytest.raises(ModelLoadError) as err:
        load_model_and_tokenizer("sami-tests-nobody/no-such-model")
    assert "sami-tests-nobody/no-such-model" in str(err.value) and "download" in str(err.value)


def test_config_validation():
    for bad in (dict(temperature=-0.1), dict(top_p=0), dict(top_p=1.5), dict(max_new_tokens=0), dict(batch_size=0)):
        with pytest.raises(ValueError):
            GenerationConfig(**bad)


def test_backends():
    assert available_backends()[0] == "hf"
