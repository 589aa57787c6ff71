"""Crop boxes: RandomResizedCrop box sampling (vectorised) and the exact uint8 crop + resize."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as nnf

from store.errors import ConfigError, DatasetError

__all__ = ["INTERPOLATIONS", "as_chw_uint8", "crop_resize", "sample_crop"]

# Recorded name -> (torch ``interpolate`` mode, antialias). ``nearest`` is the pixel-centre rule
# (torch ``nearest-exact``, PIL's NEAREST), not torch's legacy ``nearest`` that shifts by half a
# pixel. Every mode runs torch's native uint8 CPU kernel, which computes each output pixel from its
# own fixed taps (no cross-thread reduction), so the bytes do not depend on the thread count.
INTERPOLATIONS: dict[str, tuple[str, bool]] = {
    "bilinear": ("bilinear", True),
    "bicubic": ("bicubic", True),
    "nearest": ("nearest-exact", False),
}


def check_interpolation(name: str) -> tuple[str, bool]:
    """``(torch mode, antialias)`` of a recorded interpolation name; unknown names raise
    ConfigError listing the valid ones."""
    if name not in INTERPOLATIONS:
        raise ConfigError(
            f"unknown interpolation {name!r}; valid: {', '.join(sorted(INTERPOLATIONS))}"
        )
    return INTERPOLATIONS[name]


def sample_crop(
    u: np.ndarray,
    heights: np.ndarray,
    widths: np.ndarray,
    scale: tuple[float, float],
    ratio: tuple[float, float],
) -> np.ndarray:
    """torchvision RandomResizedCrop box sampling, vectorised: (n, 4) int64 (top, left, h, w).

    ``u`` is (n, 40) uniforms: 10 attempts x (area, log-ratio, top, left). Falls back to the
    central crop with the ratio clamped, as torchvision does; boxes are always inside the image and
    at least 1x1.
    """
    n = len(heights)
    big_h = np.maximum(heights.astype(np.int64), 1)
    big_w = np.maximum(widths.astype(np.int64), 1)
    area = (big_h * big_w).astype(np.float64)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    ua = u[:, 0:40:4]
    ur = u[:, 1:40:4]
    target = area[:, None] * (scale[0] + ua * (scale[1] - scale[0]))
    aspect = np.exp(log_lo + ur * (log_hi - log_lo))
    w = np.rint(np.sqrt(target * aspect)).astype(np.int64)
    h = np.rint(np.sqrt(target / aspect)).astype(np.int64)
    ok = (w > 0) & (w <= big_w[:, None]) & (h > 0) & (h <= big_h[:, None])
    top = np.floor(u[:, 2:40:4] * (big_h[:, None] - h + 1)).astype(np.int64)
    left = np.floor(u[:, 3:40:4] * (big_w[:, None] - w + 1)).astype(np.int64)
    first = np.argmax(ok, axis=1)
    rows = np.arange(n)
    out = np.stack([top[rows, first], left[rows, first], h[rows, first], w[rows, first]], axis=1)
    # Central-crop fallback (no attempt fit).
    in_ratio = big_w / big_h
    fw = big_w.copy()
    fh = big_h.copy()
    narrow = in_ratio < ratio[0]
    wide = in_ratio > ratio[1]
    fh[narrow] = np.rint(fw[narrow] / ratio[0]).astype(np.int64)
    fw[wide] = np.rint(fh[wide] * ratio[1]).astype(np.int64)
    fh = np.clip(fh, 1, big_h)
    fw = np.clip(fw, 1, big_w)
    fallback = np.stack([(big_h - fh) // 2, (big_w - fw) // 2, fh, fw], axis=1)
    none_ok = ~ok.any(axis=1)
    out[none_ok] = fallback[none_ok]
    return out


def as_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor sharing memory (channels-last strides)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DatasetError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1)


def crop_resize(
    image: np.ndarray, box: np.ndarray, size: int, interpolation: str = "bilinear"
) -> torch.Tensor:
    """Crop an integer box (top, left, h, w) in source pixels of an (H, W, 3) uint8 image and
    resize it to (3, size, size) uint8 with ``interpolation`` (see :data:`INTERPOLATIONS`).

    A box outside the image raises DatasetError (the image is not the one the view was planned for).
    """
    top, left, h, w = (int(v) for v in box)
    big_h, big_w = image.shape[0], image.shape[1]
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > big_h or left + w > big_w:
        raise DatasetError(
            f"view box (top={top}, left={left}, h={h}, w={w}) is outside the "
            f"{big_h}x{big_w} image; "
            "the image is not the one the views were planned for"
        )
    mode, antialias = check_interpolation(interpolation)
    crop = as_chw_uint8(image[top : top + h, left : left + w])
    if h == size and w == size:
        return crop.contiguous()
    # torch's native uint8 kernels: the exact calls behind torchvision's ``resize(..., mode,
    # antialias=...)`` on uint8 CPU tensors, without its dispatch overhead.
    if antialias:
        out = nnf.interpolate(
            crop.unsqueeze(0), size=(size, size), mode=mode, antialias=True, align_corners=False
        )
    else:
        out = nnf.interpolate(crop.unsqueeze(0), size=(size, size), mode=mode)
    return out[0]
