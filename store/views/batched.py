"""Batched view rendering: B views of a recipe at once, with torch ops, on CPU or CUDA.

:func:`render_views` is the batched counterpart of :func:`store.views.render_view` (which stays the
reference). It returns the views as ``(B, 3, S, S)`` uint8 on the device; :func:`normalise_views`
turns them into the reference's float32 tensors with the reference's own element-wise arithmetic.

Equivalence (tested in ``tests/test_render_batched.py``):

* **CPU**: byte-identical to ``render_view`` for every registered recipe. Every float step mirrors
  the reference's IEEE operations one for one (a multiply stays a multiply, torch's ``add(alpha=)``
  is a fused multiply-add on CPU and is reproduced as one, sums that the reference does in a fixed
  order are done in that order), so per-view factors held in a ``(B, 1, 1, 1)`` tensor give the
  same float32 results as the reference's Python scalars.
* **Resize**: torch's uint8 antialiased bilinear kernel is fixed-point (int16 weights, one
  precision per axis, round-half-up shift). :func:`aa_resize_weights` recomputes those integer
  weights and :func:`resize_crops` applies them as two batched float64 matrix products over padded
  crops; every value is an integer below 2**53, so the products are exact whatever the summation
  order or device. On CPU the native per-view kernel is used by default (it is faster there and
  identical by construction); the matrix path is tested against it byte for byte.
* **CUDA**: the same code. Stated bound: at most ±1 per channel value against the CPU reference
  (CUDA kernels may contract ``a + alpha * b`` differently and its ``grid_sample``/``pow`` are other
  implementations), and teacher embeddings of the two renders with cosine >= 0.9999; checked by the
  gpu-marked test and ``bench/gpu_check.sh``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision.transforms.v2 import functional as tvf
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv

from store.errors import ConfigError, DatasetError
from store.runtime import to_device
from store.views.crop import INTERPOLATIONS
from store.views.kernels import blur_kernel_size
from store.views.recipes import DigitsRecipe, MoCoV2Recipe, Recipe

__all__ = [
    "RENDERERS",
    "RENDERER_CHOICES",
    "RENDER_BOUND",
    "aa_resize_weights",
    "normalise_views",
    "render_centers",
    "render_views",
    "render_views_normalised",
    "resize_crops",
    "resolve_renderer",
]

RENDERERS = ("reference", "batched")
"""Renderer names: ``reference`` = per-view :func:`store.views.render_view`; ``batched`` =
:func:`render_views`."""

RENDERER_CHOICES = ("auto", *RENDERERS)
"""Accepted config values: ``auto`` picks by device (:func:`resolve_renderer`)."""

RENDER_BOUND: dict[str, float] = {"max_abs_diff": 1.0, "min_cosine": 0.9999}
"""Stated equivalence bound between renderers/devices: uint8 values within ±1 and teacher
embeddings of the two renders with cosine >= 0.9999 (CPU batched is exact: 0 and 1.0)."""

ResizeMode = Literal["auto", "native", "matmul"]

CPU_CHUNK = 16
"""Views rendered together on CPU: every op is elementwise per view, so a chunk gives the same
bytes as the whole batch, and 16 views at 224 px keep each op's working set near the cache
(measured, 2 threads, 224 px ``mocov2``: B = 64 in one go 351–366 views/s, chunks of 16 389–414,
of 8 383–395, of 4 350–367)."""

Image = np.ndarray | torch.Tensor


# --------------------------------------------------------------------------------------------
# Resize: torch's uint8 antialiased bilinear kernel, reproduced as exact integer arithmetic.


def _filter(kind: str, x: np.ndarray) -> np.ndarray:
    """ATen's antialias filters (float64): triangle, and Keys cubic with a = -0.5 (PIL's)."""
    x = np.abs(x)
    if kind == "bilinear":
        return np.where(x < 1.0, 1.0 - x, 0.0)
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=8192)
def aa_resize_weights(
    in_size: int, out_size: int, interpolation: str = "bilinear"
) -> tuple[np.ndarray, np.ndarray, int]:
    """Integer weights of torch's uint8 CPU resize along one axis, for a recorded interpolation
    (:data:`store.views.INTERPOLATIONS`: antialiased bilinear or bicubic, or pixel-centre nearest).

    Returns ``(index, weight, precision)``: ``index`` (out, K) int64 source positions (clamped into
    the axis), ``weight`` (out, K) int64 fixed-point weights (0 past each output's support) and the
    axis' shift ``precision``. Output ``o`` is ``clamp((2**(precision-1) + sum_k src[index[o, k]] *
    weight[o, k]) >> precision, 0, 255)``: the arithmetic of ATen's ``UpSampleKernelAVXAntialias``
    (weights computed in double as in ``_compute_index_ranges_int16_weights``). ``nearest`` is one
    tap of weight 1 at ``floor((o + 0.5) * in / out)`` (ATen's ``nearest-exact``; precision 0).
    """
    if interpolation == "nearest":
        scale32 = np.float32(in_size) / np.float32(out_size)
        pos = ((np.arange(out_size, dtype=np.float64) + 0.5) * np.float64(scale32)).astype(
            np.float32
        )
        src = np.minimum(np.floor(pos).astype(np.int64), in_size - 1)
        return src[:, None], np.ones((out_size, 1), dtype=np.int64), 0
    if interpolation not in ("bilinear", "bicubic"):
        raise ConfigError(
            f"unknown interpolation {interpolation!r}; valid: {', '.join(sorted(INTERPOLATIONS))}"
        )
    half_taps = 1.0 if interpolation == "bilinear" else 2.0
    scale = in_size / out_size
    support = half_taps * scale if scale >= 1.0 else half_taps
    ksize = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    i = np.arange(out_size, dtype=np.float64)
    center = scale * (i + 0.5)
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xsize = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    xsize = np.clip(xsize, 0, ksize)
    j = np.arange(ksize, dtype=np.int64)
    x = ((j[None, :] + xmin[:, None]) - center[:, None] + 0.5) * invscale
    w = np.where(j[None, :] < xsize[:, None], _filter(interpolation, x), 0.0)
    total = np.zeros(out_size, dtype=np.float64)
    for k in range(ksize):  # sequential, as the C++ loop (numpy's pairwise sum rounds otherwise)
        total += w[:, k]
    safe = np.where(total != 0.0, total, 1.0)
    w = np.where(total[:, None] != 0.0, w / safe[:, None], w)
    wt_max = float(w.max()) if w.size else 0.0
    precision = 0
    while precision < 22:
        if int(0.5 + wt_max * (1 << (precision + 1))) >= (1 << 15):
            break
        precision += 1
    v = w * (1 << precision)
    weight = np.trunc(np.where(v < 0, v - 0.5, v + 0.5)).astype(np.int64)
    index = np.clip(xmin[:, None] + j[None, :], 0, max(in_size - 1, 0))
    return index, weight, precision


def _dense_weights(
    sizes: Sequence[int], out_size: int, padded: int, device: torch.device, interpolation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, out, padded) float64 dense fixed-point weights and (B, 1, 1, 1) float64 2**precision."""
    b = len(sizes)
    dense = np.zeros((b, out_size, padded), dtype=np.float64)
    shift = np.empty(b, dtype=np.float64)
    rows = np.arange(out_size)[:, None]
    for n, size in enumerate(sizes):
        index, weight, precision = aa_resize_weights(int(size), out_size, interpolation)
        np.add.at(dense[n], (np.broadcast_to(rows, index.shape), index), weight)
        shift[n] = float(1 << precision)
    return (
        torch.from_numpy(dense).to(device),
        torch.from_numpy(shift).view(b, 1, 1, 1).to(device),
    )


def _fixed_point_round(acc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``clamp((acc + scale / 2) >> log2(scale), 0, 255)`` on exact float64 integers."""
    return acc.add_(scale * 0.5).div_(scale).floor_().clamp_(0, 255)


def resize_crops(
    crops: Sequence[torch.Tensor], size: int, interpolation: str = "bilinear", chunk: int = 64
) -> torch.Tensor:
    """Resize B crops of any sizes to (B, 3, size, size) uint8 with the arithmetic of torch's
    uint8 CPU kernel for ``interpolation``, as two batched exact float64 matrix products (any
    device): every operand and partial sum is an integer below 2**53, so no rounding happens.

    ``crops`` are (3, h, w) uint8 tensors on one device (any strides). Equal, byte for byte, to
    :func:`store.views.crop_resize` (torch's native kernel) on CPU.
    """
    if not crops:
        raise ValueError("resize_crops needs at least one crop")
    device = crops[0].device
    out = torch.empty((len(crops), 3, size, size), dtype=torch.uint8, device=device)
    for start in range(0, len(crops), chunk):
        part = crops[start : start + chunk]
        hs = [int(c.shape[1]) for c in part]
        ws = [int(c.shape[2]) for c in part]
        hm, wm = max(hs), max(ws)
        x = torch.zeros((len(part), 3, hm, wm), dtype=torch.float64, device=device)
        for n, c in enumerate(part):
            x[n, :, : hs[n], : ws[n]] = c
        wx, sx = _dense_weights(ws, size, wm, device, interpolation)
        wy, sy = _dense_weights(hs, size, hm, device, interpolation)
        # Horizontal first, rounded to uint8 values, then vertical: the kernel's order.
        t = _fixed_point_round(torch.matmul(x, wx.transpose(1, 2).unsqueeze(1)), sx)
        y = _fixed_point_round(torch.matmul(wy.unsqueeze(1), t), sy)
        out[start : start + len(part)] = y.to(torch.uint8)
    return out


# --------------------------------------------------------------------------------------------
# Colour and blur kernels on (B, 3, S, S) uint8 with per-view factors, mirroring store.views.


def _col(values: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(B,) numbers -> (B, 1, 1, 1) tensor of ``dtype`` (cast from float64 once)."""
    return (
        torch.from_numpy(np.asarray(values, dtype=np.float64))
        .to(dtype)
        .view(-1, 1, 1, 1)
        .to(device)
    )


def _fma(a: torch.Tensor, b: torch.Tensor, alpha32: torch.Tensor) -> torch.Tensor:
    """float32 ``a + alpha * b`` rounded once, as torch's ``add_(b, alpha=...)`` on CPU (an FMA):
    the float64 product of two float32 numbers is exact and the sum is rounded to float32."""
    return a.double().add_(b.double().mul_(alpha32.double())).to(torch.float32)


def _brightness(x: torch.Tensor, f: np.ndarray) -> torch.Tensor:
    """``tvf.adjust_brightness`` per view: (B, 3, S, S) uint8, factors (B,)."""
    return x.mul(_col(f, x.device, torch.float32)).clamp_(0, 255).to(torch.uint8)


def _contrast(x: torch.Tensor, f: np.ndarray) -> torch.Tensor:
    """``store.views._adjust_contrast_exact`` per view (exact integer grey mean)."""
    grey = tvf.rgb_to_grayscale(x, num_output_channels=1)
    sums = grey.sum(dim=(1, 2, 3), dtype=torch.int64).cpu().numpy()
    mean = sums.astype(np.float64) / float(grey[0].numel())
    f64 = np.asarray(f, dtype=np.float64)
    shift = _col(mean * (1.0 - f64), x.device, torch.float32)
    out = x.mul(_col(f64, x.device, torch.float32)).add_(shift).clamp_(0, 255)
    return out.to(torch.uint8)


def _saturation(x: torch.Tensor, f: np.ndarray) -> torch.Tensor:
    """``tvf.adjust_saturation`` per view: blend with the floored float grey image."""
    # torchvision computes the float grey without the uint8 cast, then floors it.
    grey = x[:, 0].mul(0.2989).add_(x[:, 1], alpha=0.587).add_(x[:, 2], alpha=0.114)
    grey = grey.unsqueeze(1).floor_()
    f64 = np.asarray(f, dtype=np.float64)
    a = x.mul(_col(f64, x.device, torch.float32))
    out = _fma(a, grey.expand_as(a), _col(1.0 - f64, x.device, torch.float32)).clamp_(0, 255)
    return out.to(torch.uint8)


def _hue(x: torch.Tensor, hue: np.ndarray) -> torch.Tensor:
    """``tvf.adjust_hue`` per view: torchvision's own (element-wise, batch-agnostic) HSV helpers,
    with the per-view shift added as a (B, 1, 1) float32 tensor instead of a Python float."""
    v = x.to(torch.float32).mul_(1.0 / 255.0)
    hsv = _rgb_to_hsv(v)
    h, s, val = hsv.unbind(dim=-3)
    h = h.add(_col(hue, x.device, torch.float32)[:, 0]).remainder_(1.0)
    out = _hsv_to_rgb(torch.stack((h, s, val), dim=-3))
    return out.mul(255.0 + 1.0 - 1e-3).to(torch.uint8)


def _blur_weights(sigmas: np.ndarray, ksize: int) -> np.ndarray:
    """(B, ksize) float32 Gaussian taps, computed per view exactly as the reference does."""
    half = ksize // 2
    pos = np.linspace(-half, half, ksize)
    out = np.empty((len(sigmas), ksize), dtype=np.float32)
    for n, sigma in enumerate(sigmas):
        pdf = np.exp(-0.5 * (pos / float(sigma)) ** 2)
        out[n] = (pdf / pdf.sum()).astype(np.float32)
    return out


def _blur(x: torch.Tensor, sigmas: np.ndarray, ksize: int, chunk: int = 4) -> torch.Tensor:
    """``store.views._gaussian_blur_exact`` per view: separable taps summed in the same order
    (a float32 multiply then a float32 add per tap, as numpy does), ``chunk`` views at a time so
    the working set stays in cache. Views are taken in order of sigma and a tap whose float32
    weight is 0 for every view of a chunk is skipped: adding ``0 * x`` leaves the sum unchanged,
    so this is exact (small sigmas have few non-zero taps)."""
    taps_all = _blur_weights(sigmas, ksize)
    weights = torch.from_numpy(taps_all).to(x.device)
    half = ksize // 2
    h, w = x.shape[-2], x.shape[-1]
    pad_w, pad_h = min(half, w - 1), min(half, h - 1)
    out = torch.empty_like(x)
    order = np.argsort(sigmas, kind="stable")
    for start in range(0, x.shape[0], chunk):
        sel = order[start : start + chunk]
        live = np.flatnonzero((taps_all[sel] != 0).any(axis=0))
        idx = torch.from_numpy(sel).to(x.device)
        v = x.index_select(0, idx).to(torch.float32)
        taps = weights.index_select(0, idx).view(-1, 1, 1, 1, ksize)
        if pad_w > 0:
            padded = nnf.pad(v, (pad_w, pad_w, 0, 0), mode="reflect")
            acc = torch.zeros_like(v)
            for k in range(half - pad_w, half + pad_w + 1):
                if k in live:
                    off = k - half + pad_w
                    acc.add_(taps[..., k] * padded[:, :, :, off : off + w])
            v = acc
        if pad_h > 0:
            padded = nnf.pad(v, (0, 0, pad_h, pad_h), mode="reflect")
            acc = torch.zeros_like(v)
            for k in range(half - pad_h, half + pad_h + 1):
                if k in live:
                    off = k - half + pad_h
                    acc.add_(taps[..., k] * padded[:, :, off : off + h, :])
            v = acc
        out[idx] = v.round_().clamp_(0, 255).to(torch.uint8)
    return out


def _gamma(x: torch.Tensor, gamma: np.ndarray) -> torch.Tensor:
    """``tvf.adjust_gamma`` per view (gain 1)."""
    v = x.to(torch.float32).mul_(1.0 / 255.0).pow_(_col(gamma, x.device, torch.float32))
    return v.mul_(255.0 + 1.0 - 1e-3).to(torch.uint8)


def _affine(x: torch.Tensor, angles: np.ndarray, shears: np.ndarray, size: int) -> torch.Tensor:
    """``DigitsRecipe._affine`` per view: rotate + x-shear about the centre, bilinear, zero fill."""
    c = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    half = size / 2
    grids = np.empty((len(angles), size, size, 2), dtype=np.float32)
    for n, (angle, shear) in enumerate(zip(angles, shears, strict=True)):
        rot, sx = math.radians(float(angle)), math.radians(float(shear))
        a, cc = math.cos(rot), math.sin(rot)
        b = -math.cos(rot) * math.tan(sx) - math.sin(rot)
        d = -math.sin(rot) * math.tan(sx) + math.cos(rot)
        gx = (d * xx - b * yy) / half
        gy = (-cc * xx + a * yy) / half
        grids[n] = np.stack([gx, gy], axis=-1).astype(np.float32)
    grid = torch.from_numpy(grids).to(x.device)
    out = nnf.grid_sample(
        x.to(torch.float32), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )
    return out.round_().clamp_(0, 255).to(torch.uint8)


def _apply(x: torch.Tensor, mask: np.ndarray, fn: object, *args: np.ndarray | int) -> torch.Tensor:
    """Apply ``fn(x[mask], *args[mask])`` to the views in ``mask`` (B,) bool, in place of x."""
    sel = np.flatnonzero(mask)
    if len(sel) == 0:
        return x
    if len(sel) == len(mask):
        return fn(x, *args)  # type: ignore[operator]
    idx = torch.from_numpy(sel).to(x.device)
    picked = [a if isinstance(a, int) else a[sel] for a in args]
    x[idx] = fn(x.index_select(0, idx), *picked)  # type: ignore[operator]
    return x


# --------------------------------------------------------------------------------------------
# Public API.


def _source_hwc(image: Image, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 array or tensor -> (H, W, 3) uint8 tensor on ``device``."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise DatasetError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
        return to_device(torch.from_numpy(image if image.flags.writeable else image.copy()), device)
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[2] != 3:
        raise DatasetError(f"image must be (H, W, 3) uint8, got {getattr(image, 'shape', image)}")
    if image.dtype != torch.uint8:
        raise DatasetError(f"image must be uint8, got {image.dtype}")
    return to_device(image, device)


def _checked_boxes(shapes: Sequence[tuple[int, int]], params: np.ndarray) -> np.ndarray:
    """(B, 4) int64 crop boxes, refused with the reference's message when outside the image."""
    boxes = params[:, 0:4].astype(np.int64)
    for (big_h, big_w), (top, left, h, w) in zip(shapes, boxes.tolist(), strict=True):
        if h < 1 or w < 1 or top < 0 or left < 0 or top + h > big_h or left + w > big_w:
            raise DatasetError(
                f"view box (top={top}, left={left}, h={h}, w={w}) is outside the "
                f"{big_h}x{big_w} image; "
                "the image is not the one the views were planned for"
            )
    return boxes


def _crop_resize_batch(
    sources: Sequence[torch.Tensor],
    boxes: np.ndarray,
    size: int,
    interpolation: str,
    mode: ResizeMode,
) -> torch.Tensor:
    """Crop each (H, W, 3) source by its box and resize: (B, 3, size, size) uint8."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"unknown interpolation {interpolation!r}; valid: {', '.join(sorted(INTERPOLATIONS))}"
        )
    crops = [
        src[top : top + h, left : left + w].permute(2, 0, 1)
        for src, (top, left, h, w) in zip(sources, boxes.tolist(), strict=True)
    ]
    device = crops[0].device
    if mode == "auto":
        mode = "native" if device.type == "cpu" else "matmul"
    if mode == "matmul":
        return resize_crops(crops, size, interpolation)
    if device.type != "cpu":
        raise ConfigError("resize mode 'native' (torch's uint8 CPU kernels) is CPU-only")
    torch_mode, antialias = INTERPOLATIONS[interpolation]
    out = torch.empty((len(crops), 3, size, size), dtype=torch.uint8)
    for n, crop in enumerate(crops):
        if crop.shape[1] == size and crop.shape[2] == size:
            out[n] = crop
        elif antialias:
            out[n] = nnf.interpolate(
                crop.unsqueeze(0), size=(size, size), mode=torch_mode, antialias=True,
                align_corners=False,
            )[0]  # fmt: skip
        else:
            out[n] = nnf.interpolate(crop.unsqueeze(0), size=(size, size), mode=torch_mode)[0]
    return out


def _render_mocov2(x: torch.Tensor, p: np.ndarray, recipe: MoCoV2Recipe) -> torch.Tensor:
    jitter = p[:, 5] >= 0.5
    order = p[:, 10:14].astype(np.int64)
    ops = {0: _brightness, 1: _contrast, 2: _saturation, 3: _hue}
    for step in range(4):
        for k, fn in ops.items():
            mask = jitter & (order[:, step] == k)
            x = _apply(x, mask, fn, p[:, 6 + k].astype(np.float64))
    gray = p[:, 14] >= 0.5
    x = _apply(x, gray, lambda v: tvf.rgb_to_grayscale(v, num_output_channels=3).contiguous())
    blur = p[:, 15] > 0
    x = _apply(x, blur, _blur, p[:, 15].astype(np.float64), blur_kernel_size(recipe.size))
    flip = p[:, 4] >= 0.5
    return _apply(x, flip, lambda v: v.flip(-1))


def _render_digits(x: torch.Tensor, p: np.ndarray, recipe: DigitsRecipe) -> torch.Tensor:
    moved = (p[:, 4] != 0.0) | (p[:, 5] != 0.0)
    x = _apply(x, moved, lambda v, a, s: _affine(v, a, s, recipe.size), p[:, 4], p[:, 5])
    x = _brightness(x, p[:, 6].astype(np.float64))
    return _gamma(x, p[:, 7].astype(np.float64))


_BATCHED = {MoCoV2Recipe: _render_mocov2, DigitsRecipe: _render_digits}


def render_views(
    images: Sequence[Image],
    params: np.ndarray | torch.Tensor,
    recipe: Recipe,
    device: torch.device | str = "cpu",
    resize: ResizeMode = "auto",
) -> torch.Tensor:
    """Render B views at once: (B, 3, S, S) uint8 on ``device``.

    ``images``: B decoded sources, each (H, W, 3) uint8 (numpy arrays or tensors on any device;
    sizes may differ; the same source may appear several times). ``params``: (B, P) float32 view
    parameters of ``recipe`` (rows of ``views/params``). ``resize``: ``native`` (torch's per-view
    uint8 kernel, CPU only), ``matmul`` (batched exact fixed-point products, any device) or ``auto``
    (native on CPU, matmul elsewhere); both give the same bytes. Normalisation is left to the
    consumer (:func:`normalise_views` reproduces the reference's). See the module docstring for the
    equivalence with :func:`store.views.render_view`.
    """
    fn = _BATCHED.get(type(recipe))
    if fn is None:
        raise ConfigError(
            f"the batched renderer does not support recipe {recipe.name!r} "
            f"({type(recipe).__name__}); use renderer 'reference'"
        )
    p = params.detach().cpu().numpy() if isinstance(params, torch.Tensor) else np.asarray(params)
    p = np.asarray(p, dtype=np.float32)
    if p.ndim != 2 or p.shape[0] != len(images) or p.shape[1] != recipe.num_params:
        raise ConfigError(
            f"params must be ({len(images)}, {recipe.num_params}) for recipe {recipe.name!r}, "
            f"got {tuple(p.shape)}"
        )
    dev = torch.device(device)
    if len(images) == 0:
        return torch.empty((0, 3, recipe.size, recipe.size), dtype=torch.uint8, device=dev)
    moved: dict[int, torch.Tensor] = {}  # one transfer per distinct source (V views share one)
    sources = [moved.setdefault(id(im), _source_hwc(im, dev)) for im in images]
    boxes = _checked_boxes([(int(s.shape[0]), int(s.shape[1])) for s in sources], p)
    step = len(sources) if dev.type != "cpu" else CPU_CHUNK
    parts = []
    for a in range(0, len(sources), step):
        x = _crop_resize_batch(
            sources[a : a + step], boxes[a : a + step], recipe.size, recipe.interpolation, resize
        )
        parts.append(fn(x.contiguous(), p[a : a + step], recipe).contiguous())  # type: ignore[operator]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def render_centers(
    images: Sequence[Image],
    recipe: Recipe,
    device: torch.device | str = "cpu",
    resize: ResizeMode = "auto",
) -> torch.Tensor:
    """Un-augmented views of B images at once: (B, 3, S, S) uint8 on ``device``.

    The batched counterpart of :func:`store.views.render_center` (centre square crop of side
    min(H, W), resized to S with the recipe's interpolation, no colour step): on CPU the same
    bytes as ``render_center`` before its normalisation; ``images`` and ``resize`` as in
    :func:`render_views`.
    """
    dev = torch.device(device)
    if len(images) == 0:
        return torch.empty((0, 3, recipe.size, recipe.size), dtype=torch.uint8, device=dev)
    moved: dict[int, torch.Tensor] = {}
    sources = [moved.setdefault(id(im), _source_hwc(im, dev)) for im in images]
    boxes = np.empty((len(sources), 4), dtype=np.int64)
    for n, src in enumerate(sources):
        big_h, big_w = int(src.shape[0]), int(src.shape[1])
        side = min(big_h, big_w)
        boxes[n] = ((big_h - side) // 2, (big_w - side) // 2, side, side)
    x = _crop_resize_batch(sources, boxes, recipe.size, recipe.interpolation, resize)
    return x.contiguous()


def normalise_views(
    views: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> float32 ``(x / 255 - mean) / std``, element for element the
    reference's ``store.views._normalise`` (so ``normalise_views(render_views(...))[b]`` equals
    ``render_view(...)`` on CPU)."""
    m = torch.tensor(tuple(mean), dtype=torch.float32, device=views.device).view(1, 3, 1, 1)
    s = torch.tensor(tuple(std), dtype=torch.float32, device=views.device).view(1, 3, 1, 1)
    return views.to(torch.float32).div_(255.0).sub_(m).div_(s)


def render_views_normalised(
    images: Sequence[Image],
    params: np.ndarray | torch.Tensor,
    recipe: Recipe,
    device: torch.device | str,
) -> torch.Tensor:
    """:func:`render_views` then :func:`normalise_views` with the recipe's mean/std: (B, 3, S, S)
    float32 on ``device``, equal on CPU to stacking ``render_view`` of each view."""
    return normalise_views(render_views(images, params, recipe, device), recipe.mean, recipe.std)


def resolve_renderer(name: str, device: torch.device | str) -> str:
    """The renderer a job uses: ``reference`` or ``batched``.

    ``auto`` = ``batched`` on CUDA (the views are rendered on the GPU in the main process and the
    DataLoader workers only decode) and ``reference`` on CPU, where per-view rendering in parallel
    worker processes beats a batched render that shares the main process with the model (measured:
    README "Where the time goes"). Unknown names raise ConfigError listing the valid ones.
    """
    if name not in RENDERER_CHOICES:
        raise ConfigError(f"unknown renderer {name!r}; valid: {', '.join(RENDERER_CHOICES)}")
    if name != "auto":
        return name
    return "batched" if torch.device(device).type == "cuda" else "reference"
