"""JPEG decoding on the GPU (nvjpeg through ``torchvision.io.decode_jpeg``) for request images.

Opt-in (``decode = "device"``): nvjpeg's IDCT and chroma upsampling are not libjpeg-turbo's, so
its pixels differ slightly from :func:`store.decode.decode_image` (Pillow), the decoder every
store's targets were computed from. The service therefore uses it only for plain embedding
requests, never for write-through, and only where the result would follow the same rules as
Pillow's: a baseline or progressive JPEG in RGB or greyscale without an EXIF rotation (anything
else, or any nvjpeg failure, falls back to Pillow, which also words every decode error).
"""

from __future__ import annotations

import io
import warnings

import torch
from PIL import Image

from store.errors import DecodeError

__all__ = ["decode_jpeg_device"]

_SOI = b"\xff\xd8\xff"
_ORIENTATION = 0x0112


def decode_jpeg_device(
    data: bytes, device: torch.device, key: str = "<bytes>", max_pixels: int | None = None
) -> torch.Tensor | None:
    """Decode JPEG bytes on CUDA ``device``: ``(H, W, 3)`` uint8 on the device, or None when the
    bytes are not a JPEG this path handles exactly as Pillow's rules say (the caller then decodes
    with Pillow).

    The header is read with Pillow first (no pixel data), so ``max_pixels`` (H * W) is refused
    with ``DecodeError`` before any decoding, as :func:`store.decode.decode_image` does.
    """
    if device.type != "cuda" or not data.startswith(_SOI):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                if img.format != "JPEG" or img.mode not in ("RGB", "L"):
                    return None  # CMYK/YCCK: Pillow's ink inversion is the rule
                width, height = img.size
                orientation = img.getexif().get(_ORIENTATION, 1)
    except Exception:  # a header Pillow cannot read: let Pillow's decode word the error
        return None
    if max_pixels is not None and width * height > max_pixels:
        raise DecodeError(
            key, f"{width}x{height} = {width * height} pixels exceeds max {max_pixels}"
        )
    if orientation not in (None, 1):
        return None  # keep Pillow's exif_transpose as the one orientation rule
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        chw = decode_jpeg(raw, mode=ImageReadMode.RGB, device=device)
    except Exception:  # nvjpeg refuses some valid files: Pillow decides
        return None
    assert isinstance(chw, torch.Tensor)
    if tuple(chw.shape) != (3, height, width):
        return None
    return chw.permute(1, 2, 0)
