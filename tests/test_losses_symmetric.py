"""The symmetric loss (``symmetric=True``): golden value, and what the MoCo module computes and
enqueues with it for mocov2, disco and seed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from student_trainer.train.losses import disco_mse, infonce_loss, seed_loss, symmetric_infonce_loss
from student_trainer.train.moco import MoCo
from student_trainer.train.models import build_student, student_config


def test_symmetric_infonce_hand_computed() -> None:
    q1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q2 = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    k1 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    k2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0]])
    # q1 vs k2 at τ 0.5: logits rows [2, 0] and [0, 2] -> (log(1 + e^-2) + log(1 + e^2)) / 2
    forward = 0.5 * (math.log1p(math.exp(-2.0)) + math.log1p(math.exp(2.0)))
    # q2 vs k1: rows [1, 1]/0.5 = [2, 2] and [0, 0] -> log 2 each
    backward = math.log(2.0)
    got = symmetric_infonce_loss(q1, q2, k1, k2, queue, 0.5).item()
    assert got == pytest.approx(0.5 * (forward + backward), rel=1e-6)
    # the two views play symmetric roles: swapping them gives the same loss
    swapped = symmetric_infonce_loss(q2, q1, k2, k1, queue, 0.5).item()
    assert swapped == pytest.approx(got, rel=1e-6)
    assert infonce_loss(q1, k2, queue, 0.5).item() == pytest.approx(forward, rel=1e-6)


def _moco(method: str, symmetric: bool) -> MoCo:
    torch.manual_seed(0)
    enc = build_student(student_config("tiny", 16, head_hidden=32, bn_groups=1, small_stem=True))
    m = MoCo(
        enc,
        method=method,
        queue_size=12,
        teacher_queue_size=12,
        temperature=0.2,
        distill_weight=8.0,
        shuffle_keys=False,
        symmetric=symmetric,
    )
    m.train()
    gen = torch.Generator().manual_seed(1)
    m.enqueue(
        F.normalize(torch.randn(12, 16, generator=gen), dim=1),
        F.normalize(torch.randn(12, 16, generator=gen), dim=1),
    )
    return m


def _inputs() -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(2)
    v1, v2 = torch.randn(4, 3, 16, 16, generator=gen), torch.randn(4, 3, 16, 16, generator=gen)
    t1 = F.normalize(torch.randn(4, 16, generator=gen), dim=1)
    t2 = F.normalize(torch.randn(4, 16, generator=gen), dim=1)
    return v1, v2, t1, t2


@pytest.mark.parametrize("method", ["mocov2", "disco"])
def test_symmetric_step_uses_both_directions_and_enqueues_both_keys(method: str) -> None:
    m = _moco(method, symmetric=True)
    v1, v2, t1, t2 = _inputs()
    queue = m.queue.clone()
    out = m(v1, v2, t1, t2)
    # the same quantities recomputed from the encoders (train-mode BN uses batch statistics)
    assert m.key is not None
    with torch.no_grad():
        q1, q2, k1, k2 = m.query(v1), m.query(v2), m.key(v1), m.key(v2)
        expected = symmetric_infonce_loss(q1, q2, k1, k2, queue, 0.2)
        if method == "disco":
            expected = expected + 8.0 * (disco_mse(q1, t1) + disco_mse(q2, t2))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.keys is not None and out.keys.shape == (8, 16)
    torch.testing.assert_close(out.keys, torch.cat([k2, k1]))
    out.loss.backward()  # before the enqueue (the queue is part of the graph), as in training
    assert all(p.grad is not None for p in m.query.parameters())
    m.enqueue(out.keys, out.teacher_keys)
    assert int(m.queue_ptr) == 8  # 2 x batch 4 keys per step


def test_asymmetric_step_is_unchanged() -> None:
    m = _moco("disco", symmetric=False)
    v1, v2, t1, t2 = _inputs()
    queue = m.queue.clone()
    out = m(v1, v2, t1, t2)
    assert m.key is not None
    with torch.no_grad():
        q1, q2, k2 = m.query(v1), m.query(v2), m.key(v2)
        expected = infonce_loss(q1, k2, queue, 0.2) + 8.0 * (disco_mse(q1, t1) + disco_mse(q2, t2))
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.keys is not None and out.keys.shape == (4, 16)


def test_symmetric_seed_enqueues_both_views_teacher_embeddings() -> None:
    sym, asym = _moco("seed", symmetric=True), _moco("seed", symmetric=False)
    v1, v2, t1, t2 = _inputs()
    bank = sym.teacher_queue.clone()
    a, b = sym(v1, v2, t1, t2), asym(v1, v2, t1, t2)
    # SEED's loss already averages both views: the option changes only the teacher queue
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-6)
    with torch.no_grad():
        s1, s2 = sym.query(v1), sym.query(v2)
        expected = 0.5 * (seed_loss(s1, t1, bank, 0.2, 1e-4) + seed_loss(s2, t2, bank, 0.2, 1e-4))
    assert a.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert a.teacher_keys is not None and b.teacher_keys is not None
    torch.testing.assert_close(a.teacher_keys, torch.cat([t1, t2]))
    torch.testing.assert_close(b.teacher_keys, t1)
