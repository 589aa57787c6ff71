"""Tiny random-initialised teachers of every source, saved to local files (nothing downloads).

Each builder returns ``(spec, weights, reference)``: the ``--teacher`` spelling, the
``--teacher-weights`` path, and ``reference(pixels)``: the library's own forward on the same uint8
pixels normalised with the model's own mean/std, L2-normalised ``(B, D)``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

SIZE = 32
Reference = Callable[[torch.Tensor], torch.Tensor]
Zoo = dict[str, tuple[str, str, Reference]]

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))

FACTORY = """
import torch
from torch import nn


def make():
    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(8, 12),
    )
    return net, {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "size": 32}
"""


def normalised(
    pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - m) / s


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.float(), dim=1)


def timm_vit(root: Path) -> tuple[str, str, Reference]:
    """timm ViT-Tiny layout at 32 px, patch 8, 2 blocks, saved in timm's hub folder layout."""
    import timm
    from timm.models._hub import save_for_hf

    torch.manual_seed(1)
    args = {"img_size": SIZE, "patch_size": 8, "depth": 2}
    model = timm.create_model("vit_tiny_patch16_224", num_classes=0, **args).eval()
    folder = root / "vit_tiny"
    save_for_hf(model, str(folder), model_args=args, safe_serialization=True)
    cfg = timm.data.resolve_model_data_config(model)

    def ref(px: torch.Tensor) -> torch.Tensor:
        x = normalised(px, cfg["mean"], cfg["std"])
        return _unit(model.forward_head(model.forward_features(x), pre_logits=True))

    return "timm:vit_tiny_patch16_224", str(folder), ref


def timm_cnn(root: Path) -> tuple[str, str, Reference]:
    """timm MobileNet-v3 (0.5x), weights as one .safetensors file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model("mobilenetv3_small_050", num_classes=0).eval()
    path = root / "mnv3.safetensors"
    save_file(model.state_dict(), str(path))
    cfg = timm.data.resolve_model_data_config(model)

    def ref(px: torch.Tensor) -> torch.Tensor:
        x = normalised(px, cfg["mean"], cfg["std"])
        return _unit(model.forward_head(model.forward_features(x), pre_logits=True))

    return "timm:mobilenetv3_small_050", str(path), ref


def hf_dinov2(root: Path) -> tuple[str, str, Reference]:
    """transformers Dinov2Model from a tiny config: a snapshot folder with its processor config."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(3)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
    )
    model = Dinov2Model(cfg).eval()
    folder = root / "dinov2_tiny"
    model.save_pretrained(str(folder))
    processor = {
        "image_processor_type": "BitImageProcessor",
        "image_mean": list(IMAGENET[0]),
        "image_std": list(IMAGENET[1]),
        "do_center_crop": True,
        "crop_size": {"height": SIZE, "width": SIZE},
        "size": {"shortest_edge": SIZE},
        "resample": 3,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(processor))

    def ref(px: torch.Tensor) -> torch.Tensor:
        return _unit(model(pixel_values=normalised(px, *IMAGENET)).pooler_output)

    return "hf:tiny/dinov2", str(folder), ref


def hf_clip(root: Path) -> tuple[str, str, Reference]:
    """transformers CLIPVisionModelWithProjection: config folder + a .safetensors state dict."""
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(4)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=SIZE,
        patch_size=8,
        projection_dim=16,
    )
    model = CLIPVisionModelWithProjection(cfg).eval()
    cfg_dir = root / "clip_config"
    cfg.save_pretrained(str(cfg_dir))
    path = root / "clip_vision.safetensors"
    save_file(model.state_dict(), str(path))

    def ref(px: torch.Tensor) -> torch.Tensor:
        return _unit(model(pixel_values=normalised(px, *CLIP)).image_embeds)

    return f"hf:{cfg_dir}", str(path), ref


def open_clip_tiny(root: Path) -> tuple[str, str, Reference]:
    """open_clip CLIP from a tiny custom model config (.json), the whole model's state dict."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 32, "head_width": 16,
                       "patch_size": 8},
        "text_cfg": {"context_length": 16, "vocab_size": 100, "width": 32, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    cfg_path = root / "tinyclip.json"
    cfg_path.write_text(json.dumps(config))
    open_clip.add_model_config(cfg_path)
    torch.manual_seed(6)
    model = open_clip.create_model("tinyclip", load_weights=False).eval()
    path = root / "tinyclip.pth"
    torch.save(model.state_dict(), path)

    def ref(px: torch.Tensor) -> torch.Tensor:
        return _unit(model.encode_image(normalised(px, *CLIP)))

    return f"open_clip:{cfg_path}", str(path), ref


def py_factory(root: Path) -> tuple[str, str, Reference]:
    """A user's own factory module (importable from ``root``), weights as .pth."""
    (root / "my_teacher_factory.py").write_text(FACTORY)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import my_teacher_factory

    net, pre = my_teacher_factory.make()
    torch.manual_seed(7)
    for p in net.parameters():  # weights that differ from the factory's own init
        nn.init.normal_(p, std=0.2)
    net.eval()
    path = root / "factory.pth"
    torch.save(net.state_dict(), path)

    def ref(px: torch.Tensor) -> torch.Tensor:
        return _unit(net(normalised(px, pre["mean"], pre["std"])))

    return "py:my_teacher_factory:make", str(path), ref


BUILDERS = {
    "timm_vit": timm_vit,
    "timm_cnn": timm_cnn,
    "hf_dinov2": hf_dinov2,
    "hf_clip": hf_clip,
    "open_clip": open_clip_tiny,
    "py": py_factory,
}


def build_zoo(root: Path, names: tuple[str, ...] = tuple(BUILDERS)) -> Zoo:
    """``{name: (spec, weights, reference)}`` for ``names``, files under ``root``."""
    return {name: BUILDERS[name](root) for name in names}
