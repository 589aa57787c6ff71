"""Teacher side: encoders, checkpoints, the precompute job and cache verification.

(The HTTP service lives in ``teacher_service.service`` and is not re-exported here.)

The names load from their modules on first use (``store.lazy``): importing the package, as
``disco --help`` does, imports no torch, zarr or torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from teacher_service.checkpoint import (
        FORMAT,
        LoadedEncoder,
        file_sha256,
        load_encoder,
        save_checkpoint,
    )
    from teacher_service.config import PrecomputeConfig, VerifyConfig
    from teacher_service.encoders import (
        ARCHS,
        Encoder,
        EncoderConfig,
        ProjectionHead,
        build_encoder,
        count_parameters,
    )
    from teacher_service.precompute import PrecomputeReport, run_precompute
    from teacher_service.verify import VerifyResult, verify_store

__all__ = [
    "ARCHS",
    "FORMAT",
    "Encoder",
    "EncoderConfig",
    "LoadedEncoder",
    "PrecomputeConfig",
    "PrecomputeReport",
    "ProjectionHead",
    "VerifyConfig",
    "VerifyResult",
    "build_encoder",
    "count_parameters",
    "file_sha256",
    "load_encoder",
    "run_precompute",
    "save_checkpoint",
    "verify_store",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ARCHS": "teacher_service.encoders",
        "FORMAT": "teacher_service.checkpoint",
        "Encoder": "teacher_service.encoders",
        "EncoderConfig": "teacher_service.encoders",
        "LoadedEncoder": "teacher_service.checkpoint",
        "PrecomputeConfig": "teacher_service.config",
        "PrecomputeReport": "teacher_service.precompute",
        "ProjectionHead": "teacher_service.encoders",
        "VerifyConfig": "teacher_service.config",
        "VerifyResult": "teacher_service.verify",
        "build_encoder": "teacher_service.encoders",
        "count_parameters": "teacher_service.encoders",
        "file_sha256": "teacher_service.checkpoint",
        "load_encoder": "teacher_service.checkpoint",
        "run_precompute": "teacher_service.precompute",
        "save_checkpoint": "teacher_service.checkpoint",
        "verify_store": "teacher_service.verify",
    },
)
