"""Checkpoints: project format round trip, MoCo-v2 published layout, torchvision, refusals."""

from __future__ import annotations

import argparse
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18

from store.errors import CheckpointError
from teacher_service.checkpoint import file_sha256, load_encoder, save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder

PRE = {
    "size": 16,
    "mean": [0.5] * 3,
    "std": [0.25] * 3,
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": "mocov2",
}


class Custom:
    """A class a weights-only unpickler must refuse."""

    def __init__(self) -> None:
        self.x = 1


def _tiny(seed: int = 0, **kw: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    cfg = EncoderConfig(arch="tiny", head_hidden=32, head_out=16, small_stem=True, **kw)  # type: ignore[arg-type]
    enc = build_encoder(cfg)
    # Non-trivial BN running statistics so eval-mode loading is really checked.
    enc.train()
    with torch.no_grad():
        enc(torch.randn(8, 3, 16, 16))
    return enc.eval()


def test_project_format_round_trip(tmp_path: Path) -> None:
    enc = _tiny(head_bn=True)
    path = tmp_path / "t.pt"
    sha = save_checkpoint(path, enc, PRE, train={"epochs": 3}, meta={"note": "x"})
    assert sha == file_sha256(path)
    assert not list(tmp_path.glob(".*.tmp"))
    loaded = load_encoder(path)
    info = loaded.info
    assert info["format"] == "disco" and info["sha256"] == sha and info["arch"] == "tiny"
    assert info["embedding"] == "head" and info["bn_mode"] == "eval"
    assert info["head"] == {"hidden": 32, "out": 16, "bn": True, "bn_groups": 1}
    assert info["preprocessing"]["size"] == 16 and info["small_stem"] is True
    assert not loaded.encoder.training
    x = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encoder(x), enc(x), rtol=0, atol=0)


def test_half_checkpoint_loads_as_fp32(tmp_path: Path) -> None:
    enc = _tiny()
    full = tmp_path / "f.pt"
    half = tmp_path / "h.pt"
    save_checkpoint(full, enc, PRE)
    save_checkpoint(half, enc, PRE, half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    raw = torch.load(half, weights_only=True)
    assert raw["state_dict"]["backbone.conv1.weight"].dtype == torch.float16
    loaded = load_encoder(half).encoder
    assert loaded.backbone.conv1.weight.dtype == torch.float32
    x = torch.randn(2, 3, 16, 16)
    with torch.inference_mode():
        cos = (loaded(x) * enc(x)).sum(1)
    assert torch.all(cos > 0.999)


def _moco_checkpoint(enc: torch.nn.Module) -> dict:
    """The layout FAIR moco/main_moco.py saves: DDP-wrapped MoCo(mlp=True).state_dict()."""
    sd: OrderedDict[str, torch.Tensor] = OrderedDict()
    for k, v in enc.backbone.state_dict().items():
        sd[f"module.encoder_q.{k}"] = v.clone()
    sd["module.encoder_q.fc.0.weight"] = enc.head.fc1.weight.detach().clone()
    sd["module.encoder_q.fc.0.bias"] = enc.head.fc1.bias.detach().clone()
    sd["module.encoder_q.fc.2.weight"] = enc.head.fc2.weight.detach().clone()
    sd["module.encoder_q.fc.2.bias"] = enc.head.fc2.bias.detach().clone()
    for k, v in list(sd.items()):
        sd[k.replace("encoder_q", "encoder_k")] = torch.randn_like(v.float()).to(v.dtype)
    sd["module.queue"] = torch.randn(16, 64)
    sd["module.queue_ptr"] = torch.zeros(1, dtype=torch.long)
    return {
        "epoch": 200,
        "arch": "resnet10",
        "state_dict": sd,
        "optimizer": {"state": {}, "param_groups": [{"lr": 0.03, "params": [0, 1]}]},
    }


def test_mocov2_layout_loads_and_matches(tmp_path: Path) -> None:
    enc = _tiny(seed=1)
    path = tmp_path / "moco_v2_200ep_pretrain.pth.tar"
    torch.save(_moco_checkpoint(enc), path)
    loaded = load_encoder(path)
    assert loaded.info["format"] == "mocov2"
    assert loaded.info["head"] == {"hidden": 32, "out": 16, "bn": False, "bn_groups": 1}
    assert loaded.info["small_stem"] is True and loaded.info["width"] == 8
    x = torch.randn(4, 3, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(loaded.encoder(x), enc(x), rtol=0, atol=0)
        torch.testing.assert_close(loaded.encoder(x, "feature"), enc(x, "feature"), rtol=0, atol=0)


def test_mocov2_missing_and_mismatched_keys_are_named(tmp_path: Path) -> None:
    ckpt = _moco_checkpoint(_tiny())
    del ckpt["state_dict"]["module.encoder_q.layer2.0.conv1.weight"]
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"layer2\.0\.conv1\.weight"):
        load_encoder(path)
    ckpt = _moco_checkpoint(_tiny())
    ckpt["state_dict"]["module.encoder_q.layer3.0.bn1.weight"] = torch.ones(5)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"shape mismatch.*layer3\.0\.bn1\.weight"):
        load_encoder(path)


def test_torchvision_state_dict_uses_backbone_embedding(tmp_path: Path) -> None:
    torch.manual_seed(0)
    ref = resnet18(weights=None).eval()
    path = tmp_path / "resnet18.pth"
    torch.save(ref.state_dict(), path)
    loaded = load_encoder(path)
    assert loaded.info["format"] == "torchvision" and loaded.info["arch"] == "resnet18"
    assert loaded.info["embedding"] == "backbone" and loaded.info["head"] is None
    assert loaded.info["embed_dim"] == 512
    ref.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        want = torch.nn.functional.normalize(ref(x), dim=1)
        torch.testing.assert_close(loaded.encoder(x), want)


def test_pickled_custom_class_is_refused(tmp_path: Path) -> None:
    enc = _tiny()
    for i, extra in enumerate([Custom(), argparse.Namespace(lr=0.1)]):
        path = tmp_path / f"evil{i}.pt"
        torch.save({"state_dict": enc.state_dict(), "args": extra}, path)
        with pytest.raises(CheckpointError, match="arbitrary unpickling"):
            load_encoder(path)


def test_missing_file_and_unknown_layout(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_encoder(tmp_path / "nope.pt")
    path = tmp_path / "odd.pt"
    torch.save({"weights": [1, 2, 3]}, path)
    with pytest.raises(CheckpointError, match="unknown checkpoint layout"):
        load_encoder(path)
