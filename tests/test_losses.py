"""Golden values for the three losses, and DisCo's mean-vs-sum reduction."""

from __future__ import annotations

import math

import pytest
import torch

from student_trainer.train.losses import (
    disco_mse,
    disco_sum_reference,
    infonce_logits,
    infonce_loss,
    seed_loss,
)


def test_infonce_hand_computed() -> None:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    k = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0]])
    # row 0: logits [1, 0]/0.5 = [2, 0] -> log(1 + e^-2); row 1: [0, 1]/0.5 = [0, 2] -> log(1 + e^2)
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0)))
    assert infonce_loss(q, k, queue, 0.5).item() == pytest.approx(expected, rel=1e-6)
    logits = infonce_logits(q, k, queue, 0.5)
    assert torch.equal(logits, torch.tensor([[2.0, 0.0], [0.0, 2.0]]))


def test_disco_hand_computed_and_sum_equivalence() -> None:
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    # squared distances 2 and 0 -> mean 1; DisCo's sum-reduced MSE -> 2
    assert disco_mse(s, t).item() == pytest.approx(1.0)
    assert disco_sum_reference(s, t).item() == pytest.approx(2.0)
    gen = torch.Generator().manual_seed(0)
    s = torch.nn.functional.normalize(torch.randn(32, 128, generator=gen), dim=1)
    t = torch.nn.functional.normalize(torch.randn(32, 128, generator=gen), dim=1)
    assert (32 * disco_mse(s, t)).item() == pytest.approx(
        disco_sum_reference(s, t).item(), rel=1e-5
    )


def test_seed_hand_computed() -> None:
    s = torch.tensor([[1.0, 0.0]])
    t = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0]])
    # both logit rows are [1, 0] at τ 1: the loss is the entropy of softmax([1, 0])
    p = math.e / (math.e + 1.0)
    expected = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert seed_loss(s, t, queue, 1.0, 1.0).item() == pytest.approx(expected, rel=1e-6)
    # a sharp teacher (τ_t -> 0) makes it InfoNCE of the student against [t | queue]
    sharp = seed_loss(s, t, queue, 0.5, 1e-4).item()
    assert sharp == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)


def test_distillation_gradients_reach_only_the_student() -> None:
    s = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    t = torch.nn.functional.normalize(torch.randn(4, 8), dim=1).requires_grad_(True)
    queue = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_(True)
    (disco_mse(s, t) + seed_loss(s, t, queue, 0.2, 0.1)).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None and queue.grad is None
