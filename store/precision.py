"""The one precision vocabulary of train, precompute, verify and serve: ``fp32|bf16|fp16``.

``--precision`` (``DISCO_PRECISION`` for the service) names the compute precision of a model's
forward: ``fp32`` (default, bit-stable), or CUDA autocast in ``bf16`` / ``fp16``. The same rule
holds everywhere: a reduced precision on a device that is not CUDA is a ``ConfigError`` naming the
flag (CPU paths stay float32; there is no silent fallback), checked by :func:`compute_dtype`
once the device is known. Stores record the resulting dtype name as ``teacher.compute_dtype``
(``float32``, ``bfloat16``, ``float16``: :data:`COMPUTE_DTYPES`).

Old spellings still parse, with one deprecation line on stderr: ``--amp`` (train: a bool meaning
bf16), ``--amp none|bf16|fp16`` (precompute) and ``--dtype float32|bfloat16|float16`` (serve).
Importing this module imports no torch (CLI help stays instant); autocast lives in
``store.runtime`` (its ``autocast`` context).
"""

from __future__ import annotations

import sys
from typing import Literal

from store.errors import ConfigError

__all__ = [
    "COMPUTE_DTYPES",
    "PRECISIONS",
    "Precision",
    "compute_dtype",
    "deprecated",
    "parse_precision",
]

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
"""Valid ``--precision`` values, default first."""

COMPUTE_DTYPES: dict[str, str] = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Precision -> the compute dtype name stores and ``runtime.DTYPES`` use."""

_LEGACY: dict[str, str] = {
    "none": "fp32",
    "float32": "fp32",
    "bfloat16": "bf16",
    "float16": "fp16",
    "true": "bf16",
    "false": "fp32",
}


def deprecated(old: str, new: str) -> None:
    """Print the one deprecation line of an old flag spelling to stderr."""
    print(f"warning: {old} is deprecated; use {new}", file=sys.stderr)


def parse_precision(value: str | bool | None, old_flag: str | None = None) -> str:
    """The canonical precision (``fp32|bf16|fp16``) of ``value``.

    ``None`` is ``fp32``; a canonical name passes through. An old spelling (``none``,
    ``float32``, ``bfloat16``, ``float16``, or a bool from train's ``--amp``) is translated, with
    one deprecation line naming ``old_flag`` when given. Anything else raises ``ConfigError``
    listing the valid values.
    """
    if value is None:
        return "fp32"
    text = str(value).strip().lower()
    if text in PRECISIONS:
        if old_flag is not None:
            deprecated(f"{old_flag} {value}", f"--precision {text}")
        return text
    if text in _LEGACY:
        new = _LEGACY[text]
        if old_flag is not None:
            shown = old_flag if isinstance(value, bool) else f"{old_flag} {value}"
            deprecated(shown, f"--precision {new}")
        return new
    raise ConfigError(f"unknown precision {value!r}; valid: {', '.join(PRECISIONS)}")


def compute_dtype(precision: str, device_type: str) -> str:
    """The compute dtype name of ``precision`` on a device of type ``device_type`` (``cpu``,
    ``cuda``...): ``float32`` / ``bfloat16`` / ``float16``.

    Raises ``ConfigError`` for a reduced precision off CUDA (the same clear error in every
    command: CPU paths run float32 only) and for an unknown name.
    """
    name = parse_precision(precision)
    if name != "fp32" and device_type != "cuda":
        raise ConfigError(
            f"--precision {name} needs a CUDA device (got {device_type}); "
            "CPU runs use --precision fp32"
        )
    return COMPUTE_DTYPES[name]
