"""Decoded images handed from DataLoader workers to the main process as one uint8 tensor.

A batch of b decoded sources of different sizes travels as :class:`ImagePack`: their bytes
concatenated in one flat uint8 tensor plus a (b, 2) int64 tensor of (H, W). Built in a worker,
the flat tensor is allocated in shared memory, so the main process receives a file descriptor
and maps the pages: no pickling of b numpy arrays (about 150 MB per batch of 256 ImageNet-sized
images) and one shared segment per batch instead of b. :meth:`ImagePack.images` gives each
source back as an (H, W, 3) view, no copy; the batched renderer
(``store.views.render_views``) takes those tensors as it takes numpy arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import get_worker_info

from store.errors import DatasetError

__all__ = ["ImagePack", "pack_images"]


@dataclass
class ImagePack:
    """``data`` (sum of H*W*3,) uint8 and ``shapes`` (b, 2) int64 (H, W) of b RGB images."""

    data: torch.Tensor
    shapes: torch.Tensor

    def __len__(self) -> int:
        """Number of images b."""
        return int(self.shapes.shape[0])

    def images(self) -> list[torch.Tensor]:
        """The b images as (H, W, 3) uint8 views of ``data`` (no copy)."""
        sizes = (self.shapes[:, 0] * self.shapes[:, 1] * 3).tolist()
        parts = torch.split(self.data, sizes)
        return [p.view(h, w, 3) for p, (h, w) in zip(parts, self.shapes.tolist(), strict=True)]

    def pin_memory(self) -> ImagePack:
        """The same pack in pinned host memory (an asynchronous copy to a GPU)."""
        return ImagePack(self.data.pin_memory(), self.shapes)


def pack_images(images: Sequence[np.ndarray]) -> ImagePack:
    """Pack b (H, W, 3) uint8 images into one :class:`ImagePack` (one copy of their bytes).

    In a DataLoader worker the flat tensor is created in shared memory, so handing it to the main
    process moves no bytes."""
    shapes = torch.tensor([img.shape[:2] for img in images], dtype=torch.int64).reshape(-1, 2)
    total = sum(int(img.size) for img in images)
    data = torch.empty(total, dtype=torch.uint8)
    if get_worker_info() is not None:  # a worker: the main process maps these pages
        data.share_memory_()
    flat = data.numpy()
    offset = 0
    for img in images:
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DatasetError(
                f"a decoded image must be (H, W, 3) uint8; got {img.shape} {img.dtype}"
            )
        flat[offset : offset + img.size] = img.reshape(-1)
        offset += img.size
    return ImagePack(data, shapes)
