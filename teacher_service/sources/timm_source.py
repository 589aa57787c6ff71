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

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from store.errors import CheckpointError, ConfigError
from teacher_service.sources.base import (
    LoadedTeacher,
    build_teacher,
    load_strict,
    read_state_dict,
    require,
    state_sha256,
    weights_sha256,
)

__all__ = ["TimmNet", "create_timm", "load_timm", "timm_data_config"]


def _folder_weights(folder: Path) -> Path:
    for name in ("model.safetensors", "pytorch_model.bin", "open_clip_model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"no model.safetensors or pytorch_model.bin in {folder}")


def create_timm(
    name: str, weights: str | None, what: str, pretrained: bool = True
) -> tuple[nn.Module, dict[str, Any]]:
    """``(model, folder_config)``: ``timm.create_model(name, num_classes=0)`` with ``weights``
    loaded strictly (see module docstring); ``pretrained`` with no weights = timm's download.

    ViTs are created with ``dynamic_img_size=True`` where the class accepts it (same output at
    the native size, any multiple of the patch size works).
    """
    timm = require("timm", what)
    kwargs: dict[str, Any] = {}
    folder_cfg: dict[str, Any] = {}
    wpath = Path(weights) if weights else None
    if wpath is not None and wpath.is_dir():
        cfg_file = wpath / "config.json"
        if not cfg_file.is_file():
            raise CheckpointError(f"{wpath} has no config.json (timm hub layout expected)")
        folder_cfg = json.loads(cfg_file.read_text())
        arch = folder_cfg.get("architecture")
        if arch and arch != name:
            raise ConfigError(f"{wpath} holds a {arch!r}, not {name!r}; use timm:{arch}")
        kwargs.update(folder_cfg.get("model_args") or {})
        if folder_cfg.get("pretrained_cfg"):
            kwargs["pretrained_cfg_overlay"] = folder_cfg["pretrained_cfg"]
    kwargs["num_classes"] = 0
    use_download = pretrained and wpath is None

    def make(**extra: Any) -> nn.Module:
        try:
            return timm.create_model(name, pretrained=use_download, **kwargs, **extra)
        except RuntimeError as exc:
            if "Unknown model" in str(exc):
                raise ConfigError(f"unknown timm model {name!r} (see timm.list_models())") from None
            raise

    try:
        model = make(dynamic_img_size=True)
    except TypeError:
        model = make()
    if wpath is not None:
        state = read_state_dict(_folder_weights(wpath) if wpath.is_dir() else wpath)
        own = model.state_dict()
        pcfg: Any = model.pretrained_cfg
        classifier = str(pcfg.get("classifier") or "")
        heads = tuple(f"{c}." for c in classifier.split(",") if c) if classifier else ()
        state = {k: v for k, v in state.items() if k in own or not k.startswith(heads)}
        load_strict(model, state, f"timm:{name} <- {wpath}")
    return model, folder_cfg


def timm_data_config(model: nn.Module) -> dict[str, Any]:
    """``resolve_model_data_config`` with the input size of a fixed-size ViT taken from its
    patch embedding (a ViT made with ``img_size=32`` keeps the 224 of its pretrained config)."""
    timm = require("timm", "timm models")
    cfg = dict(timm.data.resolve_model_data_config(model))
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(img, tuple | list) and img and img[0]:
        cfg["input_size"] = (3, int(img[0]), int(img[1]))
    return cfg


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
