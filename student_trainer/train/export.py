"""Export the deployed student alone: the backbone's own state dict, loadable with plain library
code (no project code, no key surgery).

``out/deployed.pt`` is ``backbone.state_dict()`` saved with ``torch.save`` (a flat
``{name: tensor}`` dict, ``weights_only``-safe); ``out/deployed.safetensors`` holds the same tensors
(when ``safetensors`` is installed); ``out/deployed.json`` says how to rebuild the model
(``disco-deployed/1``: encoder config, preprocessing, training config, metadata and the plain
constructor). A ``timm:NAME`` student loads with::

    model = timm.create_model(NAME, num_classes=0)
    model.load_state_dict(torch.load("deployed.pt", weights_only=True), strict=True)

and a torchvision one (built without ``small_stem``, at the standard width) with, e.g.::

    model = torchvision.models.mobilenet_v3_small(); model.classifier = torch.nn.Identity()
    model.load_state_dict(torch.load("deployed.pt", weights_only=True), strict=True)

(``resnet*``: ``model.fc = torch.nn.Identity()``). :func:`teacher_service.checkpoint.load_encoder`
reads the export back through the ``.json`` beside it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from teacher_service.checkpoint import DEPLOYED_FORMAT, atomic_torch_save
from teacher_service.encoders import ARCHS, TIMM_PREFIX, Encoder
from teacher_service.weights import read_state_dict

__all__ = ["DEPLOYED_FORMAT", "export_deployed", "plain_constructor"]

_TORCHVISION_HEADS = {"resnet": "fc", "torchvision": "classifier"}


def plain_constructor(encoder: Encoder) -> str | None:
    """The library call whose model ``encoder.backbone.state_dict()`` loads into strictly, or None
    when no plain library model has this layout (a small stem, a non-default ResNet width, the
    project's own ``tiny``/``resnet10``)."""
    cfg = encoder.config
    if cfg.arch.startswith(TIMM_PREFIX):
        return f"timm.create_model({cfg.arch[len(TIMM_PREFIX) :]!r}, num_classes=0)"
    spec = ARCHS[cfg.arch]
    if cfg.small_stem or cfg.arch in ("tiny", "resnet10"):
        return None
    if spec.family == "resnet" and cfg.resolved_width != 64:
        return None
    head = _TORCHVISION_HEADS[spec.family]
    return f"torchvision.models.{cfg.arch}(); model.{head} = torch.nn.Identity()"


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def export_deployed(
    out: str | os.PathLike[str],
    deployed: Encoder,
    preprocessing: dict[str, Any],
    train: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``deployed.pt``, ``deployed.safetensors`` (if ``safetensors`` is installed) and
    ``deployed.json`` into ``out`` (each atomically); returns ``{"pt", "json"[, "safetensors"]}``
    paths. ``deployed`` is a head-less student
    (:func:`student_trainer.train.models.deployed_backbone`).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().contiguous().clone() for k, v in deployed.backbone.state_dict().items()
    }
    paths = {"pt": str(folder / "deployed.pt"), "json": str(folder / "deployed.json")}
    atomic_torch_save(state, paths["pt"])
    save_file: Any = None
    with contextlib.suppress(ImportError):  # the models extra is optional: deployed.pt alone
        from safetensors.torch import save_file
    constructor = plain_constructor(deployed)
    if save_file is not None:
        target = folder / "deployed.safetensors"
        st_meta = {"format": DEPLOYED_FORMAT, "arch": deployed.config.arch}
        if constructor:
            st_meta["constructor"] = constructor
        _atomic_write(target, lambda tmp: save_file(state, tmp, metadata=st_meta))
        paths["safetensors"] = str(target)
    sidecar = {
        "format": DEPLOYED_FORMAT,
        "encoder": deployed.config.to_dict(),
        "constructor": constructor,
        "feature_dim": deployed.feature_dim,
        "parameters": sum(t.numel() for t in deployed.backbone.parameters()),
        "preprocessing": dict(preprocessing),
        "train": dict(train or {}),
        "meta": dict(meta or {}),
        "files": sorted(Path(p).name for k, p in paths.items() if k != "json"),
    }
    text = json.dumps(sidecar, indent=2, default=str) + "\n"
    _atomic_write(Path(paths["json"]), lambda tmp: Path(tmp).write_text(text))
    return paths


def load_deployed_state(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The exported state dict (``.pt``: ``torch.load(weights_only=True)``; ``.safetensors``)."""
    return read_state_dict(path)
