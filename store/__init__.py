"""DisCo store: datasets, manifest, view recipes with exact replay, and the zarr embedding store."""

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
