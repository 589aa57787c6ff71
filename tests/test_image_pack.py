"""Decoded sources cross from DataLoader workers as one shared-memory uint8 tensor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from store.errors import DatasetError
from store.image_pack import ImagePack, pack_images


def _images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(5, 7), (9, 4), (1, 1), (6, 6)]
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]


class _Packs(Dataset[ImagePack]):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> ImagePack:
        return pack_images(_images(i))


def test_a_worker_hands_over_shared_memory_views_of_the_images() -> None:
    loader = DataLoader(_Packs(), batch_size=None, num_workers=1)
    for i, pack in enumerate(loader):
        assert pack.data.dtype == torch.uint8 and pack.data.is_shared()  # no pickled bytes
        assert len(pack) == 4 and pack.shapes.tolist() == [[5, 7], [9, 4], [1, 1], [6, 6]]
        got = pack.images()
        for img, want in zip(got, _images(i), strict=True):
            assert np.array_equal(img.numpy(), want)
            assert img.untyped_storage().data_ptr() == pack.data.untyped_storage().data_ptr()


def test_in_process_pack_is_plain_memory_and_refuses_non_rgb() -> None:
    pack = pack_images(_images(0))
    assert not pack.data.is_shared() and pack.data.numel() == sum(i.size for i in _images(0))
    with pytest.raises(DatasetError, match=r"\(H, W, 3\) uint8"):
        pack_images([np.zeros((4, 4), np.uint8)])
