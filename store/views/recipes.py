"""View recipes: named augmentation schemas that sample (P,) parameter vectors and render them.

A view is fully described by its parameter vector (P,) float32, sampled from the counter RNG
(:mod:`store.views.rng`) keyed by (plan seed, row index, view) and stored as ``views/params``
(N, V, P). Rendering works on uint8 tensors (crop + resize, then the recipe's ops) and converts to
float and normalises last, so the bytes are the same in any process and at any thread count.
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
from torchvision.transforms.v2 import functional as tvf

from store.errors import ConfigError
from store.views.crop import INTERPOLATIONS, check_interpolation, crop_resize, sample_crop
from store.views.kernels import (
    adjust_contrast_exact,
    blur_kernel_size,
    gaussian_blur_exact,
    normalise,
)
from store.views.rng import counter_uniforms

__all__ = [
    "RECIPES",
    "DigitsRecipe",
    "MoCoV2Recipe",
    "Recipe",
    "get_recipe",
    "recipe_from_dict",
]


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
    """Crop resize interpolation: bilinear or bicubic (antialiased) or nearest (pixel centres)."""

    param_names: ClassVar[tuple[str, ...]] = ()
    uniforms_per_view: ClassVar[int] = 0

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ConfigError(f"recipe size must be >= 8 px, got {self.size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError("recipe mean/std must be 3 numbers, std > 0")
        check_interpolation(self.interpolation)

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
        d["antialias"] = INTERPOLATIONS[self.interpolation][1]
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
        out[:, 0:4] = sample_crop(u[:, :40], np.asarray(heights), np.asarray(widths),
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
        img = crop_resize(image, p[0:4], self.size, self.interpolation)
        if p[5] >= 0.5:
            for k in p[10:14].astype(np.int64).tolist():
                if k == 0:
                    img = tvf.adjust_brightness(img, float(p[6]))
                elif k == 1:
                    img = adjust_contrast_exact(img, float(p[7]))
                elif k == 2:
                    img = tvf.adjust_saturation(img, float(p[8]))
                else:
                    img = tvf.adjust_hue(img, float(p[9]))
        if p[14] >= 0.5:
            img = tvf.rgb_to_grayscale(img, num_output_channels=3)
        if p[15] > 0:
            img = gaussian_blur_exact(img, float(p[15]), blur_kernel_size(self.size))
        if p[4] >= 0.5:
            img = img.flip(-1)
        return normalise(img, self.mean, self.std)


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
    factor, ``gamma`` exponent.
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
        out[:, 0:4] = sample_crop(u[:, :40], np.asarray(heights), np.asarray(widths),
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
        img = crop_resize(image, p[0:4], self.size, self.interpolation)
        img = self._affine(img, float(p[4]), float(p[5]))
        img = tvf.adjust_brightness(img, float(p[6]))
        img = tvf.adjust_gamma(img, float(p[7]))
        return normalise(img, self.mean, self.std)


RECIPES: dict[str, Callable[..., Recipe]] = {
    "mocov2": MoCoV2Recipe,
    "digits": DigitsRecipe,
}
"""Registered recipes by name; :func:`get_recipe` builds one."""


def get_recipe(name: str, size: int, interpolation: str = "bilinear") -> Recipe:
    """The registered recipe ``name`` at output size ``size`` px, resizing with ``interpolation``
    (:data:`store.views.crop.INTERPOLATIONS`); unknown names raise ConfigError listing the valid
    ones."""
    if name not in RECIPES:
        raise ConfigError(f"unknown view recipe {name!r}; valid: {', '.join(sorted(RECIPES))}")
    return RECIPES[name](name=name, size=int(size), interpolation=interpolation)


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """Rebuild a recipe from :meth:`Recipe.to_dict` (as stored); extra keys like seed/views are
    ignored.

    Raises ConfigError if the stored schema differs from this code's recipe of that name.
    """
    recipe = get_recipe(str(d["name"]), int(d["size"]), str(d.get("interpolation", "bilinear")))
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
