"""Save and load encoder checkpoints: this project's format, FAIR/DisCo MoCo-v2, torchvision.

Every load goes through ``torch.load(weights_only=True)``: a file that needs arbitrary unpickling
(a pickled custom class, an ``argparse.Namespace`` ...) is refused with :class:`CheckpointError`.

Project format ``disco-checkpoint/1`` (a plain dict; tensors, str, numbers, lists, dicts only)::

    {"format": "disco-checkpoint/1",
     "encoder": EncoderConfig.to_dict(),
     "state_dict": Encoder.state_dict(),          # fp32, or fp16 floats when saved with half=True
     "weights_dtype": "float32" | "float16",
     "preprocessing": {"size", "mean", "std", "interpolation", "antialias", "recipe"},
     "train": {...training config...},
     "meta": {...free-form...}}
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from store.errors import CheckpointError, ConfigError
from store.views import Recipe, get_recipe
from teacher_service.encoders import ARCHS, Encoder, EncoderConfig, build_encoder
from teacher_service.weights import (
    atomic_torch_save,
    file_sha256,
    read_checkpoint,
    read_state_dict,
)

__all__ = [
    "DEPLOYED_FORMAT",
    "FORMAT",
    "IMAGENET_PREPROCESSING",
    "LoadedEncoder",
    "atomic_torch_save",
    "file_sha256",
    "infer_resnet_config",
    "load_encoder",
    "read_checkpoint",
    "recipe_for",
    "save_checkpoint",
]

FORMAT = "disco-checkpoint/1"
DEPLOYED_FORMAT = "disco-deployed/1"
"""Format of the ``.json`` beside an exported student (``deployed.pt``: a plain state dict)."""

IMAGENET_PREPROCESSING: dict[str, Any] = {
    "size": 224,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": None,
    "assumed": True,
}
"""Preprocessing recorded for MoCo-v2 / torchvision files, which carry none (ImageNet defaults)."""

_MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.")
_HEAD_PREFIXES = ("fc.", "classifier.")
# Buffers some older checkpoints lack; their absence does not change the forward pass in eval mode.
_OPTIONAL_SUFFIXES = ("num_batches_tracked",)


@dataclass
class LoadedEncoder:
    """An encoder in eval mode with its identity.

    ``info`` keys: arch, sha256, format ("disco"|"mocov2"|"torchvision"), embed_dim, feature_dim,
    head ({"hidden", "out", "bn", "bn_groups"} or None), small_stem, width, embedding
    ("head"|"backbone"), bn_mode ("eval"), preprocessing (dict), encoder (EncoderConfig dict).
    """

    encoder: Encoder
    info: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | os.PathLike[str],
    encoder: Encoder,
    preprocessing: dict[str, Any],
    train: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    half: bool = False,
) -> str:
    """Write ``encoder`` in the ``disco-checkpoint/1`` format; returns the file's hex sha256.

    Written to a temporary file in the same directory, fsynced, then renamed over ``path``, so a
    crash never leaves a truncated checkpoint. ``half=True`` stores floating tensors as float16
    (they load back as float32). ``preprocessing``, ``train`` and ``meta`` must hold only plain
    values (str, numbers, bool, None, lists, dicts) so the file loads with ``weights_only=True``.
    """
    state = {}
    for key, value in encoder.state_dict().items():
        tensor = value.detach().cpu()
        if half and tensor.is_floating_point():
            tensor = tensor.half()
        state[key] = tensor.clone()
    payload: dict[str, Any] = {
        "format": FORMAT,
        "encoder": encoder.config.to_dict(),
        "state_dict": state,
        "weights_dtype": "float16" if half else "float32",
        "preprocessing": dict(preprocessing),
        "train": dict(train or {}),
        "meta": dict(meta or {}),
    }
    atomic_torch_save(payload, path)
    return file_sha256(path)


def infer_resnet_config(backbone_state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Guess a ResNet's registry name, width and stem from its (prefix-free) state dict keys.

    Returns ``{"arch", "width", "small_stem"}``; raises ``CheckpointError`` if the keys do not
    describe a registered ResNet layout.
    """
    if "conv1.weight" not in backbone_state:
        raise CheckpointError(
            "cannot infer the architecture (no 'conv1.weight'); pass arch= explicitly"
        )
    conv1 = backbone_state["conv1.weight"]
    width = int(conv1.shape[0])
    small_stem = int(conv1.shape[-1]) == 3
    blocks = []
    for stage in range(1, 5):
        ids = {
            int(k.split(".")[1])
            for k in backbone_state
            if k.startswith(f"layer{stage}.") and k.split(".")[1].isdigit()
        }
        blocks.append(len(ids))
    bottleneck = "layer1.0.conv3.weight" in backbone_state
    for name, spec in ARCHS.items():
        if name == "tiny" or spec.family != "resnet":
            continue
        is_bottleneck = spec.block is not None and spec.block.expansion == 4
        if spec.layers == tuple(blocks) and is_bottleneck == bottleneck:
            return {"arch": name, "width": None if width == 64 else width, "small_stem": small_stem}
    raise CheckpointError(
        f"no registered ResNet has {blocks} blocks per stage "
        f"({'Bottleneck' if bottleneck else 'BasicBlock'}); pass arch= explicitly"
    )


