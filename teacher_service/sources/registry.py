"""The teacher-source registry: ``--teacher`` spellings -> loaders.

``timm:NAME``, ``hf:PATH_OR_ID``, ``open_clip:ARCH``, ``py:MODULE:FUNCTION``, or a checkpoint
path (no prefix). An unknown prefix fails with the list of valid ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch

from store.errors import CheckpointError, ConfigError
from teacher_service.sources.base import POOLINGS, LoadedTeacher
from teacher_service.sources.checkpoint_source import load_checkpoint_teacher
from teacher_service.sources.hf_source import load_hf
from teacher_service.sources.open_clip_source import load_open_clip
from teacher_service.sources.python_source import load_python
from teacher_service.sources.timm_source import load_timm

__all__ = ["SOURCES", "Source", "load_teacher", "parse_teacher"]

Loader = Callable[[str, str | None, str | None], LoadedTeacher]


@dataclass(frozen=True)
class Source:
    """One teacher source: its ``prefix``, ``loader(name, weights, pooling)`` and a usage line."""

    prefix: str
    loader: Loader
    usage: str


SOURCES: dict[str, Source] = {
    "timm": Source("timm", load_timm, "timm:NAME (timm.create_model)"),
    "hf": Source("hf", load_hf, "hf:PATH_OR_ID (transformers AutoModel)"),
    "open_clip": Source("open_clip", load_open_clip, "open_clip:ARCH[@TAG] (encode_image)"),
    "py": Source("py", load_python, "py:MODULE:FUNCTION (your nn.Module factory)"),
    "checkpoint": Source(
        "checkpoint", load_checkpoint_teacher, "PATH (disco, MoCo-v2 or torchvision checkpoint)"
    ),
}
_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]+):(.*)$")


def _valid() -> str:
    return "; ".join(s.usage for s in SOURCES.values())


def parse_teacher(spec: str) -> tuple[str, str]:
    """``(prefix, name)`` of a ``--teacher`` value; an existing file or a spec without a known
    ``prefix:`` is a checkpoint path. An unknown prefix raises ``ConfigError`` listing the
    valid ones."""
    spec = str(spec)
    if os.path.exists(spec):
        return "checkpoint", spec
    match = _PREFIX.match(spec)
    if match is None:
        return "checkpoint", spec
    prefix, name = match.groups()
    if prefix == "checkpoint":
        return prefix, name
    if prefix not in SOURCES:
        raise ConfigError(f"unknown teacher source {prefix!r} in {spec!r}; valid: {_valid()}")
    if not name:
        raise ConfigError(f"teacher {spec!r} names no model; valid: {_valid()}")
    return prefix, name


def load_teacher(
    spec: str,
    weights: str | os.PathLike[str] | None = None,
    pooling: str | None = None,
    device: str | torch.device = "cpu",
) -> LoadedTeacher:
    """Load the teacher ``spec`` (see module docstring) frozen, in eval mode, on ``device``.

    ``weights``: a local ``.safetensors``/``.pth``/``.bin`` state dict or a snapshot folder;
    ``pooling``: cls, mean or cls+mean (ViTs). The model takes uint8 pixels and applies its own
    normalisation. Raises ``ConfigError``/``CheckpointError``/``MissingExtraError``.
    """
    prefix, name = parse_teacher(spec)
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"unknown teacher pooling {pooling!r}; valid: {', '.join(POOLINGS)}")
    wpath = os.fspath(weights) if weights is not None else None
    if wpath is not None and not os.path.exists(wpath):
        raise CheckpointError(f"teacher weights not found: {wpath}")
    try:
        loaded = SOURCES[prefix].loader(name, wpath, pooling)
    except CheckpointError as exc:
        if prefix == "checkpoint" and not os.path.exists(name):
            raise CheckpointError(f"{exc}; other teacher sources: {_valid()}") from None
        raise
    loaded.model.requires_grad_(False)
    loaded.model.eval()
    loaded.model.to(device)
    return loaded
