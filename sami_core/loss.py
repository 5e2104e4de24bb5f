"""The SAMI objective: a symmetric InfoNCE loss over an N×N log-prob matrix.

For one query with constitutions c_1..c_N and responses y_1..y_N (y_i sampled under c_i),
``L[i, j] = log p(y_j | x, c_i)``. The loss is the mean of two cross-entropies with the
diagonal as labels::

    row_loss = -1/N · Σ_i log softmax_j(L[i, :])[i]   # which response belongs to c_i
    col_loss = -1/N · Σ_j log softmax_i(L[:, j])[j]   # which constitution produced y_j
    loss     = (row_loss + col_loss) / 2

``log N - loss`` is a lower bound on the conditional mutual information I(Y; C | X) in
nats (the InfoNCE bound). A constant matrix gives loss = log N, so the bound is 0.
Leading dimensions (a batch of queries) are averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class SamiLossOutput:
    loss: torch.Tensor  # scalar, differentiable
    row_loss: torch.Tensor  # scalar
    col_loss: torch.Tensor  # scalar
    row_accuracy: torch.Tensor  # scalar in [0, 1]: argmax_j L[i, j] == i
    col_accuracy: torch.Tensor  # scalar in [0, 1]: argmax_i L[i, j] == j
    mi_lower_bound: torch.Tensor  # scalar, nats: log N - loss

    def metrics(self) -> dict[str, float]:
        return {
            "loss": float(self.loss.detach()),
            "row_loss": float(self.row_loss.detach()),
            "col_loss": float(self.col_loss.detach()),
            "row_accuracy": float(self.row_accuracy),
            "col_accuracy": float(self.col_accuracy),
            "mi_lower_bound": float(self.mi_lower_bound.detach()),
        }


def sami_loss(logprobs: torch.Tensor) -> SamiLossOutput:
    """Symmetric InfoNCE over ``logprobs`` of shape (..., N, N), N >= 2. See module doc."""
    if logprobs.dim() < 2 or logprobs.shape[-1] != logprobs.shape[-2]:
        raise ValueError(f"logprobs must have shape (..., N, N); got {tuple(logprobs.shape)}")
    n = logprobs.shape[-1]
    if n < 2:
        raise ValueError("logprobs: N must be >= 2 (a contrast needs two constitutions)")
    mat = logprobs.reshape(-1, n, n).float()  # (B, N, N)
    b = mat.shape[0]
    labels = torch.arange(n, device=mat.device).repeat(b)  # (B*N,)
    rows = mat.reshape(b * n, n)  # row i of query b: scores of responses under c_i
    cols = mat.transpose(1, 2).reshape(b * n, n)  # column j: scores of y_j under each c
    row_loss = F.cross_entropy(rows, labels)
    col_loss = F.cross_entropy(cols, labels)
    loss = (row_loss + col_loss) / 2
    with torch.no_grad():
        row_acc = (rows.argmax(-1) == labels).float().mean()
        col_acc = (cols.argmax(-1) == labels).float().mean()
    return SamiLossOutput(
        loss=loss,
        row_loss=row_loss,
        col_loss=col_loss,
        row_accuracy=row_acc,
        col_accuracy=col_acc,
        mi_lower_bound=math.log(n) - loss,
    )


def kl_to_reference(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """Sample estimate of KL(π || π_ref) on the diagonal (each response under its own
    constitution): mean over queries and i of ``L_π[i, i] - L_ref[i, i]``.

    The responses were sampled from the policy that generated this iteration's data, so
    this is the standard log-ratio (k1) estimator; with mean reduction it is per token.
    It is what the run logs as ``kl``; the loss uses :func:`kl_penalty`.
    """
    return _diagonal_log_ratio(policy_logprobs, reference_logprobs).mean()


def kl_penalty(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    """The KL term the loss adds: ``0.5 * mean((L_π[i, i] - L_ref[i, i])²)`` (the "k2" estimator).

    On responses sampled from the policy, its gradient ``E[log(π/π_ref) ∇log π]`` is the
    gradient of KL(π || π_ref), so it pulls the policy toward the reference from either
    side. The plain log-ratio (:func:`kl_to_reference`, logged as ``kl``) estimates the value
    but not the gradient: on fixed samples its gradient is ``∇log π`` of the samples, zero in
    expectation at the sampling policy and, once the policy has moved, a push *down* on the
    likelihood of its own samples (more entropy, not less drift)."""
    return 0.5 * _diagonal_log_ratio(policy_logprobs, reference_logprobs).square().mean()


def _diagonal_log_ratio(policy_logprobs: torch.Tensor, reference_logprobs: torch.Tensor) -> torch.Tensor:
    if policy_logprobs.shape != reference_logprobs.shape:
        raise ValueError(
            f"policy {tuple(policy_logprobs.shape)} and reference "
            f"{tuple(reference_logprobs.shape)} log-prob matrices differ in shape"
        )
    diag_p = torch.diagonal(policy_logprobs.float(), dim1=-2, dim2=-1)  # (..., N)
    diag_r = torch.diagonal(reference_logprobs.float(), dim1=-2, dim2=-1)
    return diag_p - diag_r
