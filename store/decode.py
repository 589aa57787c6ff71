"""Decode image bytes to RGB uint8 arrays, refusing anything undecodable or too large.

How inputs are normalised (one rule per mode, applied after EXIF orientation):

* EXIF orientation: the ``Orientation`` tag is applied with ``PIL.ImageOps.exif_transpose``,
  so the array is upright as a viewer shows it.
* Animated images (GIF, APNG, WebP): the first frame only.
* ``L``/``1``/``P``/``RGB``/``CMYK``/``YCbCr``/``LAB``/``HSV``: ``Image.convert("RGB")``
  (palette looked up; CMYK by PIL's naive ink inversion).
* ``LA``/``PA``/``RGBA``/``P`` with transparency: alpha is dropped (``convert("RGB")``), as in
  torchvision's default ``pil_loader``, so pixels match what torchvision-trained teachers saw.
* 16/32-bit integer greyscale (``I;16*``, ``I``): values are taken as 16-bit (clipped to
  0..65535) and reduced to 8 bits by ``v >> 8``, then replicated to three channels.
* 32-bit float greyscale (``F``): clipped to 0..255 and truncated, then replicated.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from store.errors import DecodeError

__all__ = ["decode_image", "image_size", "load_image_file", "probe_bytes"]

_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_EXIF_ORIENTATION = 0x0112
_SWAPS_AXES = (5, 6, 7, 8)
"""EXIF orientations that rotate by 90 degrees: the upright size is the header's transposed."""


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Convert a loaded PIL image of any mode to an (H, W, 3) uint8 array."""
    mode = img.mode
    if mode in _HIGH_BIT_MODES:
        arr = np.asarray(img).astype(np.int64)
        grey = (np.clip(arr, 0, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)
        grey = np.clip(arr, 0.0, 255.0).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode != "RGB":
        img = img.convert("RGB")
    return np.ascontiguousarray(np.asarray(img, dtype=np.uint8))


def decode_image(data: bytes, key: str = "<bytes>", max_pixels: int | None = None) -> np.ndarray:
    """Decode encoded image bytes (any format Pillow reads) to an (H, W, 3) uint8 RGB array.

    ``max_pixels`` (H * W) is checked from the header BEFORE pixel data is decoded, so decompression
    bombs are refused cheaply. Raises ``DecodeError(key, reason)`` for empty, truncated, unknown or
    oversized input; never another exception type for bad bytes.
    """
    if not data:
        raise DecodeError(key, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb check warns/raises at its global limit; ours is explicit instead.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise DecodeError(key, f"invalid size {width}x{height}")
                if max_pixels is not None and width * height > max_pixels:
                    raise DecodeError(
                        key, f"{width}x{height} = {width * height} pixels exceeds max {max_pixels}"
                    )
                if getattr(img, "is_animated", False):
                    img.seek(0)
                img.load()
                upright = ImageOps.exif_transpose(img)
                return _to_rgb_array(upright if upright is not None else img)
    except DecodeError:
        raise
    except Image.DecompressionBombError as exc:
        raise DecodeError(key, f"decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError...)
        reason = str(exc) or type(exc).__name__
        raise DecodeError(key, f"{type(exc).__name__}: {reason}") from exc


def image_size(data: bytes, key: str = "<bytes>", max_pixels: int | None = None) -> tuple[int, int]:
    """``(height, width)`` in pixels of the image :func:`decode_image` would return, read from the
    header only (no pixel data is decoded; EXIF orientations 5-8 swap the axes as
    ``exif_transpose`` does).

    Raises ``DecodeError(key, reason)`` for empty input, bytes Pillow cannot identify, a
    non-positive size or one over ``max_pixels``. A file whose header is fine but whose pixel data
    is damaged passes here and fails later in :func:`decode_image`.
    """
    if not data:
        raise DecodeError(key, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except UnidentifiedImageError:
        # Pillow's message names a BytesIO address: the same file must give the same reason.
        raise DecodeError(key, "UnidentifiedImageError: not an image format Pillow reads") from None
    except Image.DecompressionBombError as exc:
        raise DecodeError(key, f"decompression bomb: {exc}") from exc
    except Exception as exc:  # Pillow raises many types (UnidentifiedImageError, OSError...)
        reason = str(exc) or type(exc).__name__
        raise DecodeError(key, f"{type(exc).__name__}: {reason}") from exc
    if width <= 0 or height <= 0:
        raise DecodeError(key, f"invalid size {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            key, f"{width}x{height} = {width * height} pixels exceeds max {max_pixels}"
        )
    if orientation in _SWAPS_AXES:
        return int(width), int(height)
    return int(height), int(width)


def load_image_file(
    path: str | Path, key: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Read a file and decode it with :func:`decode_image`; returns (H, W, 3) uint8.

    An unreadable file (missing, permission, a directory) raises ``DecodeError`` naming ``key``
    (defaults to the path).
    """
    name = key if key is not None else str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DecodeError(name, f"cannot read file: {exc.strerror or exc}") from exc
    return decode_image(data, name, max_pixels=max_pixels)


def probe_bytes(
    read: Callable[[], bytes], key: str, max_pixels: int | None = None
) -> tuple[int, int, str, str | None]:
    """``(height, width, sha256 hex, error)`` of one sample from one ``read()`` of its encoded
    bytes: the hash of all bytes and the size from the image header (:func:`image_size`, no
    pixel decode). A read or header failure is returned as ``error`` (size 0), never raised;
    pixel data damaged behind a good header is caught later, when precompute decodes it."""
    try:
        data = read()
    except DecodeError as exc:
        return 0, 0, "", exc.reason
    digest = hashlib.sha256(data).hexdigest()
    try:
        height, width = image_size(data, key, max_pixels)
    except DecodeError as exc:
        return 0, 0, digest, exc.reason
    return height, width, digest, None
