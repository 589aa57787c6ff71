"""Lazy package re-exports: a package ``__init__`` names its public API without importing it.

``__getattr__, __dir__ = lazy_exports(__name__, {"Name": "package.module", ...})`` in a package's
``__init__`` makes ``package.Name`` import ``package.module`` on first use (PEP 562), so importing
the package (the CLI does, for ``--help``) stays cheap: no torch, zarr or torchvision.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, names: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """Module ``__getattr__`` and ``__dir__`` for ``package`` exporting ``names`` (name -> module).

    ``__getattr__(name)`` imports the module, caches the value in the package namespace and
    returns it; an unknown name raises ``AttributeError`` as a plain module would.
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = names.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
