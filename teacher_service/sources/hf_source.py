"""``hf:PATH_OR_ID`` teachers: Hugging Face ``transformers`` vision models.

Which output is the embedding:

- DINOv2 (``Dinov2Model``...): ``pooler_output`` = the CLS token after the final layer norm;
- CLIP (a ``clip`` or ``clip_vision_model`` config): ``CLIPVisionModelWithProjection``'s projected
  ``image_embeds`` (the feature is the pre-projection ``pooler_output``);
- any other ``AutoModel``: ``pooler_output`` (flattened), else the CLS token of
  ``last_hidden_state``.

``--teacher-pooling cls|mean|cls+mean`` replaces that by the CLS token / mean of the patch tokens
(register tokens excluded) / both concatenated, from ``last_hidden_state`` (through CLIP's
``post_layernorm`` for CLIP). Mean/std/size come from the repo's ``preprocessor_config.json``
(ImageNet, or OpenAI's for CLIP, when the repo has none: recorded as assumed).

``--teacher-weights``: a snapshot folder (``config.json`` + ``model.safetensors``...: loaded with
``from_pretrained``; ``PATH_OR_ID`` is then just the recorded name), or a ``.safetensors``/``.bin``
state dict for the architecture of ``PATH_OR_ID``'s ``config.json``. Without weights,
``from_pretrained(PATH_OR_ID)`` (a download on a user's machine; tests set ``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from store.errors import CheckpointError, ConfigError
from teacher_service.extras import require
from teacher_service.sources.base import LoadedTeacher, build_teacher
from teacher_service.weights import load_strict, read_state_dict, state_sha256, weights_sha256

__all__ = ["HFNet", "load_hf"]

WHAT = "teacher source 'hf:'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_TYPES = ("clip", "clip_vision_model")
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


class HFNet(nn.Module):
    """``x -> (feature, embedding)`` of a transformers vision model (see module docstring)."""

    def __init__(self, model: nn.Module, kind: str, pooling: str | None, prefix: int) -> None:
        super().__init__()
        self.model: Any = model  # a library model: attribute access is dynamic
        self.kind = kind
        self.pooling = pooling
        self.prefix = prefix
        params = inspect.signature(model.forward).parameters
        self.interpolate = "interpolate_pos_encoding" in params

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` normalised -> ``((B, F), (B, D))``."""
        kwargs: dict[str, Any] = {"pixel_values": x}
        if self.interpolate:
            kwargs["interpolate_pos_encoding"] = True
        out = self.model(**kwargs)
        pooled = getattr(out, "pooler_output", None)
        if self.pooling is not None:
            tokens = out.last_hidden_state
            if self.kind == "clip":
                tokens = self.model.vision_model.post_layernorm(tokens)
            cls = tokens[:, 0]
            mean = tokens[:, self.prefix :].mean(dim=1)
            emb = {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}
            z = emb[self.pooling]
            return z, z
        if self.kind == "clip":
            # CLIPVisionModelWithProjection returns image_embeds and last_hidden_state only.
            cls = self.model.vision_model.post_layernorm(out.last_hidden_state[:, 0])
            return cls, out.image_embeds
        if pooled is None:
            pooled = out.last_hidden_state[:, 0]
        pooled = torch.flatten(pooled, 1)
        return pooled, pooled


def _preprocessor(src: str) -> dict[str, Any] | None:
    tf_utils = require("transformers.utils", WHAT)
    try:
        path = tf_utils.cached_file(
            src, "preprocessor_config.json", _raise_exceptions_for_missing_entries=False
        )
    except OSError:
        return None
    return json.loads(Path(path).read_text()) if path else None


def _side(value: Any) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("height", "shortest_edge", "width"):
            if isinstance(value.get(key), int):
                return int(value[key])
    return None


def load_hf(name: str, weights: str | None, pooling: str | None) -> LoadedTeacher:
    """The ``hf:PATH_OR_ID`` teacher (see module docstring)."""
    tf = require("transformers", WHAT)
    wpath = Path(weights) if weights else None
    src = str(wpath) if wpath is not None and wpath.is_dir() else name
    try:
        config = tf.AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise CheckpointError(
            f"hf:{name}: cannot read its config from {src} ({str(exc).splitlines()[0]}); give a "
            "snapshot folder with --teacher-weights"
        ) from None
    kind = "clip" if config.model_type in CLIP_TYPES else config.model_type
    if kind == "clip":
        cls = tf.CLIPVisionModelWithProjection
        if config.model_type == "clip":
            projection = config.projection_dim
            config = config.vision_config
            config.projection_dim = projection
    else:
        cls = tf.AutoModel
    try:
        if wpath is not None and wpath.is_file():
            model = cls(config) if kind == "clip" else cls.from_config(config)
            state = read_state_dict(wpath)
            if kind == "clip":  # a full CLIP state dict: keep the image tower
                text = ("text_model.", "text_projection.", "logit_scale")
                state = {k: v for k, v in state.items() if not k.startswith(text)}
            load_strict(model, state, f"hf:{name} <- {wpath}")
        else:
            model = cls.from_pretrained(src)
    except OSError as exc:
        raise CheckpointError(f"hf:{name}: cannot load ({str(exc).splitlines()[0]})") from None
    model.eval()
    vision = getattr(config, "vision_config", None) or config
    patch = getattr(vision, "patch_size", None)
    patch_size = int(patch[0] if isinstance(patch, list | tuple) else patch) if patch else None
    if pooling is not None and patch_size is None:
        raise ConfigError(f"--teacher-pooling applies to ViT teachers; hf:{name} is not one")
    prefix = 1 + int(getattr(vision, "num_register_tokens", 0) or 0)
    net = HFNet(model, kind, pooling, prefix)

    pre = _preprocessor(src) or {}
    assumed = not pre
    clip_like = kind == "clip"
    mean = pre.get("image_mean") or (CLIP_MEAN if clip_like else IMAGENET_MEAN)
    std = pre.get("image_std") or (CLIP_STD if clip_like else IMAGENET_STD)
    size = None
    if pre.get("do_center_crop", "crop_size" in pre):
        size = _side(pre.get("crop_size"))
    size = size or _side(pre.get("size")) or int(getattr(vision, "image_size", 224) or 224)
    embedding = {
        "clip": "image_embeds (projected pooler_output)",
        "dinov2": "pooler_output (CLS after the final layer norm)",
    }.get(kind, "pooler_output, else the CLS token")
    if pooling is not None:
        embedding = f"{pooling} of last_hidden_state"
    sha = weights_sha256(wpath) if wpath is not None else state_sha256(model)
    return build_teacher(
        net,
        source="hf",
        name=name,
        mean=mean,
        std=std,
        input_size=size,
        interpolation=PIL_FILTERS.get(int(pre.get("resample", 3)), "bicubic"),
        sha256=sha,
        weights=weights,
        embedding=embedding,
        patch_size=patch_size,
        dynamic_size=patch_size is None or net.interpolate or kind.startswith("dinov2"),
        revision=getattr(config, "_commit_hash", None),
        pooling=pooling,
        licence=None,
        extra={"model_type": config.model_type, "preprocessing_assumed": assumed},
    )
