"""Check client-sent view parameters against a recipe before anything is rendered.

A view of recipe ``r`` is a ``(P,)`` vector in ``r.param_names`` order. Every recipe's vector starts
with an integer crop box ``(top, left, height, width)`` in source pixels that must lie inside the
image; the other fields must lie in the ranges the recipe samples from (flags 0/1, jitter factors,
angles...), so a client can send only views the recipe could have planned.
"""

from __future__ import annotations

import numpy as np

from store.views import MoCoV2Recipe, Recipe

__all__ = ["ViewParamsError", "check_view_params"]

_TOL = 1e-4  # float32 round-off of sampled values (e.g. 1 + 0.4 stored as 1.4000001)
_CROP = ("crop_top", "crop_left", "crop_height", "crop_width")


class ViewParamsError(ValueError):
    """Client view parameters that the recipe could not have produced (answer 422)."""


def check_view_params(params: np.ndarray, recipe: Recipe, height: int, width: int) -> np.ndarray:
    """Validate ``params (V, P)`` for an image of ``height x width`` px; returns them as float32.

    Raises :class:`ViewParamsError` naming the view and field: wrong shape, non-finite values,
    a crop box that is not integral or not inside the image, a value outside the recipe's range,
    a flag that is not 0/1, a jitter order that is not a permutation of 0..3, a blur sigma that is
    neither 0 nor in ``[blur_sigma_min, blur_sigma_max]``.
    """
    arr = np.asarray(params, dtype=np.float64)
    p = recipe.num_params
    if arr.ndim != 2 or arr.shape[1] != p:
        raise ViewParamsError(
            f"view params must have shape (P,) or (V, P) with P = {p} for recipe "
            f"{recipe.name!r} ({', '.join(recipe.param_names)}); got {tuple(np.shape(params))}"
        )
    if not np.isfinite(arr).all():
        raise ViewParamsError("view params must be finite numbers (no NaN or infinity)")
    names = recipe.param_names
    ranges = recipe.param_ranges()
    for v, row in enumerate(arr):
        where = f"view {v}"
        if names[:4] == _CROP:
            box = row[:4]
            if np.any(np.abs(box - np.rint(box)) > 1e-6):
                raise ViewParamsError(f"{where}: the crop box must be whole pixels, got {box}")
            top, left, h, w = (int(x) for x in np.rint(box))
            if h < 1 or w < 1 or top < 0 or left < 0 or top + h > height or left + w > width:
                raise ViewParamsError(
                    f"{where}: crop box (top={top}, left={left}, height={h}, width={w}) is not "
                    f"inside the {height}x{width} image"
                )
        for name, value in zip(names, row, strict=True):
            if name not in ranges:
                continue
            lo, hi = ranges[name]
            if not lo - _TOL <= value <= hi + _TOL:
                raise ViewParamsError(f"{where}: {name} = {value:g} is outside [{lo:g}, {hi:g}]")
        _check_recipe_rules(recipe, dict(zip(names, row, strict=True)), where)
    return arr.astype(np.float32)


def _check_recipe_rules(recipe: Recipe, row: dict[str, float], where: str) -> None:
    if not isinstance(recipe, MoCoV2Recipe):
        return
    for flag in ("flip", "jitter", "grayscale"):
        if row[flag] not in (0.0, 1.0):
            raise ViewParamsError(f"{where}: {flag} must be 0 or 1, got {row[flag]:g}")
    order = [row[f"order_{k}"] for k in range(4)]
    if sorted(order) != [0.0, 1.0, 2.0, 3.0]:
        raise ViewParamsError(f"{where}: order_0..order_3 must be a permutation of 0..3")
    sigma = row["blur_sigma"]
    if sigma != 0.0 and not recipe.blur_sigma_min - _TOL <= sigma <= recipe.blur_sigma_max + _TOL:
        raise ViewParamsError(
            f"{where}: blur_sigma must be 0 (no blur) or in "
            f"[{recipe.blur_sigma_min:g}, {recipe.blur_sigma_max:g}], got {sigma:g}"
        )
