"""Teacher checkpoints by path (no prefix): this project's format, FAIR/DisCo MoCo-v2 files and
torchvision state dicts, read by :func:`teacher_service.checkpoint.load_encoder`.

The encoder expects input normalised with the checkpoint's recorded mean/std (the recipe it was
trained with; ImageNet for foreign files), so that is the teacher's own normalisation here.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from store.errors import ConfigError
from teacher_service.checkpoint import load_encoder, recipe_for
from teacher_service.encoders import Encoder
from teacher_service.sources.base import LoadedTeacher, TeacherModel

__all__ = ["EncoderNet", "load_checkpoint_teacher"]


class EncoderNet(nn.Module):
    """``x -> (feature, embedding)`` of a project :class:`Encoder`."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, S, S)`` normalised -> ``((B, F), (B, D))``."""
        out = self.encoder(x, output="both")
        assert isinstance(out, tuple)
        return out


def load_checkpoint_teacher(path: str, weights: str | None, pooling: str | None) -> LoadedTeacher:
    """A checkpoint file as a teacher; ``info`` = the loader's info + source/name/mean/std."""
    if weights is not None:
        raise ConfigError(
            f"--teacher-weights does not apply to a checkpoint file ({path} holds the weights)"
        )
    if pooling is not None:
        raise ConfigError("--teacher-pooling applies to ViT teachers (timm:, hf:) only")
    loaded = load_encoder(path)
    pre = dict(loaded.info["preprocessing"])
    size = int(pre.get("size") or 224)
    if pre.get("mean") is None or pre.get("std") is None:
        # A file that records only its recipe: the recipe's normalisation is what its views,
        # and so its training inputs, were normalised with.
        recipe = recipe_for(pre)
        for key, value in (("mean", recipe.mean), ("std", recipe.std)):
            if pre.get(key) is None:
                pre[key] = list(value)
    model = TeacherModel(
        EncoderNet(loaded.encoder),
        pre["mean"],
        pre["std"],
        embed_dim=loaded.encoder.embed_dim,
        feature_dim=loaded.encoder.feature_dim,
        input_size=size,
    )
    model.requires_grad_(False)
    model.eval()
    info = {
        **loaded.info,
        "source": "checkpoint",
        "name": os.path.basename(path),
        "mean": [float(v) for v in pre["mean"]],
        "std": [float(v) for v in pre["std"]],
        "input_size": size,
    }
    return LoadedTeacher(model=model, info=info)
