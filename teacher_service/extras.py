"""Optional libraries (the ``models`` extra: timm, transformers, open_clip, safetensors) imported
by name, with a one-line install hint when one is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from store.errors import DiscoError

__all__ = ["EXTRA_HINT", "MissingExtraError", "require"]

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
