"""Project-wide error types. Each subclasses the project base and the matching builtin."""

from __future__ import annotations


class DiscoError(Exception):
    """Base class of every error this project raises on purpose (user-facing, one clear line)."""


class ConfigError(DiscoError, ValueError):
    """A configuration value is invalid (unknown name, out-of-range number, conflicting flags)."""


class DatasetError(DiscoError, ValueError):
    """A dataset spec or directory cannot be used."""


class DecodeError(DatasetError):
    """One image cannot be decoded. ``key`` names the sample, ``reason`` says why."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"cannot decode {key!r}: {reason}")
        self.key = key
        self.reason = reason


class StoreError(DiscoError):
    """A store cannot be opened, read or written."""


class StoreNotFoundError(StoreError, FileNotFoundError):
    """No store exists at the given location."""


class StoreMismatchError(StoreError, ValueError):
    """A store does not match what its consumer expects; ``field`` names the first difference,
    ``hint`` (optional) says what to do about it."""

    def __init__(self, field: str, expected: object, actual: object, hint: str = "") -> None:
        super().__init__(
            f"store mismatch in field {field!r}: expected {expected!r}, store has {actual!r}"
            + (f"; {hint}" if hint else "")
        )
        self.field = field
        self.expected = expected
        self.actual = actual


class CheckpointError(DiscoError, ValueError):
    """A checkpoint cannot be loaded (unsafe pickle, unknown layout, missing or mismatched keys)."""
