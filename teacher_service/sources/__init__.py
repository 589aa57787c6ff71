"""Teacher sources: timm, Hugging Face transformers, OpenCLIP, a user's factory, checkpoints.

Each source is a small adapter (one module each) that builds a :class:`TeacherModel`: uint8
pixels in, the model's own normalisation, the L2-normalised final embedding ``(B, D)`` and the
backbone feature ``(B, F)`` out. :func:`load_teacher` looks a ``--teacher`` spelling up in
:data:`SOURCES`.
"""

from teacher_service.sources.base import (
    POOLINGS,
    LoadedTeacher,
    MissingExtraError,
    TeacherModel,
    read_state_dict,
    require,
    to_pixels,
    weights_sha256,
)
from teacher_service.sources.registry import SOURCES, Source, load_teacher, parse_teacher

__all__ = [
    "POOLINGS",
    "SOURCES",
    "LoadedTeacher",
    "MissingExtraError",
    "Source",
    "TeacherModel",
    "load_teacher",
    "parse_teacher",
    "read_state_dict",
    "require",
    "to_pixels",
    "weights_sha256",
]
