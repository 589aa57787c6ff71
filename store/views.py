"""View recipes: sample augmentation parameters per (seed, sample, view) and render them exactly.

A view is fully described by its parameter vector (P,) float32. Parameters come from a counter-based
generator keyed by (plan seed, row index, view) only (a splitmix64 hash of the key and a counter, so
no global or worker RNG state is involved and any single (i, v) can be re-sampled on its own), and
are
stored in the store as ``views/params`` (N, V, P). :func:`render_view` is the one function both the
teacher and the student call to turn (decoded image, params) into a normalised tensor.

Determinism: every step runs on uint8 tensors with element-wise kernels (no cross-thread reductions:
the contrast mean is an exact integer sum, the Gaussian blur and the affine grid are written as
element-wise sums here); conversion to float and normalisation come last. The bytes are therefore
the
same in any process, at any torch thread count, and in DataLoader workers.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as nnf
from rich.progress import Progress
from torchvision.transforms.v2 import functional as tvf

from store.errors import ConfigError, DatasetError

__all__ = [
    "RECIPES",
    "DigitsRecipe",
    "MoCoV2Recipe",
    "Recipe",
    "blur_kernel_size",
    "counter_uniforms",
    "get_recipe",
    "plan_views",
    "recipe_from_dict",
    "render_center",
    "render_view",
]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (a bijection; wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seed: int, index: np.ndarray, view: np.ndarray, count: int) -> np.ndarray:
    """Uniforms in [0, 1) keyed by (seed, index, view) and a counter: (n, count) float64.

    ``index`` and ``view`` are (n,) integer arrays. Entry [r, k] depends only on
    (seed, index[r], view[r], k) — a counter-based generator (splitmix64 over the hashed key).
    """
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    vw = np.asarray(view, dtype=np.int64).astype(np.uint64)
    s = np.full(idx.shape, seed & _MASK64, dtype=np.uint64)
    z = _mix(_mix(_mix(s + _GOLDEN) ^ idx) ^ (vw * _GOLDEN))
    counters = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    bits = _mix(z[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _sample_crop(
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


def _as_chw_uint8(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor sharing memory (channels-last strides)."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DatasetError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    arr = np.ascontiguousarray(image)
    if not arr.flags.writeable:
        arr = arr.copy()
    return torch.from_numpy(arr).permute(2, 0, 1)


def _normalise(img: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(3, S, S) uint8 -> (3, S, S) float32 ``(x / 255 - mean) / std`` (element-wise, exact
    order)."""
    m, s = _norm_tensors(tuple(mean), tuple(std))
    x = img.contiguous().to(torch.float32).div_(255.0)
    return x.sub_(m).div_(s)


