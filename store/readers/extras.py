"""The ``data`` extra (pyarrow, datasets, webdataset + braceexpand), imported by name when a reader
needs it, with a one-line install hint when it is missing."""

from __future__ import annotations

import importlib
from types import ModuleType

from store.errors import DatasetError

__all__ = ["DATA_HINT", "require"]

DATA_HINT = "pip install 'disco-cache[data]'"


def require(module: str, spec: str) -> ModuleType:
    """Import ``module`` for the dataset ``spec``; a missing package raises DatasetError naming it
    and the pip command, in one line."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise DatasetError(
            f"{spec} needs the {module.split('.')[0]!r} package ({exc.name or module} is not "
            f"installed): {DATA_HINT}"
        ) from None
