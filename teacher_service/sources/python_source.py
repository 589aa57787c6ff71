"""``py:MODULE:FUNCTION`` teachers: any ``nn.Module`` a user's own factory returns.

``FUNCTION()`` returns the module, or ``(module, preprocessing)`` with ``preprocessing`` a dict of
``mean``, ``std`` (3 numbers each, on [0, 1] pixels), ``size`` (input side, px) and optionally
``interpolation``, ``patch_size``, ``licence``; without it ImageNet mean/std at 224 px are assumed
(and recorded as assumed). ``module(x)`` maps normalised ``(B, 3, S, S)`` float32 to the embedding
``(B, D)``, or to a ``(feature (B, F), embedding (B, D))`` pair. ``--teacher-weights`` is loaded
into the module with strict key matching. ``MODULE`` must be importable (``PYTHONPATH``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from store.errors import ConfigError
from teacher_service.sources.base import LoadedTeacher, build_teacher
from teacher_service.weights import load_strict, read_state_dict, state_sha256, weights_sha256

__all__ = ["FactoryNet", "load_python"]

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "size": 224}


class FactoryNet(nn.Module):
    """``x -> (feature, embedding)`` around a user's module (see module docstring)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` normalised -> ``((B, F), (B, D))``."""
        out = self.module(x)
        if isinstance(out, tuple | list) and len(out) == 2:
            return out[0], out[1]
        if not isinstance(out, torch.Tensor):
            raise ConfigError(
                f"the factory's module returned {type(out).__name__}; expected a (B, D) tensor "
                "or a (feature, embedding) pair"
            )
        return out, out


def load_python(name: str, weights: str | None, pooling: str | None) -> LoadedTeacher:
    """The ``py:MODULE:FUNCTION`` teacher (see module docstring)."""
    if pooling is not None:
        raise ConfigError("--teacher-pooling is not supported for py: teachers")
    module_name, sep, func_name = name.rpartition(":")
    if not sep or not module_name or not func_name:
        raise ConfigError(f"py teacher must be py:MODULE:FUNCTION, got py:{name}")
    try:
        mod = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"py:{name}: cannot import {module_name!r} ({exc})") from None
    factory = getattr(mod, func_name, None)
    if not callable(factory):
        raise ConfigError(f"py:{name}: {module_name} has no function {func_name!r}")
    made: Any = factory()
    pre: Mapping[str, Any] = {}
    if isinstance(made, tuple):
        made, pre = made
    if not isinstance(made, nn.Module):
        raise ConfigError(f"py:{name} returned {type(made).__name__}, not an nn.Module")
    assumed = not pre
    pre = {**IMAGENET, **dict(pre)}
    if weights:
        load_strict(made, read_state_dict(weights), f"py:{name} <- {weights}")
    sha = weights_sha256(weights) if weights else state_sha256(made)
    return build_teacher(
        FactoryNet(made),
        source="py",
        name=name,
        mean=pre["mean"],
        std=pre["std"],
        input_size=int(pre["size"]),
        interpolation=str(pre.get("interpolation", "bilinear")),
        sha256=sha,
        weights=weights,
        embedding="module(x)",
        patch_size=pre.get("patch_size"),
        dynamic_size=bool(pre.get("dynamic_size", True)),
        licence=pre.get("licence"),
        extra={"preprocessing_assumed": assumed},
    )
