"""``py:MODULE:FUNCTION``: a user's own dataset, from a factory function.

``FUNCTION(**options)`` (options from the spec, ``py:mydata:make?root=/data&part=train``, as
strings) returns an object with this protocol — the same contract idea as the ``py:`` teacher:

* ``__len__()`` — the number of samples N; the order is fixed.
* ``key(i) -> str`` — a unique, stable name of sample ``i`` (a path, an id).
* ``label(i) -> int | str`` — its class index, or class name (-1, None or "" = no label).
* ``encoded(i) -> bytes`` — its encoded image bytes (JPEG, PNG, ...); the content hash of the
  sample is their sha256, so a changed image is caught.
* ``decode(data: bytes) -> numpy array`` (optional) — bytes -> (H, W, 3) uint8 RGB; without it
  the project's decoder (``store.decode.decode_image``) is used, which is what ImageFolder uses.
* ``classes`` (optional attribute) — class names, when ``label`` returns integers.

``MODULE`` must be importable in every process that opens the dataset (``PYTHONPATH``): DataLoader
workers, torchrun ranks and the service re-create the object by calling the factory again (the
object itself is never pickled), so it must be cheap to build and give the same samples each time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.errors import DatasetError, DecodeError
from store.readers.encoded import EncodedDataset
from store.readers.options import first_duplicate, label_values

__all__ = ["PROTOCOL", "PythonDataset", "open_python"]

PROTOCOL = ("__len__", "key", "label", "encoded")
"""Methods the factory's object must have (``decode`` and ``classes`` are optional)."""


class PythonDataset(EncodedDataset):
    """The dataset a ``py:MODULE:FUNCTION`` factory returns (see module docstring)."""

    _transient = ("_obj",)

    def __init__(self, spec: str, target: str, kwargs: Mapping[str, str]) -> None:
        module, sep, func = target.rpartition(":")
        if not sep or not module or not func:
            raise DatasetError(f"py dataset must be py:MODULE:FUNCTION, got py:{target}")
        self.spec = spec
        self.target = target
        self.kwargs = dict(kwargs)
        obj = self._user()
        n = len(obj)
        if n <= 0:
            raise DatasetError(f"py:{target} returned an empty dataset")
        try:
            keys = [str(obj.key(i)) for i in range(n)]
            raw = [obj.label(i) for i in range(n)]
        except Exception as exc:  # the user's code: report any failure as one line
            raise DatasetError(f"py:{target}: key()/label() failed: {exc!r}") from None
        dup = first_duplicate(keys)
        if dup is not None:
            raise DatasetError(f"py:{target}: key(i) must be unique; {dup!r} repeats")
        names = getattr(obj, "classes", None)
        self.keys = keys
        self.labels, self.classes = label_values(raw, list(names) if names else None)

    def _user(self) -> Any:
        """The factory's object, made once per process (again after a fork: a user's open files
        must not be shared by two processes)."""
        self._this_process()
        obj = self.__dict__.get("_obj")
        if obj is not None:
            return obj
        module_name, _, func_name = self.target.rpartition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise DatasetError(f"py:{self.target}: cannot import {module_name!r} ({exc})") from None
        factory = getattr(module, func_name, None)
        if not callable(factory):
            raise DatasetError(f"py:{self.target}: {module_name} has no function {func_name!r}")
        try:
            obj = factory(**self.kwargs)
        except TypeError as exc:
            raise DatasetError(
                f"py:{self.target}: the factory refused the options: {exc}"
            ) from None
        missing = [name for name in PROTOCOL if not callable(getattr(obj, name, None))]
        if missing:
            raise DatasetError(
                f"py:{self.target} returned {type(obj).__name__} without {', '.join(missing)} "
                f"(the protocol: {', '.join(PROTOCOL)}, optional decode, classes)"
            )
        self._obj = obj
        return obj

    def _init_transient(self) -> None:
        self._obj = None

    def read_bytes(self, i: int) -> bytes:
        """``encoded(i)`` of the user's object; its failures become ``DecodeError`` for the key."""
        try:
            data = self._user().encoded(i)
        except DatasetError:
            raise
        except Exception as exc:  # the user's code
            raise DecodeError(self.keys[i], f"encoded({i}) failed: {exc!r}") from None
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(self.keys[i], f"encoded({i}) returned {type(data).__name__}")
        return bytes(data)

    def probe(self, i: int) -> tuple[int, int, str, str | None]:
        """As :meth:`EncodedDataset.probe` (header size), or a full decode when the user's object
        decodes its bytes itself (its output size need not be the header's)."""
        if getattr(self._user(), "decode", None) is not None:
            return ImageDataset.probe(self, i)
        return super().probe(i)

    def decode(self, data: bytes, key: str) -> np.ndarray:
        """The user's ``decode`` if it has one (checked: (H, W, 3) uint8), else the project's."""
        user = getattr(self._user(), "decode", None)
        if user is None:
            return super().decode(data, key)
        try:
            image = np.asarray(user(data))
        except Exception as exc:  # the user's code
            raise DecodeError(key, f"decode failed: {exc!r}") from None
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DecodeError(
                key, f"decode returned {image.dtype} {image.shape}, not (H, W, 3) uint8"
            )
        return np.ascontiguousarray(image)


def open_python(
    spec: str,
    target: str | None,
    options: Mapping[str, str],
    storage_options: Mapping[str, Any] | None = None,
) -> PythonDataset:
    """The ``py:MODULE:FUNCTION`` dataset; spec options become the factory's keyword arguments.

    ``storage_options`` are not passed on: a user's loader reaches its own storage.
    """
    if not target:
        raise DatasetError("py needs a factory: py:MODULE:FUNCTION")
    return PythonDataset(spec, target, options)
