"""Teacher names of a store of several teachers (``disco-store/4``), without zarr or torch.

A store holds one teacher at its root (the only layout before ``disco-store/4``) and any number
of further teachers under ``targets/NAME/``. These helpers name and list them; they import
nothing heavy so the CLI and the configs can check a name before anything loads.
"""

from __future__ import annotations

import re
from typing import Any

from store.errors import ConfigError

__all__ = [
    "ROOT_TARGET",
    "check_target_name",
    "parse_targets",
    "root_target_name",
    "target_names",
]

ROOT_TARGET = "default"
"""Name of the root teacher of a store that never named it (``attrs["root_target"]``)."""
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_target_name(name: str) -> str:
    """``name`` if it is a valid teacher name (letters, digits, ``_.-``, 1-64, starting with a
    letter or digit: it becomes a folder of the store), else ``ConfigError``."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"teacher name {name!r} is not valid: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return name


def root_target_name(attrs: dict[str, Any]) -> str:
    """Name of the root teacher recorded in a store's group ``attrs`` (default ``"default"``)."""
    return str(attrs.get("root_target") or ROOT_TARGET)


def target_names(attrs: dict[str, Any]) -> list[str]:
    """Names of the teachers a store's group ``attrs`` record: the root teacher's (if attached)
    first, then the named ones (``targets/NAME``) sorted."""
    names = [root_target_name(attrs)] if attrs.get("teacher") is not None else []
    return names + sorted(attrs.get("targets") or {})


def parse_targets(spec: str) -> list[tuple[str, float]]:
    """``"a:2,b"`` -> ``[("a", 2.0), ("b", 1.0)]``: teacher names with loss weights (default 1).

    ``ConfigError`` for an empty list, a bad name, a repeated name or a weight that is not a
    positive number."""
    out: list[tuple[str, float]] = []
    for part in spec.split(","):
        name, sep, weight = part.strip().partition(":")
        check_target_name(name)
        try:
            w = float(weight) if sep else 1.0
        except ValueError:
            raise ConfigError(f"teacher {name!r}: weight {weight!r} is not a number") from None
        if not w > 0 or w != w or w == float("inf"):
            raise ConfigError(f"teacher {name!r}: weight must be a positive number, got {weight}")
        if name in (n for n, _ in out):
            raise ConfigError(f"teacher {name!r} is listed twice in {spec!r}")
        out.append((name, w))
    if not out:
        raise ConfigError("name at least one teacher: NAME[:WEIGHT],NAME[:WEIGHT]")
    return out
