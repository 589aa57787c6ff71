"""The one render function both the teacher and the student call: (image, params) -> view."""

from __future__ import annotations

import numpy as np
import torch

from store.views.crop import crop_resize
from store.views.kernels import normalise
from store.views.recipes import Recipe

__all__ = ["render_center", "render_view"]


def render_view(image: np.ndarray, params: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Render one view: (H, W, 3) uint8 image + (P,) float32 params -> (3, S, S) float32,
    normalised.

    The one render function both sides call. Works in uint8 throughout and converts to float last,
    so the bytes are identical in any process and at any torch thread count.
    """
    return recipe.render(image, params)


def render_center(image: np.ndarray, recipe: Recipe) -> torch.Tensor:
    """Un-augmented view: (H, W, 3) uint8 -> (3, S, S) float32 normalised.

    Centre square crop of side min(H, W) in source pixels, resized with the recipe's interpolation
    to S x S: resize-shorter-side-to-S + centre-crop up to edge rounding, with bounded cost for
    extreme aspect ratios.
    """
    big_h, big_w = image.shape[0], image.shape[1]
    side = min(big_h, big_w)
    box = np.array([(big_h - side) // 2, (big_w - side) // 2, side, side])
    img = crop_resize(image, box, recipe.size, recipe.interpolation)
    return normalise(img, recipe.mean, recipe.std)