def _split_head(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], dict[str, Any], str]:
    """Split a prefix-free encoder state dict into (backbone, head, head prefix)."""
    for prefix in _HEAD_PREFIXES:
        head = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if head:
            backbone = {k: v for k, v in state.items() if not k.startswith(prefix)}
            return backbone, head, prefix
    return dict(state), {}, ""


def _load_into(encoder: Encoder, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``encoder``; name missing, unexpected and mis-shaped keys on failure."""
    own = encoder.state_dict()
    missing = [k for k in own if k not in state and not k.endswith(_OPTIONAL_SUFFIXES)]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)})"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing[:20])}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected[:20])}")
    if mismatched:
        problems.append(f"shape mismatch: {', '.join(mismatched[:20])}")
    if problems:
        raise CheckpointError(f"{source} does not fit {encoder.config.arch}: {'; '.join(problems)}")
    encoder.load_state_dict(dict(state), strict=False)


def _info(
    encoder: Encoder, sha: str, fmt: str, preprocessing: dict[str, Any] | None
) -> dict[str, Any]:
    cfg = encoder.config
    head = None
    if encoder.head is not None:
        head = {
            "hidden": cfg.head_hidden,
            "out": cfg.head_out,
            "bn": cfg.head_bn,
            "bn_groups": cfg.bn_groups,
        }
    return {
        "arch": cfg.arch,
        "sha256": sha,
        "format": fmt,
        "embed_dim": encoder.embed_dim,
        "feature_dim": encoder.feature_dim,
        "head": head,
        "small_stem": cfg.small_stem,
        "width": cfg.resolved_width,
        "embedding": "head" if encoder.head is not None else "backbone",
        "bn_mode": "eval",
        "preprocessing": dict(preprocessing or IMAGENET_PREPROCESSING),
        "encoder": cfg.to_dict(),
    }


def recipe_for(
    preprocessing: Mapping[str, Any] | None, name: str | None = None, size: int | None = None
) -> Recipe:
    """The view recipe a teacher's inputs are rendered with: the one rule every consumer uses.

    ``preprocessing`` is a checkpoint's recorded preprocessing (``LoadedEncoder.info
    ["preprocessing"]``); its ``recipe`` is a registry name, a ``Recipe.to_dict()`` dict (what
    ``disco train`` writes), or None (MoCo-v2 / torchvision files). ``name`` and ``size`` (px)
    override; otherwise the recipe is the checkpoint's, else ``mocov2``, at the recorded recipe's
    size, else the preprocessing ``size``, else 224. Raises ``ConfigError`` for an unknown name.
    """
    pre = dict(preprocessing or {})
    recorded = pre.get("recipe")
    recorded_name: str | None = None
    recorded_size: Any = None
    if isinstance(recorded, str):
        recorded_name = recorded
    elif isinstance(recorded, Mapping):
        recorded_name = str(recorded["name"]) if recorded.get("name") else None
        recorded_size = recorded.get("size")
    chosen = name or recorded_name or "mocov2"
    if size is None:
        for candidate in (recorded_size if chosen == recorded_name else None, pre.get("size")):
            if isinstance(candidate, int) and not isinstance(candidate, bool) and candidate >= 8:
                size = candidate
                break
        else:
            size = 224
    return get_recipe(chosen, int(size))


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _config_for(
    backbone_state: Mapping[str, torch.Tensor],
    arch: str | None,
    small_stem: bool | None,
    width: int | None,
    **head_fields: Any,
) -> EncoderConfig:
    if arch is None:
        guessed = infer_resnet_config(backbone_state)
        arch = guessed["arch"]
        width = guessed["width"] if width is None else width
        small_stem = guessed["small_stem"] if small_stem is None else small_stem
    elif arch in ARCHS and ARCHS[arch].family == "resnet" and "conv1.weight" in backbone_state:
        conv1 = backbone_state["conv1.weight"]
        if width is None and int(conv1.shape[0]) != ARCHS[arch].width:
            width = int(conv1.shape[0])
        if small_stem is None:
            small_stem = int(conv1.shape[-1]) == 3
    try:
        return EncoderConfig(arch=arch, small_stem=bool(small_stem), width=width, **head_fields)
    except ConfigError as exc:
        raise CheckpointError(f"invalid encoder settings for the checkpoint: {exc}") from None


def load_encoder(
    path: str | os.PathLike[str],
    device: str | torch.device = "cpu",
    arch: str | None = None,
    small_stem: bool | None = None,
    width: int | None = None,
    head: bool | None = None,
    preprocessing: dict[str, Any] | None = None,
) -> LoadedEncoder:
    """Load an encoder from a checkpoint in any of the three supported layouts, in eval mode.

    - ``disco``: this project's format; everything comes from the file (the keyword overrides are
      ignored except ``device``).
    - ``mocov2``: FAIR / DisCo-pytorch MoCo-v2 files ``{"state_dict": {"module.encoder_q.*"...}}``;
      the query encoder is used, the MLP head at ``fc.0``/``fc.2`` (or ``classifier.0/2``).
    - ``torchvision``: a plain state dict of a torchvision model; the classifier is dropped and the
      embedding is the L2-normalised backbone feature (``info["embedding"] == "backbone"``).
    - ``deployed``: a student export (plain state dict, ``.pt`` or ``.safetensors``) with its
      ``disco-deployed/1`` ``.json`` beside it (architecture, preprocessing; ``info`` gains its
      ``meta`` and ``train``).

    For the last two, ResNet layouts (block type, depth, width, stem) are inferred from the keys;
    other architectures need ``arch``. ``head=False`` ignores a MoCo head. ``preprocessing`` is
    recorded in ``info`` (ImageNet defaults otherwise). Raises ``CheckpointError``.
    """
    if os.fspath(path).endswith(".safetensors"):
        obj: Any = read_state_dict(path)
    else:
        obj = read_checkpoint(path)
    sha = file_sha256(path)
    name = os.fspath(path)
    sidecar = _deployed_sidecar(path)
    if sidecar is not None and _is_tensor_dict(obj):
        cfg = EncoderConfig.from_dict(dict(sidecar["encoder"]))
        encoder = build_encoder(cfg)
        _load_into(encoder, {f"backbone.{k}": v for k, v in obj.items()}, f"export {name}")
        info = _info(encoder, sha, "deployed", dict(sidecar.get("preprocessing") or {}))
        info["meta"] = dict(sidecar.get("meta") or {})
        info["train"] = dict(sidecar.get("train") or {})
    elif isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        cfg = EncoderConfig.from_dict(dict(obj["encoder"]))
        encoder = build_encoder(cfg)
        _load_into(encoder, obj["state_dict"], f"checkpoint {name}")
        info = _info(encoder, sha, "disco", dict(obj.get("preprocessing") or {}) or preprocessing)
    elif isinstance(obj, Mapping) and isinstance(obj.get("format"), str):
        raise CheckpointError(f"checkpoint {name} has unsupported format {obj['format']!r}")
    elif (
        isinstance(obj, Mapping)
        and isinstance(obj.get("state_dict"), Mapping)
        and any(k.startswith(_MOCO_PREFIXES) for k in obj["state_dict"])
    ):
        encoder = _load_mocov2(obj, name, arch, small_stem, width, head)
        info = _info(encoder, sha, "mocov2", preprocessing)
    elif _is_tensor_dict(obj):
        state = {k.removeprefix("module."): v for k, v in obj.items()}
        backbone, _, _ = _split_head(state)
        cfg = _config_for(backbone, arch, small_stem, width, head=False)
        encoder = build_encoder(cfg)
        _load_into(encoder, {f"backbone.{k}": v for k, v in backbone.items()}, f"state dict {name}")
        info = _info(encoder, sha, "torchvision", preprocessing)
    else:
        raise CheckpointError(
            f"unknown checkpoint layout in {name}: expected a disco-checkpoint/1 dict, a MoCo-v2 "
            "{'state_dict': {'module.encoder_q.*': ...}} dict, or a plain torchvision state dict"
        )
    encoder.requires_grad_(False)
    encoder.eval()
    encoder.to(device)
    return LoadedEncoder(encoder=encoder, info=info)


def _deployed_sidecar(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``disco-deployed/1`` JSON beside an exported student (``deployed.pt`` ->
    ``deployed.json``), or None."""
    side = Path(path).with_suffix(".json")
    if not side.is_file():
        return None
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == DEPLOYED_FORMAT else None


