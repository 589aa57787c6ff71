"""The base of every reader whose samples are encoded image files (JPEG, PNG, ...) in a container.

A reader only says how to fetch sample ``i``'s encoded bytes (:meth:`EncodedDataset.read_bytes`);
decoding and hashing are shared, so the content hash of a sample is the sha256 of the very bytes
an ImageFolder file with the same content would have, and the pixels are the same ones
(``store.decode.decode_image``). A manifest built in a process pool calls ``read_bytes`` (header
sizes, hashes) and ``decode`` apart, so readers keep no state that cannot be pickled: open handles
and caches are dropped by ``__getstate__`` and re-made on first use in the new process.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.decode import decode_image

__all__ = ["EncodedDataset"]


class EncodedDataset(ImageDataset):
    """An :class:`ImageDataset` of encoded images; subclasses implement :meth:`read_bytes`."""

    max_pixels: int | None = None
    """Refuse images with more pixels than this (decompression bombs); None = no limit."""
    _transient: tuple[str, ...] = ()
    """Attributes (open files, caches) dropped when pickled and re-made lazily."""

    def read_bytes(self, i: int) -> bytes:
        """Encoded bytes of sample ``i``; raises ``DecodeError`` naming its key if unreadable."""
        raise NotImplementedError

    def decode(self, data: bytes, key: str) -> np.ndarray:
        """Encoded bytes -> (H, W, 3) uint8 RGB (``store.decode.decode_image``)."""
        return decode_image(data, key, self.max_pixels)

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Read sample ``i`` once: ((H, W, 3) uint8, hex sha256 of its encoded bytes)."""
        data = self.read_bytes(i)
        return self.decode(data, self.keys[i]), hashlib.sha256(data).hexdigest()

    def sha256(self, i: int) -> str:
        """Hex sha256 of sample ``i``'s encoded bytes (no decode; also for undecodable ones)."""
        return hashlib.sha256(self.read_bytes(i)).hexdigest()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._transient:
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_transient()

    def _init_transient(self) -> None:
        """Set the ``_transient`` attributes to their empty state (after unpickling, too)."""
