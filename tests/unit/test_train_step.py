"""A few SAMI steps on a fixed batch: the loss falls and every trainable parameter moves."""

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sami_core.logprobs import MatrixBatch
from sami_core.spec import TrainingSpec
from sami_core.train import batch_loss, build_optimizer, example_order, lr_lambda


def _tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).float()


def _batch(n: int = 3) -> MatrixBatch:
    g = torch.Generator().manual_seed(1)

    def ids(k):
        return torch.randint(3, 61, (k,), generator=g).tolist()

    prompts = [[ids(10 + i) for i in range(n)], [ids(7 + 2 * i) for i in range(n)]]
    responses = [[ids(4 + i) for i in range(n)], [ids(6 - i) for i in range(n)]]
    return MatrixBatch(prompts, responses)


@pytest.mark.parametrize("optimizer", ["adamw", "rmsprop"])
def test_steps_lower_loss_and_change_every_parameter(optimizer):
    model = _tiny_model()
    model.train()
    cfg = TrainingSpec(optimizer=optimizer, lr=3e-3, logprob_impl="prefix")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = build_optimizer(model.parameters(), cfg)
    batch = _batch()
    losses = []
    for _ in range(6):
        loss, metrics, L = batch_loss(model, batch, cfg, pad_token_id=0)
        assert L.shape == (2, 3, 3)
        assert metrics["mi_lower_bound"] == pytest.approx(math.log(3) - metrics["loss"], abs=1e-5)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(metrics["loss"])
    assert losses[-1] < losses[0] - 0.05, losses
    unchanged = [n for n, p in model.named_parameters() if torch.equal(p.detach(), before[n])]
    assert unchanged == []


def test_kl_term_is_added_with_beta():
    model, ref = _tiny_model(0), _tiny_model(1)
    batch = _batch(2)
    cfg0 = TrainingSpec(lr=1e-3, beta=0.0)
    cfg1 = TrainingSpec(lr=1e-3, beta=0.5)
    l0, m0, _ = batch_loss(model, batch, cfg0, 0, reference=ref)
    l1, m1, _ = batch_loss(model, batch, cfg1, 0, reference=ref)
    assert "kl" not in m0 and "kl" in m1
    assert l1.item() == pytest.approx(l0.item() + 0.5 * m1["kl_penalty"], abs=1e-5)


def test_example_order_is_a_permutation_per_epoch_and_pure():
    a = example_order(7, seed=3, start=0, count=14)
    assert sorted(a[:7]) == list(range(7)) and sorted(a[7:]) == list(range(7))
    assert example_order(7, seed=3, start=5, count=4) == a[5:9]
    assert example_order(7, seed=4, start=0, count=7) != a[:7]


def test_lr_schedule_warmup_and_decay():
    f = lr_lambda(TrainingSpec(lr=1.0, warmup_steps=2, lr_schedule="linear"), max_steps=10)
    assert [round(f(s), 3) for s in (0, 1, 2, 6, 10)] == [0.5, 1.0, 1.0, 0.5, 0.0]
    c = lr_lambda(TrainingSpec(lr=1.0, lr_schedule="cosine"), max_steps=4)
    assert c(0) == pytest.approx(1.0) and c(2) == pytest.approx(0.5) and c(4) == pytest.approx(0.0)
