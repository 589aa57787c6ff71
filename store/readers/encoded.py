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
import os
from typing import Any

import numpy as np

from store.dataset_base import ImageDataset
from store.decode import decode_image, probe_bytes
from store.remote import url_to_fs

__all__ = ["EncodedDataset"]


class EncodedDataset(ImageDataset):
    """An :class:`ImageDataset` of encoded images; subclasses implement :meth:`read_bytes`."""

    probe_in_pool = True
    max_pixels: int | None = None
    """Refuse images with more pixels than this (decompression bombs); None = no limit."""
    url: str = ""
    """A path or URL naming the filesystem the samples live on ("" for none)."""
    storage_options: dict[str, Any] = {}  # noqa: RUF012 - replaced per instance, never mutated
    """fsspec options for ``url``, resolved when the dataset was opened (``store.remote``), so
    every process that gets a copy reads with the same ones."""
    _transient: tuple[str, ...] = ()
    """Attributes (open files, caches) dropped when pickled and re-made lazily."""

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of :attr:`url` in this process. Made again after a fork or an
        unpickle: an object-storage client does not survive either (fsspec refuses to reuse an
        async filesystem in a forked DataLoader worker)."""
        held = self.__dict__.get("_fs")
        if held is None or held[0] != os.getpid():
            held = (os.getpid(), url_to_fs(self.url, self.storage_options)[0])
            self.__dict__["_fs"] = held
        return held[1]

    def _this_process(self) -> None:
        """Reset the ``_transient`` state when this object has crossed a fork (a manifest pool,
        DataLoader workers): open files, object-storage clients and locks of the parent are not
        safe to share."""
        if self.__dict__.get("_pid") != os.getpid():
            self._init_transient()
            self.__dict__["_pid"] = os.getpid()

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

    def probe(self, i: int) -> tuple[int, int, str, str | None]:
        """``(height, width, sha256 hex, error)`` of sample ``i`` from one read of its bytes: the
        hash of all bytes and the size from the image header (``store.decode.image_size``), as
        ImageFolder probes a file; pixel data damaged behind a good header is caught later, when
        precompute decodes it."""
        return probe_bytes(lambda: self.read_bytes(i), self.keys[i], self.max_pixels)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in (*self._transient, "_fs", "_pid"):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_transient()

    def _init_transient(self) -> None:
        """Set the ``_transient`` attributes to their empty state (after unpickling, too)."""
