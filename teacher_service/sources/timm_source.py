"""``timm:NAME`` teachers (and students): ``timm.create_model(NAME, num_classes=0)``.

Embedding = ``forward_head(forward_features(x), pre_logits=True)``, the model's pooled pre-logits
output; the backbone feature is the same vector. Mean/std/size/interpolation come from
``timm.data.resolve_model_data_config``. ``--teacher-weights``: a ``.safetensors``/``.pth``
state dict (classifier keys are dropped), or a timm hub folder (``config.json`` with
``architecture``/``model_args``/``pretrained_cfg`` + ``model.safetensors`` or
``pytorch_model.bin``, as ``timm.models.save_for_hf`` writes). No weights: timm's own pretrained
download (on a user's machine; never in tests).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from store.errors import ConfigError
from teacher_service.sources.base import LoadedTeacher, build_teacher
from teacher_service.timm_models import create_timm, timm_data_config
from teacher_service.weights import state_sha256, weights_sha256

__all__ = ["TimmNet", "create_timm", "load_timm", "timm_data_config"]


class TimmNet(nn.Module):
    """``x -> (feature, embedding)`` of a timm model: both = the pooled pre-logits vector, or,
    with ``pooling``, the CLS token / mean of patch tokens / both concatenated from
    ``forward_features`` (ViTs only)."""

    def __init__(self, model: nn.Module, pooling: str | None = None) -> None:
        super().__init__()
        self.model: Any = model  # a library model: attribute access is dynamic
        self.pooling = pooling
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` normalised -> ``((B, F), (B, D))``."""
        tokens = self.model.forward_features(x)
        if self.pooling is None:
            pooled = self.model.forward_head(tokens, pre_logits=True)
        else:
            if tokens.dim() == 4:  # NHWC token map from a dynamic-size ViT
                tokens = tokens.flatten(1, 2)
            cls = tokens[:, 0]
            mean = tokens[:, self.prefix :].mean(dim=1)
            pooled = {"cls": cls, "mean": mean, "cls+mean": torch.cat([cls, mean], dim=1)}[
                self.pooling
            ]
        return pooled, pooled


def load_timm(name: str, weights: str | None, pooling: str | None) -> LoadedTeacher:
    """The ``timm:NAME`` teacher (see module docstring)."""
    model, folder_cfg = create_timm(name, weights, "teacher source 'timm:'")
    if pooling is not None and not hasattr(model, "num_prefix_tokens"):
        raise ConfigError(f"--teacher-pooling applies to ViT teachers; timm:{name} is not one")
    data = timm_data_config(model)
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    patch_size = int(patch[0]) if isinstance(patch, tuple | list) else None
    dynamic = bool(getattr(model, "dynamic_img_size", patch_size is None))
    pcfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    sha = weights_sha256(weights) if weights else state_sha256(model)
    return build_teacher(
        TimmNet(model, pooling),
        source="timm",
        name=name,
        mean=data["mean"],
        std=data["std"],
        input_size=int(data["input_size"][-1]),
        interpolation=str(data.get("interpolation", "bicubic")),
        sha256=sha,
        weights=weights,
        embedding=(
            "forward_head(forward_features(x), pre_logits=True)"
            if pooling is None
            else f"{pooling} of forward_features(x)"
        ),
        patch_size=patch_size,
        dynamic_size=dynamic,
        revision=f"{pcfg.get('hf_hub_id')}@{pcfg.get('tag')}" if weights is None else None,
        pooling=pooling,
        licence=pcfg.get("license"),
        extra={"model_args": folder_cfg.get("model_args")} if folder_cfg else None,
    )
