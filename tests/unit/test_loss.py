import math

import pytest
import torch

from sami_core.loss import kl_penalty, kl_to_reference, sami_loss


def _ce(logits: list[float], label: int) -> float:
    """-log softmax(logits)[label], written out."""
    return -(logits[label] - math.log(sum(math.exp(x) for x in logits)))


def test_constant_matrix_gives_log_n():
    for n in (2, 3, 5, 8):
        out = sami_loss(torch.full((n, n), -3.7))
        assert out.loss.item() == pytest.approx(math.log(n), abs=1e-6)
        assert out.mi_lower_bound.item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_2x2():
    L = [[-1.0, -3.0], [-2.5, -0.5]]
    rows = (_ce([-1.0, -3.0], 0) + _ce([-2.5, -0.5], 1)) / 2
    cols = (_ce([-1.0, -2.5], 0) + _ce([-3.0, -0.5], 1)) / 2
    expected = (rows + cols) / 2
    # the numbers themselves, so a wrong formula cannot hide behind a shared helper
    assert rows == pytest.approx(0.1269280110429725, abs=1e-9)
    assert cols == pytest.approx(0.14015150613765104, abs=1e-9)
    out = sami_loss(torch.tensor(L))
    assert out.loss.item() == pytest.approx(expected, abs=1e-6)
    assert out.row_loss.item() == pytest.approx(rows, abs=1e-6)
    assert out.col_loss.item() == pytest.approx(cols, abs=1e-6)
    assert out.row_accuracy.item() == 1.0 and out.col_accuracy.item() == 1.0
    assert out.mi_lower_bound.item() == pytest.approx(math.log(2) - expected, abs=1e-6)


def test_hand_computed_3x3_with_wrong_argmax():
    L = [[-1.0, -2.0, -3.0], [-0.2, -1.5, -2.0], [-3.0, -1.0, -0.5]]
    rows = (_ce(L[0], 0) + _ce(L[1], 1) + _ce(L[2], 2)) / 3
    cols_t = [[L[i][j] for i in range(3)] for j in range(3)]
    cols = (_ce(cols_t[0], 0) + _ce(cols_t[1], 1) + _ce(cols_t[2], 2)) / 3
    out = sami_loss(torch.tensor(L))
    assert out.loss.item() == pytest.approx((rows + cols) / 2, abs=1e-6)
    # row 1 picks column 0 (2 of 3 rows right); columns 0 and 1 pick the wrong row (1 of 3)
    assert out.row_accuracy.item() == pytest.approx(2 / 3)
    assert out.col_accuracy.item() == pytest.approx(1 / 3)


def test_transposition_invariance_and_batch_mean():
    g = torch.Generator().manual_seed(0)
    L = torch.randn(4, 3, 3, generator=g)
    assert sami_loss(L).loss.item() == pytest.approx(sami_loss(L.transpose(-1, -2)).loss.item(), abs=1e-6)
    per = [sami_loss(L[b]).loss.item() for b in range(4)]
    assert sami_loss(L).loss.item() == pytest.approx(sum(per) / 4, abs=1e-6)
    # extra leading dims are averaged the same way
    assert sami_loss(L.reshape(2, 2, 3, 3)).loss.item() == pytest.approx(sum(per) / 4, abs=1e-6)


def test_diagonal_dominance_lowers_loss_and_gradient_direction():
    L = torch.zeros(3, 3, requires_grad=True)
    sami_loss(L).loss.backward()
    # raising the diagonal lowers the loss: gradient negative on the diagonal, positive off it
    assert (torch.diagonal(L.grad) < 0).all()
    assert (L.grad - torch.diag(torch.diagonal(L.grad)) >= 0).all()


def test_bad_shapes():
    with pytest.raises(ValueError, match="N, N"):
        sami_loss(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=">= 2"):
        sami_loss(torch.zeros(1, 1))


def test_kl_to_reference_diagonal():
    p = torch.tensor([[-1.0, -5.0], [-4.0, -2.0]])
    r = torch.tensor([[-1.5, 0.0], [0.0, -2.5]])
    assert kl_to_reference(p, r).item() == pytest.approx(((-1.0 + 1.5) + (-2.0 + 2.5)) / 2)
    with pytest.raises(ValueError):
        kl_to_reference(p, r[:1])


def test_kl_penalty_pulls_the_policy_toward_the_reference_from_either_side():
    """The loss's KL term: zero where the policy equals the reference, and its gradient
    lowers a log-prob above the reference's and raises one below it (the plain log-ratio's
    gradient would lower both)."""
    r = torch.tensor([[[-1.0, -3.0], [-3.0, -2.0]]])
    assert kl_penalty(r.clone(), r).item() == 0.0
    p = torch.tensor([[[-0.5, -3.0], [-3.0, -2.5]]], requires_grad=True)  # diagonal: above, below
    kl_penalty(p, r).backward()
    diag = torch.diagonal(p.grad[0])
    assert diag[0] > 0 > diag[1]  # descent: the first falls, the second rises
    assert kl_penalty(p.detach(), r).item() == pytest.approx(0.5 * (0.5 ** 2 + 0.5 ** 2) / 2)
    with pytest.raises(ValueError, match="differ in shape"):
        kl_penalty(p, r[:, :1])
