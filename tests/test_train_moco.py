"""MoCo module, schedule and config: queues, momentum, shuffle-BN, gradient flow, checks."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from store.errors import ConfigError
from student_trainer.train.config import TrainConfig
from student_trainer.train.methods import METHODS, MethodSpec, get_method
from student_trainer.train.moco import MoCo, effective_queue_size
from student_trainer.train.models import build_student, deployed_backbone, student_config
from student_trainer.train.schedule import cosine_lr, scaled_lr
from teacher_service.encoders import count_parameters


def _moco(method: str, **kw: object) -> MoCo:
    torch.manual_seed(0)
    enc = build_student(student_config("tiny", 16, head_hidden=32, bn_groups=2, small_stem=True))
    return MoCo(enc, method=method, queue_size=12, teacher_queue_size=12, **kw)  # type: ignore[arg-type]


def test_cosine_schedule_values() -> None:
    assert cosine_lr(0, 100, 1.0, warmup_steps=10) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(10, 100, 1.0, warmup_steps=10) == pytest.approx(1.0)
    assert cosine_lr(55, 100, 1.0, warmup_steps=10) == pytest.approx(0.5)
    assert cosine_lr(100, 100, 1.0, warmup_steps=10) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lr(25, 100, 2.0) == pytest.approx(1.0 + math.cos(math.pi / 4))
    assert scaled_lr(0.03, 512) == pytest.approx(0.06)


def test_config_checks_and_registry() -> None:
    with pytest.raises(ConfigError, match="mocov2"):
        TrainConfig(method="simclr", arch="tiny", out="x", dataset="digits")
    with pytest.raises(ConfigError, match="a store or a dataset"):
        TrainConfig(method="mocov2", arch="tiny", out="x")
    with pytest.raises(ConfigError, match="teacher"):
        TrainConfig(method="disco", arch="tiny", out="x", dataset="digits")
    cfg = TrainConfig(method="mocov2", arch="tiny", out="x", dataset="mnist5k", batch_size=512)
    assert cfg.peak_lr == pytest.approx(0.06)
    assert cfg.resolved_recipe() == "digits"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        TrainConfig.from_dict(cfg.to_dict() | {"bogus": 1})


def test_queue_cap() -> None:
    assert effective_queue_size(65536, 4000, 128) == 3872
    assert effective_queue_size(1024, 4000, 128) == 1024


def test_ring_queue_wraps_and_counts() -> None:
    m = _moco("mocov2")
    assert not m.queue_full()
    m.enqueue(torch.ones(8, 16))
    m.enqueue(2 * torch.ones(8, 16))  # 16 keys into 12 slots: wraps
    assert m.queue_full() and int(m.queue_ptr) == 4
    assert torch.all(m.queue[:4] == 2) and torch.all(m.queue[4:8] == 1)


def test_momentum_update_is_ema() -> None:
    m = _moco("mocov2")
    assert m.key is not None
    with torch.no_grad():
        for p in m.query.parameters():
            p.add_(1.0)
    before = [p.clone() for p in m.key.parameters()]
    m.momentum_update(0.9)
    for p_k, p_old, p_q in zip(m.key.parameters(), before, m.query.parameters(), strict=True):
        torch.testing.assert_close(p_k, 0.9 * p_old + 0.1 * p_q)


def test_shuffled_keys_come_back_in_input_order() -> None:
    m = _moco("mocov2", shuffle_keys=True)
    assert m.key is not None and m.key.head is not None
    m.key.head.bn_groups = 1  # one group: shuffling must not change any key
    x = torch.randn(8, 3, 16, 16)
    m.train()
    shuffled = m.encode_keys(x, shuffle_seed=3)
    m.shuffle_keys = False
    plain = m.encode_keys(x, shuffle_seed=3)
    torch.testing.assert_close(shuffled, plain, rtol=1e-4, atol=1e-5)
    m.key.head.bn_groups = 2  # with groups the shuffle changes which images share BN statistics
    m.shuffle_keys = True
    assert not torch.allclose(m.encode_keys(x, shuffle_seed=3), m.encode_keys(x, 4), atol=1e-6)


@pytest.mark.parametrize("method", ["mocov2", "disco", "seed"])
def test_step_gradients_reach_only_the_query_encoder(method: str) -> None:
    m = _moco(method)
    m.train()
    m.enqueue(torch.nn.functional.normalize(torch.randn(12, 16), dim=1),
              torch.nn.functional.normalize(torch.randn(12, 16), dim=1))  # fmt: skip
    t1 = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    t2 = torch.nn.functional.normalize(torch.randn(8, 16), dim=1).requires_grad_(True)
    out = m(torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16), t1, t2, shuffle_seed=0)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    expected_terms = {"mocov2": {"infonce"}, "disco": {"infonce", "distill", "mse"}}
    assert set(out.terms) == expected_terms.get(method, {"seed"})
    assert all(p.grad is not None for p in m.query.parameters())
    if m.key is not None:
        assert all(p.grad is None and not p.requires_grad for p in m.key.parameters())
    assert t1.grad is None and t2.grad is None
    assert m.queue.grad is None and m.teacher_queue.grad is None
    if method == "disco":
        assert out.terms["distill"].item() == pytest.approx(8.0 * out.terms["mse"].item())


def test_deployed_backbone_drops_the_head() -> None:
    enc = build_student(student_config("tiny", 16, head_hidden=64, small_stem=True))
    dep = deployed_backbone(enc)
    assert dep.head is None
    assert count_parameters(dep) == count_parameters(enc.backbone) < count_parameters(enc)
    x = torch.randn(2, 3, 16, 16)
    enc.eval()
    dep.eval()
    torch.testing.assert_close(dep(x, output="feature"), enc(x, output="feature"))


def test_method_registry_drives_the_module() -> None:
    """Each registered spec decides the key encoder, the queues and the summed loss terms; an
    unknown name fails loudly with the valid ones; specs are frozen and self-consistent."""
    assert set(METHODS) == {"mocov2", "disco", "seed"}
    with pytest.raises(ConfigError, match="unknown method 'byol'; valid methods: disco, mocov2"):
        get_method("byol")
    for name, spec in METHODS.items():
        m = _moco(name)
        assert m.spec is spec and spec.name == name and spec.help
        assert (m.key is not None) == spec.uses_contrast
        assert (m.teacher_queue.shape[0] == 12) == spec.uses_teacher_queue
        cfg_kw = {"store": "s.zarr"} if spec.uses_teacher else {"dataset": "digits"}
        assert TrainConfig(method=name, arch="tiny", out="x", **cfg_kw).spec is spec
    with pytest.raises(dataclasses.FrozenInstanceError):
        METHODS["disco"].uses_contrast = False  # type: ignore[misc]
    with pytest.raises(ValueError, match="teacher loss exactly when"):
        MethodSpec("broken", "x", uses_contrast=True, uses_teacher=True,
                   uses_teacher_queue=False, loss_terms=("infonce",))  # fmt: skip


def test_loss_is_the_sum_of_the_specs_terms() -> None:
    """The total loss is exactly the spec's loss terms summed in order (golden: DisCo = InfoNCE +
    λ·MSE with MSE from disco_mse; SEED = mean of both views' seed_loss)."""
    from student_trainer.train.losses import disco_mse, seed_loss

    t = [torch.nn.functional.normalize(torch.randn(8, 16), dim=1) for _ in range(2)]
    v = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    for name in METHODS:
        m = _moco(name).eval()
        m.enqueue(torch.nn.functional.normalize(torch.randn(12, 16), dim=1), t[0][:4].repeat(3, 1))
        with torch.no_grad():
            out = m(v[0], v[1], t[0], t[1], shuffle_seed=0)
            q1, q2 = m.query(v[0]), m.query(v[1])
        expected = torch.zeros(())
        for term in METHODS[name].loss_terms:
            expected = expected + out.terms[term]
        assert torch.equal(out.loss, expected)
        if name == "disco":
            mse = disco_mse(q1, t[0]) + disco_mse(q2, t[1])
            torch.testing.assert_close(out.terms["mse"], mse)
            torch.testing.assert_close(out.terms["distill"], 8.0 * mse)
        if name == "seed":
            s = [
                seed_loss(q, tt, m.teacher_queue, 0.2, 1e-4)
                for q, tt in zip((q1, q2), t, strict=True)
            ]
            torch.testing.assert_close(out.terms["seed"], 0.5 * (s[0] + s[1]))
            torch.testing.assert_close(out.teacher_keys, t[0])
        else:
            assert out.teacher_keys is None