def _load_mocov2(
    obj: Mapping[str, Any],
    name: str,
    arch: str | None,
    small_stem: bool | None,
    width: int | None,
    head: bool | None,
) -> Encoder:
    raw = obj["state_dict"]
    prefix = next(p for p in _MOCO_PREFIXES if any(k.startswith(p) for k in raw))
    query = {k[len(prefix) :]: v for k, v in raw.items() if k.startswith(prefix)}
    backbone, head_state, _ = _split_head(query)
    if arch is None and isinstance(obj.get("arch"), str) and obj["arch"] in ARCHS:
        arch = obj["arch"]
    use_head = bool(head_state) if head is None else head
    head_fields: dict[str, Any] = {"head": use_head}
    if use_head:
        if "0.weight" not in head_state or "2.weight" not in head_state:
            raise CheckpointError(
                f"MoCo checkpoint {name} has no MLP head at fc.0/fc.2 (found head keys: "
                f"{', '.join(sorted(head_state)) or 'none'}); pass head=False to use the backbone"
            )
        head_fields["head_hidden"] = int(head_state["0.weight"].shape[0])
        head_fields["head_out"] = int(head_state["2.weight"].shape[0])
    cfg = _config_for(backbone, arch, small_stem, width, **head_fields)
    encoder = build_encoder(cfg)
    state = {f"backbone.{k}": v for k, v in backbone.items()}
    if use_head:
        mapping = {"0.": "head.fc1.", "2.": "head.fc2."}
        for k, v in head_state.items():
            for src, dst in mapping.items():
                if k.startswith(src):
                    state[dst + k[len(src) :]] = v
                    break
            else:
                state[f"head.{k}"] = v  # unknown head key: reported as unexpected
    _load_into(encoder, state, f"MoCo-v2 checkpoint {name}")
    return encoder
