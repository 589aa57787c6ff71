"""The teacher-source registry: ``--teacher`` spellings -> loaders.

``timm:NAME``, ``hf:PATH_OR_ID``, ``open_clip:ARCH``, ``py:MODULE:FUNCTION``, or a checkpoint
path (no prefix). An unknown prefix fails with the list of valid ones.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

from store.errors import CheckpointError
from teacher_service.config import TEACHER_SOURCES, check_pooling, parse_teacher, valid_teachers
from teacher_service.sources.base import LoadedTeacher
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
    "timm": Source("timm", load_timm, TEACHER_SOURCES["timm"]),
    "hf": Source("hf", load_hf, TEACHER_SOURCES["hf"]),
    "open_clip": Source("open_clip", load_open_clip, TEACHER_SOURCES["open_clip"]),
    "py": Source("py", load_python, TEACHER_SOURCES["py"]),
    "checkpoint": Source("checkpoint", load_checkpoint_teacher, TEACHER_SOURCES["checkpoint"]),
}
assert set(SOURCES) == set(TEACHER_SOURCES)


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
    check_pooling(pooling)
    wpath = os.fspath(weights) if weights is not None else None
    if wpath is not None and not os.path.exists(wpath):
        raise CheckpointError(f"teacher weights not found: {wpath}")
    try:
        loaded = SOURCES[prefix].loader(name, wpath, pooling)
    except CheckpointError as exc:
        if prefix == "checkpoint" and not os.path.exists(name):
            raise CheckpointError(f"{exc}; other teacher sources: {valid_teachers()}") from None
        raise
    loaded.model.requires_grad_(False)
    loaded.model.eval()
    loaded.model.to(device)
    return loaded
