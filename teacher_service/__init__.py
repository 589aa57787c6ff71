"""Teacher side: encoders, checkpoints, the precompute job and cache verification.

(The HTTP service lives in ``teacher_service.service`` and is not re-exported here.)
"""

from teacher_service.checkpoint import (
    FORMAT,
    LoadedEncoder,
    file_sha256,
    load_encoder,
    save_checkpoint,
)
from teacher_service.encoders import (
    ARCHS,
    Encoder,
    EncoderConfig,
    ProjectionHead,
    build_encoder,
    count_parameters,
)
from teacher_service.precompute import PrecomputeConfig, PrecomputeReport, run_precompute
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
    "VerifyResult",
    "build_encoder",
    "count_parameters",
    "file_sha256",
    "load_encoder",
    "run_precompute",
    "save_checkpoint",
    "verify_store",
]
