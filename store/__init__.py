"""DisCo store: datasets, manifest, view recipes with exact replay, and the zarr embedding store.

The names load from their modules on first use (``store.lazy``): importing the package, as
``disco --help`` does, imports no torch, zarr or torchvision.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from store.lazy import lazy_exports

if TYPE_CHECKING:
    from store.datasets import DATASETS, ImageDataset, open_dataset, split_indices
    from store.decode import decode_image, load_image_file
    from store.embedding_store import CODECS, SCHEMA, EmbeddingStore, ShardBlock, int8_scales
    from store.errors import (
        CheckpointError,
        ConfigError,
        DatasetError,
        DecodeError,
        DiscoError,
        StoreError,
        StoreMismatchError,
        StoreNotFoundError,
    )
    from store.manifest import Manifest, build_manifest
    from store.views import (
        RECIPES,
        Recipe,
        get_recipe,
        plan_views,
        recipe_from_dict,
        render_center,
        render_view,
    )

__all__ = [
    "CODECS",
    "DATASETS",
    "RECIPES",
    "SCHEMA",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "DecodeError",
    "DiscoError",
    "EmbeddingStore",
    "ImageDataset",
    "Manifest",
    "Recipe",
    "ShardBlock",
    "StoreError",
    "StoreMismatchError",
    "StoreNotFoundError",
    "build_manifest",
    "decode_image",
    "get_recipe",
    "int8_scales",
    "load_image_file",
    "open_dataset",
    "plan_views",
    "recipe_from_dict",
    "render_center",
    "render_view",
    "split_indices",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "CODECS": "store.embedding_store",
        "DATASETS": "store.datasets",
        "RECIPES": "store.views",
        "SCHEMA": "store.embedding_store",
        "CheckpointError": "store.errors",
        "ConfigError": "store.errors",
        "DatasetError": "store.errors",
        "DecodeError": "store.errors",
        "DiscoError": "store.errors",
        "EmbeddingStore": "store.embedding_store",
        "ImageDataset": "store.datasets",
        "Manifest": "store.manifest",
        "Recipe": "store.views",
        "ShardBlock": "store.embedding_store",
        "StoreError": "store.errors",
        "StoreMismatchError": "store.errors",
        "StoreNotFoundError": "store.errors",
        "build_manifest": "store.manifest",
        "decode_image": "store.decode",
        "get_recipe": "store.views",
        "int8_scales": "store.embedding_store",
        "load_image_file": "store.decode",
        "open_dataset": "store.datasets",
        "plan_views": "store.views",
        "recipe_from_dict": "store.views",
        "render_center": "store.views",
        "render_view": "store.views",
        "split_indices": "store.datasets",
    },
)
