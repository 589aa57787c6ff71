"""Device names every command accepts, checked without torch (configs validate them when built;
:func:`store.runtime.resolve_device` turns a checked name into a ``torch.device``)."""

from __future__ import annotations

import re

from store.errors import ConfigError

__all__ = ["DEVICE_NAMES", "parse_device_name"]

DEVICE_NAMES = "auto, cpu, cuda, cuda:N"
"""The device names every command accepts (for help texts and errors)."""

_NAME = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def parse_device_name(name: str) -> tuple[str, int | None]:
    """``(kind, index)`` of a device name: kind ``auto``, ``cpu`` or ``cuda``; index N of
    ``cuda:N``, else None. Raises ``ConfigError`` naming the valid spellings otherwise."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ConfigError(f"unknown device {name!r}; valid: {DEVICE_NAMES}")
    index = match.group(1)
    return name.partition(":")[0], None if index is None else int(index)
