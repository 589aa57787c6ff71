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
from pathlib import Path
from typing import Any

from store.atomic import atomic_write_bytes, atomic_write_text
from teacher_service.checkpoint import DEPLOYED_FORMAT, atomic_torch_save
from teacher_service.encoders import ARCHS, TIMM_PREFIX, Encoder

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


def export_deployed(
    out: str | os.PathLike[str],
    deployed: Encoder,
    preprocessing: dict[str, Any],
    train: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
) -> dict[str, str]:
    """Write ``deployed.pt``, ``deployed.safetensors`` (if ``safetensors`` is installed) and
    ``deployed.json`` into ``out`` (each atomically); returns ``{"pt", "json"[, "safetensors"]}``
    paths. ``deployed`` is a head-less student (see
    :func:`student_trainer.train.models.deployed_backbone`).
    """
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    state = {
        k: v.detach().cpu().contiguous().clone() for k, v in deployed.backbone.state_dict().items()
    }
    paths = {"pt": str(folder / "deployed.pt"), "json": str(folder / "deployed.json")}
    atomic_torch_save(state, paths["pt"])
    serialise: Any = None
    with contextlib.suppress(ImportError):  # the models extra is optional: deployed.pt alone
        from safetensors.torch import save as serialise
    constructor = plain_constructor(deployed)
    if serialise is not None:
        target = folder / "deployed.safetensors"
        st_meta = {"format": DEPLOYED_FORMAT, "arch": deployed.config.arch}
        if constructor:
            st_meta["constructor"] = constructor
        atomic_write_bytes(target, serialise(state, metadata=st_meta))
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
    atomic_write_text(paths["json"], json.dumps(sidecar, indent=2, default=str) + "\n")
    return paths
