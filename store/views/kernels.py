"""Exact uint8 kernels: contrast and Gaussian blur with a reduction order fixed by this code.

Every function maps (3, H, W) uint8 to (3, H, W) uint8 (or float32 for :func:`normalise`). The point
is bytes that are the same on every machine that replays a store, not only across threads:

- contrast: torchvision takes the grey mean with a float ``mean()``, a vectorised reduction whose
  blocking follows the CPU's vector width (AVX2, AVX-512, NEON); here it is an exact integer sum.
- Gaussian blur: torchvision runs ``conv2d``, whose backend (oneDNN or native) and accumulation
  blocking depend on the CPU and the build; here the separable kernel is a fixed sequence of
  element-wise shifted sums in numpy float32 (each product and sum rounded once, IEEE, no FMA).

Measured on the 2-core x86 dev machine (torch 2.14, torchvision 0.29): torchvision's contrast,
saturation and 23-tap blur on uint8 were byte-identical at 1 and 2 torch threads, so these kernels
guard against other CPUs, not against the thread count.

Hue has no kernel here: torchvision's ``adjust_hue`` on uint8 is element-wise (no reduction) and
was measured byte-identical at 1 and 2 threads and in a fresh process (32-1024 px, hue in
[-0.5, 0.5]); the numpy kernel that stood in for it differed from torchvision on 32 of 7.5 M
pixels (224 px, hue in [-0.1, 0.1]) and is gone. The render fingerprint
(:mod:`store.views.fingerprint`) catches any future change of torchvision's pixels.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from torchvision.transforms.v2 import functional as tvf

__all__ = ["adjust_contrast_exact", "blur_kernel_size", "gaussian_blur_exact", "normalise"]


def blur_kernel_size(size: int) -> int:
    """Gaussian-blur kernel size at output size ``size`` px: 10% of the side, made odd, at least 3
    (SimCLR's rule: 23 at 224 px, 3 at 32 px). The kernel is truncated there."""
    return max(3, int(0.1 * size) | 1)


@functools.lru_cache(maxsize=64)
def _norm_tensors(
    mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return m, s


def normalise(img: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, S, S) uint8 -> (3, S, S) float32 ``(x / 255 - mean) / std`` (element-wise, exact
    order)."""
    m, s = _norm_tensors(tuple(mean), tuple(std))
    x = img.contiguous().to(torch.float32).div_(255.0)
    return x.sub_(m).div_(s)


def adjust_contrast_exact(img: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's contrast adjustment of (3, H, W) uint8 with the grey mean computed as an
    exact integer sum."""
    grey = tvf.rgb_to_grayscale(img, num_output_channels=1)  # uint8, truncated like torchvision
    mean = float(grey.sum(dtype=torch.int64).item()) / grey.numel()
    out = img.mul(factor).add_(mean * (1.0 - factor)).clamp_(0, 255)
    return out.to(torch.uint8)


def _reflect_pad(x: np.ndarray, pad: int, axis: int) -> np.ndarray:
    """Reflect-pad (torch's ``reflect``, no edge repeat) ``pad`` < size elements on ``axis``."""
    n = x.shape[axis]
    left = np.take(x, np.arange(pad, 0, -1), axis=axis)
    right = np.take(x, np.arange(n - 2, n - 2 - pad, -1), axis=axis)
    return np.concatenate([left, x, right], axis=axis)


def gaussian_blur_exact(img: torch.Tensor, sigma: float, ksize: int) -> torch.Tensor:
    """Separable Gaussian blur of (3, H, W) uint8: torchvision's kernel, reflect padding, written as
    element-wise shifted sums in numpy float32 (fixed order, single-threaded), rounded to uint8."""
    half = ksize // 2
    pos = np.linspace(-half, half, ksize)
    pdf = np.exp(-0.5 * (pos / sigma) ** 2)
    weights = (pdf / pdf.sum()).astype(np.float32)
    x = img.contiguous().numpy().astype(np.float32)
    h, w = x.shape[-2], x.shape[-1]
    pad_w, pad_h = min(half, w - 1), min(half, h - 1)
    if pad_w > 0:
        padded = _reflect_pad(x, pad_w, axis=2)
        acc = np.zeros_like(x)
        for k in range(half - pad_w, half + pad_w + 1):
            off = k - half + pad_w
            acc += weights[k] * padded[:, :, off : off + w]
        x = acc
    if pad_h > 0:
        padded = _reflect_pad(x, pad_h, axis=1)
        acc = np.zeros_like(x)
        for k in range(half - pad_h, half + pad_h + 1):
            off = k - half + pad_h
            acc += weights[k] * padded[:, off : off + h, :]
        x = acc
    return torch.from_numpy(np.clip(np.rint(x), 0, 255).astype(np.uint8))
