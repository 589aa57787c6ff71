"""``open_clip:ARCH`` teachers: the image tower of ``open_clip.create_model(ARCH)``.

Embedding = ``encode_image`` (the projected image embedding, L2-normalised here); the feature is
the same vector before normalisation. Mean/std/size/interpolation from
``open_clip.get_model_preprocess_cfg``. ``ARCH`` is a registered architecture name, optionally
``@TAG`` for one of its pretrained tags (``open_clip:ViT-B-32@laion2b_s34b_b79k``, a download on
a user's machine), or the path of a model-config ``.json`` (registered with
``open_clip.add_model_config``). ``--teacher-weights``: a state dict of the whole CLIP model (the
text tower is dropped) or of its ``visual`` tower alone. The position embedding is fixed: views
must have the model's own size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from store.errors import ConfigError
from teacher_service.extras import require
from teacher_service.sources.base import LoadedTeacher, build_teacher
from teacher_service.weights import load_strict, read_state_dict, state_sha256, weights_sha256

__all__ = ["OpenCLIPNet", "load_open_clip"]

WHAT = "teacher source 'open_clip:'"


class OpenCLIPNet(nn.Module):
    """``x -> (feature, embedding)``: both = ``visual(x)`` (= ``encode_image`` unnormalised)."""

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` normalised -> ``((B, D), (B, D))``."""
        z = self.visual(x)
        if isinstance(z, tuple):  # towers built with output_tokens
            z = z[0]
        return z, z


def load_open_clip(name: str, weights: str | None, pooling: str | None) -> LoadedTeacher:
    """The ``open_clip:ARCH`` teacher (see module docstring)."""
    oc = require("open_clip", WHAT)
    if pooling is not None:
        raise ConfigError("--teacher-pooling is not supported for open_clip teachers")
    arch, _, tag = name.partition("@")
    if arch.endswith(".json"):
        cfg_path = Path(arch)
        if not cfg_path.is_file():
            raise ConfigError(f"open_clip model config not found: {cfg_path}")
        oc.add_model_config(cfg_path)
        arch = cfg_path.stem
    if arch not in oc.list_models():
        raise ConfigError(f"unknown open_clip architecture {arch!r} (see open_clip.list_models())")
    if weights is None and not tag:
        raise ConfigError(
            f"open_clip:{name} needs --teacher-weights or a pretrained tag "
            f"(open_clip:{arch}@TAG; tags: open_clip.list_pretrained_tags_by_model({arch!r}))"
        )
    model = oc.create_model(arch, pretrained=None if weights else tag, load_weights=not weights)
    if weights:
        state = read_state_dict(weights)
        if any(k.startswith("visual.") for k in state):
            state = {k.removeprefix("visual."): v for k, v in state.items() if k[:7] == "visual."}
        load_strict(model.visual, state, f"open_clip:{name} <- {weights}")
    visual = model.visual
    del model  # the text tower is not needed
    pre = oc.get_model_preprocess_cfg(visual) if hasattr(visual, "preprocess_cfg") else {}
    if not pre:
        pre = {
            "size": getattr(visual, "image_size", 224),
            "mean": getattr(visual, "image_mean", None) or oc.OPENAI_DATASET_MEAN,
            "std": getattr(visual, "image_std", None) or oc.OPENAI_DATASET_STD,
            "interpolation": "bicubic",
        }
    size = pre["size"]
    size = int(size[0] if isinstance(size, list | tuple) else size)
    patch = getattr(visual, "patch_size", None)
    patch_size = int(patch[0] if isinstance(patch, list | tuple) else patch) if patch else None
    licence = None
    if tag:
        licence = (oc.get_pretrained_cfg(arch, tag) or {}).get("license")
    sha = weights_sha256(weights) if weights else state_sha256(visual)
    return build_teacher(
        OpenCLIPNet(visual),
        source="open_clip",
        name=name,
        mean=pre["mean"],
        std=pre["std"],
        input_size=size,
        interpolation=str(pre.get("interpolation", "bicubic")),
        sha256=sha,
        weights=weights,
        embedding="encode_image",
        patch_size=patch_size,
        dynamic_size=False,
        revision=tag or None,
        licence=licence,
    )
