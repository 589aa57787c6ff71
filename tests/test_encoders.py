"""Encoders: registry, shapes, width scaling, small stem, grouped head BN, torchvision parity."""

from __future__ import annotations

import pytest
import torch
from torchvision.models import resnet18

from store.errors import ConfigError
from teacher_service.encoders import (
    ARCHS,
    EncoderConfig,
    ProjectionHead,
    build_encoder,
    count_parameters,
)


def test_unknown_arch_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as exc:
        EncoderConfig(arch="resnet7")
    for name in ("resnet18", "tiny", "efficientnet_b0", "mobilenet_v3_small"):
        assert name in str(exc.value)


def test_config_round_trip_and_unknown_keys() -> None:
    cfg = EncoderConfig(arch="tiny", head_hidden=32, head_out=16, head_bn=True, bn_groups=2)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="bogus"):
        EncoderConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ConfigError):
        EncoderConfig(arch="efficientnet_b0", width=16)
    with pytest.raises(ConfigError):
        EncoderConfig(arch="tiny", bn_groups=0)


def test_tiny_outputs_and_normalisation() -> None:
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(arch="tiny", head_hidden=32, head_out=16, small_stem=True))
    enc.eval()
    x = torch.randn(4, 3, 16, 16)
    feat, emb = enc(x, output="both")
    assert feat.shape == (4, 64) and enc.feature_dim == 64
    assert emb.shape == (4, 16) and enc.embed_dim == 16
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(enc(x, output="feature"), feat)
    torch.testing.assert_close(enc(x), emb)
    with pytest.raises(ConfigError):
        enc(x, output="logits")


def test_no_head_embedding_is_normalised_feature() -> None:
    enc = build_encoder(EncoderConfig(arch="tiny", head=False)).eval()
    x = torch.randn(2, 3, 16, 16)
    assert enc.head is None and enc.embed_dim == enc.feature_dim
    torch.testing.assert_close(enc(x), torch.nn.functional.normalize(enc(x, "feature"), dim=1))


def test_small_stem_keeps_resolution() -> None:
    small = build_encoder(EncoderConfig(arch="tiny", small_stem=True))
    big = build_encoder(EncoderConfig(arch="tiny"))
    assert small.backbone.conv1.kernel_size == (3, 3) and small.backbone.conv1.stride == (1, 1)
    assert isinstance(small.backbone.maxpool, torch.nn.Identity)
    assert big.backbone.conv1.kernel_size == (7, 7)
    assert isinstance(big.backbone.maxpool, torch.nn.MaxPool2d)


def test_resnet18_width64_matches_torchvision_exactly() -> None:
    torch.manual_seed(0)
    ref = resnet18(weights=None).eval()
    enc = build_encoder(EncoderConfig(arch="resnet18", head=False)).eval()
    state = {k: v for k, v in ref.state_dict().items() if not k.startswith("fc.")}
    enc.backbone.load_state_dict(state, strict=True)
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        torch.testing.assert_close(enc(x, "feature"), ref(x), rtol=0, atol=0)
    assert count_parameters(enc) == count_parameters(ref)


def test_width_scales_channels() -> None:
    enc = build_encoder(EncoderConfig(arch="resnet50", width=8, head=False))
    assert enc.feature_dim == 8 * 8 * 4
    assert enc.backbone.layer1[0].conv3.out_channels == 32


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "efficientnet_b0"])
def test_torchvision_families_build(arch: str) -> None:
    enc = build_encoder(EncoderConfig(arch=arch, head_hidden=32, head_out=8, small_stem=True))
    enc.eval()
    emb = enc(torch.randn(2, 3, 16, 16))
    assert emb.shape == (2, 8)
    assert enc.feature_dim == {"mobilenet_v3_small": 576, "efficientnet_b0": 1280}[arch]


def test_registry_names() -> None:
    for name in ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        assert ARCHS[name].family == "resnet"
    assert ARCHS["tiny"].layers == (1, 1, 1, 1) and ARCHS["tiny"].width == 8


def test_grouped_head_bn_uses_group_statistics() -> None:
    torch.manual_seed(0)
    head = ProjectionHead(4, 6, 3, bn=True, bn_groups=2).train()
    x = torch.randn(8, 4)
    out = head(x)
    # Each half normalised alone equals running the head on that half alone.
    single = ProjectionHead(4, 6, 3, bn=True, bn_groups=1).train()
    single.load_state_dict(head.state_dict())
    torch.testing.assert_close(out[:4], single(x[:4]))
    torch.testing.assert_close(out[4:], single(x[4:]))
    assert not torch.allclose(out, single(x))
