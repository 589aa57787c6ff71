"""What every teacher source builds: a :class:`TeacherModel` that normalises its own input.

A source adapter wraps a library model as ``net``: ``(B, 3, S, S) float32`` normalised with the
model's own mean/std -> ``(feature (B, F), embedding (B, D))`` (the embedding not yet
L2-normalised). :class:`TeacherModel` adds the model's normalisation in front and the L2
normalisation behind, so every consumer (precompute, verify, the service, an online teacher)
hands it **pixels**: ``(B, 3, S, S)`` uint8, the view exactly as rendered.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import ConfigError
from teacher_service.config import POOLINGS
from teacher_service.extras import MissingExtraError, require
from teacher_service.weights import (
    read_state_dict,
    weights_sha256,
)

__all__ = [
    "OUTPUTS",
    "POOLINGS",
    "LoadedTeacher",
    "MissingExtraError",
    "TeacherModel",
    "read_state_dict",
    "require",
    "to_pixels",
    "weights_sha256",
]

OUTPUTS = ("embedding", "feature", "both")


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Invert ``(u / 255 - mean) / std``: ``(B, 3, S, S)`` float32 normalised -> uint8 pixels.

    Exact for views rendered by ``store.views`` (uint8 throughout, normalised last): the float32
    round trip is off by far less than half a grey level, so rounding recovers every byte.
    """
    m = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return (x.float() * s + m).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)


class TeacherModel(nn.Module):
    """A frozen teacher on uint8 pixels: own normalisation -> ``net`` -> L2-normalised embedding.

    ``net(x)`` maps ``(B, 3, S, S)`` float32 normalised with ``mean``/``std`` to
    ``(feature (B, F), embedding (B, D))``. Attributes: ``embed_dim`` D, ``feature_dim`` F,
    ``input_size`` (the model's native side, px), ``patch_size`` (ViTs, else None),
    ``dynamic_size`` (True: any size (a multiple of the patch) works; False: only
    ``input_size``, e.g. a fixed position embedding).
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        embed_dim: int,
        feature_dim: int,
        input_size: int,
        patch_size: int | None = None,
        dynamic_size: bool = True,
    ) -> None:
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ConfigError(f"teacher mean/std must be 3 numbers, std > 0: {mean} / {std}")
        self.net = net
        self.register_buffer("mean", torch.tensor([float(v) for v in mean]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([float(v) for v in std]).view(1, 3, 1, 1))
        self.embed_dim = int(embed_dim)
        self.feature_dim = int(feature_dim)
        self.input_size = int(input_size)
        self.patch_size = patch_size
        self.dynamic_size = dynamic_size

    def check_size(self, size: int) -> None:
        """Raise ``ConfigError`` if square views of ``size`` px cannot go through this model."""
        if self.patch_size is not None and size % self.patch_size:
            raise ConfigError(
                f"view size {size} px is not a multiple of the teacher's patch size "
                f"{self.patch_size} (its patch grid would not cover the view); use --size "
                f"{self.input_size} (the teacher's input size) or another multiple of "
                f"{self.patch_size}"
            )
        if not self.dynamic_size and size != self.input_size:
            raise ConfigError(
                f"this teacher takes {self.input_size} px views only (fixed position "
                f"embedding), got {size}; use --size {self.input_size}"
            )

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, S, S)`` uint8 (or float pixels 0..255) -> float32 ``(x/255 - mean)/std``."""
        if x.dtype != torch.uint8 and not x.is_floating_point():
            raise ConfigError(f"teacher input must be uint8 pixels, got {x.dtype}")
        mean = self.mean
        std = self.std
        assert isinstance(mean, torch.Tensor) and isinstance(std, torch.Tensor)
        return x.to(torch.float32).div(255.0).sub(mean).div(std)

    def forward(
        self, x: torch.Tensor, output: str = "embedding"
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``x`` ``(B, 3, S, S)`` uint8 pixels -> "embedding" ``(B, D)`` float32 L2-normalised,
        "feature" ``(B, F)`` backbone feature, or "both" ``(feature, embedding)``."""
        if output not in OUTPUTS:
            raise ConfigError(f"unknown output {output!r}; valid: {', '.join(OUTPUTS)}")
        feature, z = self.net(self.normalise(x))
        if output == "feature":
            return feature
        embedding = F.normalize(z.float(), dim=1)
        return (feature, embedding) if output == "both" else embedding


@dataclass
class LoadedTeacher:
    """A teacher ready to run (eval mode, frozen) and its identity.

    ``info`` is what a store records as its ``teacher`` attrs: source, name, spec, sha256,
    revision, pooling, licence, mean, std, input_size, embed_dim, feature_dim, preprocessing ...
    """

    model: TeacherModel
    info: dict[str, Any] = field(default_factory=dict)


def preprocessing_dict(
    size: int, mean: Sequence[float], std: Sequence[float], interpolation: str
) -> dict[str, Any]:
    """The ``preprocessing`` block recorded for a teacher (same keys as project checkpoints)."""
    return {
        "size": int(size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": str(interpolation),
        "antialias": True,
        "recipe": None,
    }


def build_teacher(
    net: nn.Module,
    *,
    source: str,
    name: str,
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
    interpolation: str,
    sha256: str,
    weights: str | None,
    embedding: str,
    patch_size: int | None = None,
    dynamic_size: bool = True,
    revision: str | None = None,
    pooling: str | None = None,
    licence: str | None = None,
    extra: dict[str, Any] | None = None,
) -> LoadedTeacher:
    """Wrap ``net`` in a :class:`TeacherModel` (eval mode, frozen) and describe it.

    The dimensions D and F come from one forward of a grey ``(2, 3, s, s)`` batch (``s`` = the
    input size, at most 64 px for models that take any size). ``embedding`` says in words which
    output is the embedding (recorded in the store).
    """
    net.requires_grad_(False)
    net.eval()
    side = int(input_size)
    if dynamic_size and side > 64:
        side = 64 - 64 % patch_size if patch_size else 64
    with torch.inference_mode():
        feature, z = net(torch.zeros(2, 3, side, side))
    if feature.dim() != 2 or z.dim() != 2:
        raise ConfigError(
            f"{source}:{name} must give (B, F) features and (B, D) embeddings, got "
            f"{tuple(feature.shape)} and {tuple(z.shape)}"
        )
    model = TeacherModel(
        net,
        mean,
        std,
        embed_dim=int(z.shape[1]),
        feature_dim=int(feature.shape[1]),
        input_size=int(input_size),
        patch_size=patch_size,
        dynamic_size=dynamic_size,
    )
    model.requires_grad_(False)
    model.eval()
    pre = preprocessing_dict(input_size, mean, std, interpolation)
    info: dict[str, Any] = {
        "source": source,
        "name": name,
        "spec": f"{source}:{name}",
        "arch": f"{source}:{name}",
        "weights": os.path.basename(os.path.normpath(weights)) if weights else None,
        "sha256": sha256,
        "revision": revision,
        "pooling": pooling,
        "licence": licence,
        "embedding": embedding,
        "embed_dim": model.embed_dim,
        "feature_dim": model.feature_dim,
        "mean": pre["mean"],
        "std": pre["std"],
        "input_size": int(input_size),
        "patch_size": patch_size,
        "dynamic_size": dynamic_size,
        "bn_mode": "eval",
        "preprocessing": pre,
    }
    info.update(extra or {})
    return LoadedTeacher(model=model, info=info)
