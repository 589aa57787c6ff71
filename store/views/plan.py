"""The view plan: parameters of every (row, view) of a dataset, sampled once and stored."""

from __future__ import annotations

import numpy as np
from rich.progress import Progress

from store.errors import ConfigError
from store.views.recipes import Recipe

__all__ = ["plan_views"]


def plan_views(
    recipe: Recipe,
    seed: int,
    heights: np.ndarray,
    widths: np.ndarray,
    views: int,
    progress: bool = False,
    first_row: int = 0,
) -> np.ndarray:
    """Parameters for every (row i, view v): (N, V, P) float32; row i uses key (seed, i, v).

    ``heights``/``widths`` are (N,) image sizes in pixels (0 for undecodable rows: a 1x1 box is
    planned). ``first_row`` is the store row of ``heights[0]`` (rows appended to a store are
    planned from N on: the same numbers a store created over the grown dataset plans for them).
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
            rows = np.repeat(np.arange(first_row + start, first_row + stop, dtype=np.int64), views)
            vs = np.tile(np.arange(views, dtype=np.int64), stop - start)
            p = recipe.sample_batch(
                seed, rows, vs, np.repeat(heights[start:stop], views),
                np.repeat(widths[start:stop], views),
            )  # fmt: skip
            out[start:stop] = p.reshape(stop - start, views, recipe.num_params)
            bar.advance(task, stop - start)
    return out
