"""The teacher as the service runs it: a loaded teacher, its view recipe, and one batch forward."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from store.precision import compute_dtype
from store.runtime import autocast, prepare_model, resolve_device, to_device
from store.views import Recipe
from teacher_service.checkpoint import recipe_for
from teacher_service.sources import TeacherModel, load_teacher, to_pixels

__all__ = ["TeacherRuntime", "load_runtime"]


@dataclass
class TeacherRuntime:
    """A frozen teacher in eval mode plus what requests need to render its input views.

    ``recipe`` renders request views (its ``size`` is the model input side S in pixels);
    ``info`` is :func:`teacher_service.sources.load_teacher`'s identity dict. ``encoder`` takes
    uint8 pixels and applies its own normalisation.
    """

    encoder: TeacherModel
    info: dict[str, Any]
    recipe: Recipe
    device: torch.device
    dtype: str

    @property
    def embed_dim(self) -> int:
        """D, the embedding width."""
        return int(self.info["embed_dim"])

    @property
    def sha256(self) -> str:
        """Hex sha256 of the checkpoint file."""
        return str(self.info["sha256"])

    def embed(self, x: torch.Tensor) -> np.ndarray:
        """Embed ``x (B, 3, S, S)`` -> ``(B, D) float32``, L2-normalised.

        ``x`` is uint8 pixels (what the service's renderers give, on the CPU or on the model's
        device) or float32 normalised with ``recipe``'s mean/std (turned back into the exact
        uint8 pixels); the teacher applies its own normalisation.

        Runs under ``torch.inference_mode``; autocast in ``dtype`` (float32 on CPU). On CUDA a CPU
        batch is copied from pinned memory without blocking, in ``channels_last`` layout.
        """
        if x.dtype != torch.uint8:
            x = to_pixels(x, self.recipe.mean, self.recipe.std)
        if self.device.type == "cuda" and x.device.type == "cpu":
            x = x.pin_memory()
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.encoder(to_device(x, self.device), output="embedding")
        out = torch.nn.functional.normalize(out.float(), dim=1)
        return out.cpu().numpy().astype(np.float32, copy=False)

    def describe(self) -> dict[str, Any]:
        """JSON-ready identity: checkpoint info, recipe, device and compute dtype."""
        return {
            "source": self.info.get("source"),
            "name": self.info.get("name"),
            "pooling": self.info.get("pooling"),
            "licence": self.info.get("licence"),
            "mean": self.info.get("mean"),
            "std": self.info.get("std"),
            "arch": self.info.get("arch"),
            "sha256": self.sha256,
            "format": self.info.get("format"),
            "embed_dim": self.embed_dim,
            "feature_dim": self.info.get("feature_dim"),
            "head": self.info.get("head"),
            "embedding": self.info.get("embedding"),
            "bn_mode": self.info.get("bn_mode"),
            "preprocessing": self.info.get("preprocessing"),
            "recipe": self.recipe.to_dict(),
            "device": str(self.device),
            "dtype": self.dtype,
        }


def load_runtime(
    teacher: str | Path,
    device: str = "auto",
    precision: str = "fp32",
    recipe: str | None = None,
    threads: int | None = None,
    size: int | None = None,
    weights: str | Path | None = None,
    pooling: str | None = None,
) -> TeacherRuntime:
    """Load the teacher (any ``--teacher`` spelling, with ``weights``/``pooling``) and pick
    its view recipe.

    The recipe is ``recipe`` / ``size`` (px) where given, else the teacher's recorded ones
    (:func:`teacher_service.checkpoint.recipe_for`, the rule precompute uses too; a timm:/hf:/
    open_clip:/py: teacher: ``mocov2`` at its input size). ``precision`` is ``fp32|bf16|fp16``
    (:mod:`store.precision`; bf16/fp16 need CUDA). Raises ``CheckpointError``/``ConfigError``.
    """
    if threads is not None:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    dtype = compute_dtype(precision, dev.type)  # before loading: a CPU bf16 fails at once
    loaded = load_teacher(str(teacher), weights, pooling, device=dev)
    view_recipe = recipe_for(loaded.info.get("preprocessing"), recipe, size)
    loaded.model.check_size(view_recipe.size)
    # CUDA: channels_last. No cuDNN autotuning: dynamic batches come in every size from 1 to
    # max_batch_size, and each new shape would stall a request while cuDNN re-tunes.
    prepare_model(loaded.model, dev, autotune=False)
    return TeacherRuntime(
        encoder=loaded.model,
        info=loaded.info,
        recipe=view_recipe,
        device=dev,
        dtype=dtype,
    )
