"""MoCo's InfoNCE: one positive key per query against a queue of negative keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["infonce_logits", "infonce_loss", "symmetric_infonce_loss"]


def infonce_logits(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Logits ``(B, 1 + K)``: column 0 is ``q·k`` (positive), then ``q·queue`` (negatives), / τ.

    ``q`` ``(B, D)`` and ``k`` ``(B, D)`` are L2-normalised float tensors (``k`` carries no
    gradient in MoCo); ``queue`` is ``(K, D)`` (one key per row, also L2-normalised).
    """
    l_pos = (q * k).sum(dim=1, keepdim=True)
    l_neg = q @ queue.t()
    return torch.cat([l_pos, l_neg], dim=1) / temperature


def infonce_loss(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Scalar mean over the batch of ``-log softmax(logits)[0]`` (MoCo-v2's cross-entropy).

    Shapes as :func:`infonce_logits`; returns a 0-d float tensor in nats.
    """
    logits = infonce_logits(q, k, queue, temperature)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return F.cross_entropy(logits, labels)


def symmetric_infonce_loss(
    q1: torch.Tensor,
    q2: torch.Tensor,
    k1: torch.Tensor,
    k2: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Both directions of InfoNCE, averaged: ``(L(q1, k2) + L(q2, k1)) / 2`` (nats, 0-d).

    ``q1``/``q2`` ``(B, D)``: queries of view 1 / view 2; ``k1``/``k2`` ``(B, D)``: keys of the
    same views (no gradient); ``queue`` ``(K, D)``: negatives shared by both directions. The mean
    (not MoCo's CIFAR demo's sum) keeps the loss and its gradient scale comparable to
    :func:`infonce_loss`, so the learning rate needs no change.
    """
    return 0.5 * (
        infonce_loss(q1, k2, queue, temperature) + infonce_loss(q2, k1, queue, temperature)
    )
