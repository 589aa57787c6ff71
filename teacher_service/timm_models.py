"""Creating timm models: ``timm.create_model(NAME, num_classes=0)`` with local weights loaded
strictly, and a model's data config. Shared by the ``timm:NAME`` teacher source and the
``timm:NAME`` student architectures of :mod:`teacher_service.encoders`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from store.errors import CheckpointError, ConfigError
from teacher_service.extras import require
from teacher_service.weights import load_strict, read_state_dict

__all__ = ["create_timm", "timm_data_config"]


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
