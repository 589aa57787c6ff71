"""What every teacher source builds: a :class:`TeacherModel` that normalises its own input.

A source adapter wraps a library model as ``net``: ``(B, 3, S, S) float32`` normalised with the
model's own mean/std -> ``(feature (B, F), embedding (B, D))`` (the embedding not yet
L2-normalised). :class:`TeacherModel` adds the model's normalisation in front and the L2
normalisation behind, so every consumer (precompute, verify, the service, an online teacher)
hands it **pixels**: ``(B, 3, S, S)`` uint8, the view exactly as rendered.
"""

from __future__ import annotations

import hashlib
import importlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from store.errors import CheckpointError, ConfigError, DiscoError
from teacher_service.config import POOLINGS

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

EXTRA_HINT = "pip install 'disco-cache[models]'"


class MissingExtraError(DiscoError, ImportError):
    """An optional library (the ``models`` extra) is not installed."""


def require(module: str, source: str) -> ModuleType:
    """Import ``module`` for teacher/student ``source``; a missing package raises
    :class:`MissingExtraError` with the pip command in one line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{source} needs the {module.split('.')[0]!r} package ({exc.name or module} is not "
            f"installed): {EXTRA_HINT}"
        ) from None


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


def _hash_file(path: Path, h: Any) -> None:
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)


WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def weights_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a weights file; for a snapshot folder, of its weight files' names and bytes
    (``*.safetensors``, ``*.bin``, ``*.pth``, ``*.pt`` in sorted order)."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
        if not files:
            raise CheckpointError(f"no weight files (*.safetensors, *.bin, *.pth) in {p}")
        for f in files:
            h.update(str(f.relative_to(p)).encode())
            _hash_file(f, h)
    else:
        _hash_file(p, h)
    return h.hexdigest()


def state_sha256(module: nn.Module) -> str:
    """Hex sha256 over a module's state dict (names, dtypes, shapes, bytes): the identity of
    weights that did not come from a local file (a library's own download)."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        # reshape(-1): a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes; for every other tensor the bytes, and so the digest, are unchanged.
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """A flat ``{name: tensor}`` from ``.safetensors`` or a ``torch.save``'d file (loaded with
    ``weights_only=True``; ``{"state_dict": ...}``/``{"model": ...}`` wrappers and a ``module.``
    prefix are unwrapped). Raises ``CheckpointError``."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"teacher weights not found: {p}")
    if p.suffix == ".safetensors":
        st = require("safetensors.torch", "reading .safetensors weights")
        try:
            state: Any = st.load_file(str(p), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"cannot read {p}: {str(exc).splitlines()[0]}") from None
    else:
        from teacher_service.checkpoint import read_checkpoint

        state = read_checkpoint(p)
        for key in ("state_dict", "model"):
            if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise CheckpointError(f"{p} is not a state dict (a flat mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """``module.load_state_dict(state, strict=True)`` with a one-line ``CheckpointError`` naming
    the first missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
        for k in state
        if k in own and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    problems = [
        f"{label}: {', '.join(keys[:8])}{' ...' if len(keys) > 8 else ''}"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(f"{what}: weights do not fit the model ({'; '.join(problems)})")
    module.load_state_dict(dict(state), strict=True)


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