def _crop_resize(image: np.ndarray, box: np.ndarray, size: int) -> torch.Tensor:
    """Crop an integer box (top, left, h, w) in source pixels and resize to (3, size, size)
    uint8."""
    top, left, h, w = (int(v) for v in box)
    big_h, big_w = image.shape[0], image.shape[1]
    if h < 1 or w < 1 or top < 0 or left < 0 or top + h > big_h or left + w > big_w:
        raise DatasetError(
            f"view box (top={top}, left={left}, h={h}, w={w}) is outside the "
            f"{big_h}x{big_w} image; "
            "the image is not the one the views were planned for"
        )
    crop = _as_chw_uint8(image[top : top + h, left : left + w])
    if h == size and w == size:
        return crop.contiguous()
    # torch's native uint8 antialiased bilinear kernel: the exact call behind torchvision's
    # ``resize(..., BILINEAR, antialias=True)`` on uint8 CPU tensors, without its dispatch overhead.
    out = nnf.interpolate(
        crop.unsqueeze(0), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return out[0]


def _adjust_contrast_exact(img: torch.Tensor, factor: float) -> torch.Tensor:
    """torchvision's contrast adjustment on uint8 with the grey mean computed as an exact integer
    sum."""
    grey = tvf.rgb_to_grayscale(img, num_output_channels=1)  # uint8, truncated like torchvision
    mean = float(grey.sum(dtype=torch.int64).item()) / grey.numel()
    out = img.mul(factor).add_(mean * (1.0 - factor)).clamp_(0, 255)
    return out.to(torch.uint8)


def _gaussian_blur_exact(img: torch.Tensor, sigma: float, ksize: int) -> torch.Tensor:
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


# Rows r, g, b; columns the HSV sector 0..5; entries index (v, p, q, t) as in torchvision.
_HSV_SELECT = np.array([[0, 2, 1, 1, 3, 0], [3, 0, 0, 2, 1, 1], [1, 1, 3, 0, 0, 2]], dtype=np.int64)


def _reflect_pad(x: np.ndarray, pad: int, axis: int) -> np.ndarray:
    """Reflect-pad (torch's ``reflect``, no edge repeat) ``pad`` < size elements on ``axis``."""
    n = x.shape[axis]
    left = np.take(x, np.arange(pad, 0, -1), axis=axis)
    right = np.take(x, np.arange(n - 2, n - 2 - pad, -1), axis=axis)
    return np.concatenate([left, x, right], axis=axis)


def _adjust_hue_exact(img: torch.Tensor, hue: float) -> torch.Tensor:
    """torchvision's HSV hue shift of (3, H, W) uint8 by ``hue`` turns, in numpy float32 (same
    formulas and uint8 conversion as ``torchvision.transforms.v2.functional.adjust_hue``)."""
    if hue == 0.0:
        return img
    x = img.contiguous().numpy().astype(np.float32) / np.float32(255.0)
    r, g, b = x[0], x[1], x[2]
    maxc, minc = x.max(axis=0), x.min(axis=0)
    crange = maxc - minc
    eq = crange == 0
    one = np.float32(1.0)
    sat = crange / np.where(eq, one, maxc)
    div = np.where(eq, one, crange)
    rc, gc, bc = (maxc - r) / div, (maxc - g) / div, (maxc - b) / div
    hh = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hh = np.fmod(hh.astype(np.float32) * np.float32(1.0 / 6.0) + one, one)
    hh = np.fmod(hh + np.float32(hue), one)
    hh = np.where(hh < 0, hh + one, hh)
    h6 = hh * np.float32(6.0)
    i = np.floor(h6)
    f = h6 - i
    idx = i.astype(np.int64) % 6
    sf = sat * f
    q = np.clip((one - sf) * maxc, 0, 1)
    t = np.clip((sf + (one - sat)) * maxc, 0, 1)
    p = np.clip((one - sat) * maxc, 0, 1)
    vpqt = np.stack([maxc, p, q, t])
    out = np.take_along_axis(vpqt, _HSV_SELECT[:, idx], axis=0)
    return torch.from_numpy((out * np.float32(256.0 - 1e-3)).astype(np.uint8))


@dataclass(frozen=True)
class Recipe:
    """A named view recipe: output size, normalisation and a parameter schema of P numbers."""

    name: str
    """Registry name of the recipe."""
    size: int
    """Output side in pixels (S); views are (3, S, S)."""
    mean: tuple[float, float, float]
    """Per-channel normalisation mean (on [0, 1] pixels)."""
    std: tuple[float, float, float]
    """Per-channel normalisation std."""
    interpolation: str = "bilinear"
    """Resize interpolation (antialiased)."""

    param_names: ClassVar[tuple[str, ...]] = ()
    uniforms_per_view: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"recipe size must be >= 8 px, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("recipe mean/std must be 3 numbers, std > 0")

    @property
    def num_params(self) -> int:
        """P, the length of a view's parameter vector."""
        return len(self.param_names)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (name, size, schema, ranges) recorded in the store."""
        d: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            d[f.name] = list(v) if isinstance(v, tuple) else v
        d["param_names"] = list(self.param_names)
        d["num_params"] = self.num_params
        d["antialias"] = True
        return d

    def sample_batch(
        self,
        seed: int,
        index: np.ndarray,
        view: np.ndarray,
        heights: np.ndarray,
        widths: np.ndarray,
    ) -> np.ndarray:
        """Parameters for n (index, view) pairs of images sized (heights, widths): (n, P)
        float32."""
        raise NotImplementedError

    def sample(self, seed: int, index: int, view: int, height: int, width: int) -> np.ndarray:
        """Parameters of view ``view`` of row ``index`` (image height x width px): (P,) float32.

        Depends only on (seed, index, view, height, width); equals the row of :func:`plan_views`.
        """
        one = np.array([index], dtype=np.int64)
        return self.sample_batch(
            seed, one, np.array([view]), np.array([height]), np.array([width])
        )[0]

    def render(self, image: np.ndarray, params: np.ndarray) -> torch.Tensor:
        """See :func:`render_view`."""
        raise NotImplementedError

    def param_ranges(self) -> dict[str, tuple[float, float]]:
        """Inclusive ``(low, high)`` of every non-crop parameter this recipe can sample
        (flags are 0..1); used to validate parameters that did not come from ``sample``."""
        return {}


@dataclass(frozen=True)
class MoCoV2Recipe(Recipe):
    """MoCo-v2 (DESIGN §5): RandomResizedCrop, ColorJitter p0.8 (factors + order), Grayscale p0.2,
    GaussianBlur p0.5 (kernel :func:`blur_kernel_size`), horizontal flip p0.5, normalise.

    Parameters: crop box in source pixels; ``jitter`` 1/0 with identity factors (1, 1, 1, 0) when 0;
    ``order_k`` the jitter order (0 brightness, 1 contrast, 2 saturation, 3 hue);
    ``blur_sigma`` 0 = no blur, else in [blur_sigma_min, blur_sigma_max] output pixels.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    scale: tuple[float, float] = (0.2, 1.0)
    """RandomResizedCrop area fraction range."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect-ratio (w/h) range."""
    jitter_p: float = 0.8
    """Probability of colour jitter."""
    brightness: float = 0.4
    """Brightness factor in [1 - b, 1 + b]."""
    contrast: float = 0.4
    """Contrast factor in [1 - c, 1 + c]."""
    saturation: float = 0.4
    """Saturation factor in [1 - s, 1 + s]."""
    hue: float = 0.1
    """Hue shift in [-h, h]."""
    grayscale_p: float = 0.2
    """Probability of grayscale."""
    blur_p: float = 0.5
    """Probability of Gaussian blur."""
    blur_sigma_min: float = 0.1
    """Smallest blur sigma (output px)."""
    blur_sigma_max: float = 2.0
    """Largest blur sigma (output px)."""
    flip_p: float = 0.5
    """Probability of horizontal flip."""

    param_names: ClassVar[tuple[str, ...]] = (
        "crop_top", "crop_left", "crop_height", "crop_width", "flip", "jitter",
        "brightness", "contrast", "saturation", "hue",
        "order_0", "order_1", "order_2", "order_3", "grayscale", "blur_sigma",
    )  # fmt: skip
    uniforms_per_view: ClassVar[int] = 40 + 1 + 1 + 4 + 4 + 1 + 1 + 1

    def param_ranges(self) -> dict[str, tuple[float, float]]:
        """See :meth:`Recipe.param_ranges`; ``blur_sigma`` 0 means no blur."""
        return {
            "flip": (0.0, 1.0),
            "jitter": (0.0, 1.0),
            "brightness": (max(0.0, 1 - self.brightness), 1 + self.brightness),
            "contrast": (max(0.0, 1 - self.contrast), 1 + self.contrast),
            "saturation": (max(0.0, 1 - self.saturation), 1 + self.saturation),
            "hue": (-self.hue, self.hue),
            **{f"order_{k}": (0.0, 3.0) for k in range(4)},
            "grayscale": (0.0, 1.0),
            "blur_sigma": (0.0, self.blur_sigma_max),
        }

    def sample_batch(
        self,
        seed: int,
        index: np.ndarray,
        view: np.ndarray,
        heights: np.ndarray,
        widths: np.ndarray,
    ) -> np.ndarray:
        """(n, 16) float32 MoCo-v2 parameters; see the class docstring for the schema."""
        u = counter_uniforms(seed, index, view, self.uniforms_per_view)
        n = len(u)
        out = np.zeros((n, self.num_params), dtype=np.float64)
        out[:, 0:4] = _sample_crop(u[:, :40], np.asarray(heights), np.asarray(widths),
                                   self.scale, self.ratio)  # fmt: skip
        out[:, 4] = u[:, 40] < self.flip_p
        jitter = u[:, 41] < self.jitter_p
        out[:, 5] = jitter

        def factor(col: np.ndarray, amount: float) -> np.ndarray:
            lo = max(0.0, 1.0 - amount)
            return lo + col * ((1.0 + amount) - lo)

        out[:, 6] = np.where(jitter, factor(u[:, 42], self.brightness), 1.0)
        out[:, 7] = np.where(jitter, factor(u[:, 43], self.contrast), 1.0)
        out[:, 8] = np.where(jitter, factor(u[:, 44], self.saturation), 1.0)
        out[:, 9] = np.where(jitter, -self.hue + u[:, 45] * (2 * self.hue), 0.0)
        out[:, 10:14] = np.argsort(u[:, 46:50], axis=1, kind="stable")
        out[:, 14] = u[:, 50] < self.grayscale_p
        blur = u[:, 51] < self.blur_p
        sigma = self.blur_sigma_min + u[:, 52] * (self.blur_sigma_max - self.blur_sigma_min)
        out[:, 15] = np.where(blur, sigma, 0.0)
        return out.astype(np.float32)

    def render(self, image: np.ndarray, params: np.ndarray) -> torch.Tensor:
        """See :func:`render_view`."""
        p = np.asarray(params, dtype=np.float32)
        img = _crop_resize(image, p[0:4], self.size)
        if p[5] >= 0.5:
            for k in p[10:14].astype(np.int64).tolist():
                if k == 0:
                    img = tvf.adjust_brightness(img, float(p[6]))
                elif k == 1:
                    img = _adjust_contrast_exact(img, float(p[7]))
                elif k == 2:
                    img = tvf.adjust_saturation(img, float(p[8]))
                else:
                    img = _adjust_hue_exact(img, float(p[9]))
        if p[14] >= 0.5:
            img = tvf.rgb_to_grayscale(img, num_output_channels=3)
        if p[15] > 0:
            img = _gaussian_blur_exact(img, float(p[15]), blur_kernel_size(self.size))
        if p[4] >= 0.5:
            img = img.flip(-1)
        return _normalise(img, self.mean, self.std)


@functools.lru_cache(maxsize=16)
def _centred_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return xx, yy


@dataclass(frozen=True)
class DigitsRecipe(Recipe):
    """Digits (DESIGN §5 prototype): RandomResizedCrop scale 0.5-1, rotation, x-shear (about the
    centre, bilinear, black fill), brightness then gamma jitter; no flips, no hue, no blur.

    Parameters: crop box in source pixels, ``angle`` and ``shear`` in degrees, ``brightness``
    factor,
    ``gamma`` exponent.
    """

    mean: tuple[float, float, float] = (0.1307, 0.1307, 0.1307)
    std: tuple[float, float, float] = (0.3081, 0.3081, 0.3081)
    scale: tuple[float, float] = (0.5, 1.0)
    """RandomResizedCrop area fraction range."""
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    """RandomResizedCrop aspect-ratio (w/h) range."""
    max_angle: float = 15.0
    """Rotation in [-a, a] degrees."""
    max_shear: float = 10.0
    """x-shear in [-s, s] degrees."""
    brightness: tuple[float, float] = (0.7, 1.3)
    """Brightness factor range."""
    gamma: tuple[float, float] = (0.7, 1.4)
    """Gamma exponent range."""

    param_names: ClassVar[tuple[str, ...]] = (
        "crop_top", "crop_left", "crop_height", "crop_width",
        "angle", "shear", "brightness", "gamma",
    )  # fmt: skip
    uniforms_per_view: ClassVar[int] = 40 + 4

    def param_ranges(self) -> dict[str, tuple[float, float]]:
        """See :meth:`Recipe.param_ranges`."""
        return {
            "angle": (-self.max_angle, self.max_angle),
            "shear": (-self.max_shear, self.max_shear),
            "brightness": self.brightness,
            "gamma": self.gamma,
        }

    def sample_batch(
        self,
        seed: int,
        index: np.ndarray,
        view: np.ndarray,
        heights: np.ndarray,
        widths: np.ndarray,
    ) -> np.ndarray:
        """(n, 8) float32 digits parameters; see the class docstring for the schema."""
        u = counter_uniforms(seed, index, view, self.uniforms_per_view)
        out = np.zeros((len(u), self.num_params), dtype=np.float64)
        out[:, 0:4] = _sample_crop(u[:, :40], np.asarray(heights), np.asarray(widths),
                                   self.scale, self.ratio)  # fmt: skip
        out[:, 4] = -self.max_angle + u[:, 40] * (2 * self.max_angle)
        out[:, 5] = -self.max_shear + u[:, 41] * (2 * self.max_shear)
        out[:, 6] = self.brightness[0] + u[:, 42] * (self.brightness[1] - self.brightness[0])
        out[:, 7] = self.gamma[0] + u[:, 43] * (self.gamma[1] - self.gamma[0])
        return out.astype(np.float32)

    def _affine(self, img: torch.Tensor, angle: float, shear: float) -> torch.Tensor:
        """Rotate + x-shear about the centre (torchvision's inverse-matrix convention), bilinear,
        zero fill. The sampling grid is built in numpy (no matmul whose reduction could depend on
        the thread count); ``grid_sample`` computes each output pixel independently."""
        if angle == 0.0 and shear == 0.0:
            return img
        rot, sx = math.radians(angle), math.radians(shear)
        a, c = math.cos(rot), math.sin(rot)
        b = -math.cos(rot) * math.tan(sx) - math.sin(rot)
        d = -math.sin(rot) * math.tan(sx) + math.cos(rot)
        xx, yy = _centred_coords(self.size)
        half = self.size / 2
        gx = (d * xx - b * yy) / half
        gy = (-c * xx + a * yy) / half
        grid = torch.from_numpy(np.stack([gx, gy], axis=-1).astype(np.float32)).unsqueeze(0)
        src = img.to(torch.float32).unsqueeze(0)
        out = nnf.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out[0].round_().clamp_(0, 255).to(torch.uint8)

    def render(self, image: np.ndarray, params: np.ndarray) -> torch.Tensor:
        """See :func:`render_view`."""
        p = np.asarray(params, dtype=np.float32)
        img = _crop_resize(image, p[0:4], self.size)
        img = self._affine(img, float(p[4]), float(p[5]))
        img = tvf.adjust_brightness(img, float(p[6]))
        img = tvf.adjust_gamma(img, float(p[7]))
        return _normalise(img, self.mean, self.std)


RECIPES: dict[str, Callable[[int], Recipe]] = {
    "mocov2": lambda size: MoCoV2Recipe(name="mocov2", size=size),
    "digits": lambda size: DigitsRecipe(name="digits", size=size),
}


def get_recipe(name: str, size: int) -> Recipe:
    """The registered recipe ``name`` at output size ``size`` px; unknown names raise
    ConfigError."""
    if name not in RECIPES:
        raise ConfigError(f"unknown view recipe {name!r}; valid: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](int(size))


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from :meth:`Recipe.to_dict` (as stored); extra keys like seed/views are
    ignored.

    Raises ConfigError if the stored schema differs from this code's recipe of that name.
    """
    recipe = get_recipe(str(d["name"]), int(d["size"]))
    mine = recipe.to_dict()
    for key, value in mine.items():
        stored = d.get(key)
        if isinstance(value, float) and isinstance(stored, int | float):
            same = math.isclose(value, float(stored), rel_tol=0, abs_tol=1e-12)
        elif isinstance(value, list) and isinstance(stored, list) and len(value) == len(stored):
            same = all(
                math.isclose(float(a), float(b), abs_tol=1e-12)
                if isinstance(a, int | float) and not isinstance(a, bool)
                else a == b
                for a, b in zip(value, stored, strict=True)
            )
        else:
            same = stored == value
        if not same:
            raise ConfigError(
                f"stored recipe field {key!r} = {stored!r} differs from this code's {value!r}"
            )
    return recipe


def plan_views(
    recipe: Recipe,
    seed: int,
    heights: np.ndarray,
    widths: np.ndarray,
    views: int,
    progress: bool = False,
) -> np.ndarray:
    """Parameters for every (row i, view v): (N, V, P) float32; row i uses key (seed, i, v).

    ``heights``/``widths`` are (N,) image sizes in pixels (0 for undecodable rows: a 1x1 box is
    planned).
    """
    heights = np.asarray(heights, dtype=np.int64)
    widths = np.asarray(widths, dtype=np.int64)
    n = len(heights)
    if views < 1:
        raise ConfigError(f"views must be >= 1, got {views}")
    out = np.empty((n, views, recipe.num_params), dtype=np.float32)
    block = max(1, 65536 // views)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"plan {recipe.name} x{views}", total=n)
        for start in range(0, n, block):
            stop = min(n, start + block)
            rows = np.repeat(np.arange(start, stop, dtype=np.int64), views)
            vs = np.tile(np.arange(views, dtype=np.int64), stop - start)
            p = recipe.sample_batch(
                seed, rows, vs, np.repeat(heights[start:stop], views),
                np.repeat(widths[start:stop], views),
            )  # fmt: skip
            out[start:stop] = p.reshape(stop - start, views, recipe.num_params)
            bar.advance(task, stop - start)
    return out


def render_view(image: np.ndarray, params: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Render one view: (H, W, 3) uint8 image + (P,) float32 params -> (3, S, S) float32,
    normalised.

    The one render function both sides call. Works in uint8 throughout and converts to float last,
    so the bytes are identical in any process and at any torch thread count.
    """
    return recipe.render(image, params)


def render_center(image: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Un-augmented view: (H, W, 3) uint8 -> (3, S, S) float32 normalised.

    Centre square crop of side min(H, W) in source pixels, resized (bilinear, antialiased) to S x S:
    resize-shorter-side-to-S + centre-crop up to edge rounding, with bounded cost for extreme aspect
    ratios.
    """
    big_h, big_w = image.shape[0], image.shape[1]
    side = min(big_h, big_w)
    box = np.array([(big_h - side) // 2, (big_w - side) // 2, side, side])
    return _normalise(_crop_resize(image, box, recipe.size), recipe.mean, recipe.std)
