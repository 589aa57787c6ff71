"""Student encoders: the shared encoder registry (torchvision layouts and ``timm:NAME``) plus the
MoCo-v2 head, each student's own input normalisation, and the deployed backbone."""

from __future__ import annotations

import copy
from collections.abc import Sequence

from teacher_service.encoders import TIMM_PREFIX, Encoder, EncoderConfig, build_encoder
from teacher_service.timm_models import timm_data_config

__all__ = [
    "build_student",
    "deployed_backbone",
    "resolve_bn_groups",
    "student_config",
    "student_normalisation",
]

MOCO_PER_GPU_BATCH = 32
"""Samples per BN group: the per-GPU batch MoCo's shuffle-BN normalised over."""


def resolve_bn_groups(bn_groups: int, per_rank_batch: int) -> int:
    """Head-BN groups: ``bn_groups`` if set (>= 1), else ``max(1, per_rank_batch // 32)``."""
    if bn_groups >= 1:
        return bn_groups
    return max(1, per_rank_batch // MOCO_PER_GPU_BATCH)


def student_config(
    arch: str,
    embed_dim: int,
    *,
    head_hidden: int = 2048,
    head_bn: bool = True,
    bn_groups: int = 1,
    small_stem: bool = False,
    width: int | None = None,
) -> EncoderConfig:
    """The student's :class:`EncoderConfig`: backbone ``arch`` + MoCo-v2 MLP to ``embed_dim``."""
    return EncoderConfig(
        arch=arch,
        head_hidden=head_hidden,
        head_out=embed_dim,
        head_bn=head_bn,
        bn_groups=bn_groups,
        small_stem=small_stem,
        width=width,
        head=True,
    )


def student_normalisation(
    encoder: Encoder, mean: Sequence[float], std: Sequence[float]
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """The student's own input mean/std (on [0, 1] pixels): a ``timm:NAME`` student's from
    ``timm.data.resolve_model_data_config`` (what timm users feed the exported model), others
    the given recipe ``mean``/``std``."""
    if encoder.config.arch.startswith(TIMM_PREFIX):
        data = timm_data_config(encoder.backbone)
        mean, std = data["mean"], data["std"]
    m = tuple(float(v) for v in mean)
    s = tuple(float(v) for v in std)
    return (m[0], m[1], m[2]), (s[0], s[1], s[2])


def build_student(config: EncoderConfig) -> Encoder:
    """A freshly initialised student (uses the global torch RNG: seed it first)."""
    return build_encoder(config)


def deployed_backbone(encoder: Encoder) -> Encoder:
    """A copy of ``encoder`` without its MLP head (embedding = L2-normalised backbone feature).

    This is what is deployed: the head only serves training, so the deployed parameter count is
    the backbone's, whatever the head width.
    """
    cfg = EncoderConfig.from_dict({**encoder.config.to_dict(), "head": False, "head_bn": False})
    deployed = build_encoder(cfg)
    deployed.backbone.load_state_dict(copy.deepcopy(encoder.backbone.state_dict()))
    return deployed
