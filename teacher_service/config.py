"""Configs of the teacher-side jobs (`disco precompute`, `disco store verify`), checked when built.

Plain dataclasses with a one-line doc per field (the CLI derives its options from them); importing
this module imports no torch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from store.devices import parse_device_name
from store.errors import ConfigError
from store.precision import parse_precision

__all__ = [
    "AMP_DTYPES",
    "AMP_MODES",
    "POOLINGS",
    "STORE_DTYPES",
    "TEACHER_SOURCES",
    "PrecomputeConfig",
    "VerifyConfig",
    "check_pooling",
    "parse_teacher",
]

AMP_DTYPES = {"none": "float32", "bf16": "bfloat16", "fp16": "float16"}
"""Deprecated ``--amp`` mode -> compute dtype (``--precision``: ``store.precision``)."""
AMP_MODES = tuple(AMP_DTYPES)
STORE_DTYPES = ("float16", "int8")
RENDERERS = ("auto", "reference", "batched")
"""Renderer choices (as ``store.views.RENDERER_CHOICES``; restated so help needs no torch)."""
POOLINGS = ("cls", "mean", "cls+mean")
"""``--teacher-pooling`` values for ViT teachers: CLS token, mean of patch tokens, or both
concatenated (DINOv2's linear-probe feature)."""


TEACHER_SOURCES = {
    "timm": "timm:NAME (timm.create_model)",
    "hf": "hf:PATH_OR_ID (transformers AutoModel)",
    "open_clip": "open_clip:ARCH[@TAG] (encode_image)",
    "py": "py:MODULE:FUNCTION (your nn.Module factory)",
    "checkpoint": "PATH (disco, MoCo-v2 or torchvision checkpoint)",
}
"""``--teacher`` prefixes -> usage (the loaders: ``teacher_service.sources.SOURCES``)."""
_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]+):(.*)$")


def valid_teachers() -> str:
    """The valid ``--teacher`` spellings, for error messages."""
    return "; ".join(TEACHER_SOURCES.values())


def parse_teacher(spec: str) -> tuple[str, str]:
    """``(prefix, name)`` of a ``--teacher`` value; an existing file or a spec without a known
    ``prefix:`` is a checkpoint path. An unknown prefix raises ``ConfigError`` listing the
    valid ones."""
    spec = str(spec)
    if os.path.exists(spec):
        return "checkpoint", spec
    match = _PREFIX.match(spec)
    if match is None:
        return "checkpoint", spec
    prefix, name = match.groups()
    if prefix not in TEACHER_SOURCES:
        raise ConfigError(
            f"unknown teacher source {prefix!r} in {spec!r}; valid: {valid_teachers()}"
        )
    if not name:
        raise ConfigError(f"teacher {spec!r} names no model; valid: {valid_teachers()}")
    return prefix, name


def check_pooling(pooling: str | None) -> None:
    """Raise ``ConfigError`` unless ``pooling`` is None or one of :data:`POOLINGS`."""
    if pooling is not None and pooling not in POOLINGS:
        raise ConfigError(f"unknown teacher pooling {pooling!r}; valid: {', '.join(POOLINGS)}")


@dataclass
class PrecomputeConfig:
    """Settings of one precompute worker (the same for every worker of a job)."""

    teacher: str
    """Teacher: timm:NAME, hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a checkpoint."""
    dataset: str
    """Dataset spec, e.g. ``mnist5k``, ``imagefolder:/data/train``, ``hfds:PATH``, ``wds:PATTERN``,
    ``parquet:PATH``, ``py:MODULE:FUNCTION`` (``store.datasets.DATASETS``; options after ``?``)."""
    store: str
    """Store URL (local path or fsspec URL)."""
    views: int = 8
    """Planned views V per sample (used when the store is created)."""
    split: str = "all"
    """Dataset split: all, train or test."""
    recipe: str | None = None
    """View recipe name (store.views.RECIPES); None = the existing store's, else the teacher's
    recorded recipe, else mocov2 (``checkpoint.recipe_for``)."""
    size: int | None = None
    """View size S in px; None = the existing store's, else the teacher's recorded size."""
    seed: int = 0
    """View-plan seed."""
    batch_size: int = 256
    """Views per teacher forward (rounded down to whole samples: batch_size // V rows)."""
    workers: int | None = None
    """DataLoader worker processes decoding and rendering (0 = in the main process; None = 2 on
    CPU, the host's cores per GPU process minus one (at most 16) on CUDA)."""
    device: str = "auto"
    """auto (CUDA if present), cpu or cuda[:N]."""
    precision: str = "fp32"
    """Compute precision: fp32, or CUDA autocast bf16/fp16 (an error on CPU; recorded as
    teacher.compute_dtype)."""
    dtype: str = "float16"
    """Stored embedding dtype: float16 or int8 (per-dimension scales)."""
    shard_size: int = 4096
    """Rows per zarr shard (used when the store is created)."""
    features: bool = False
    """Also store backbone features (N, V, F) float16."""
    num_shards: int = 1
    """Job-array size: the store's shards are split across this many jobs (x WORLD_SIZE)."""
    shard_index: int = 0
    """This job's index in the job array, 0 <= shard_index < num_shards."""
    overwrite: bool = False
    """Replace an existing store instead of resuming it."""
    max_shards: int | None = None
    """Compute at most this many shards in this run (a measured fraction); None = all."""
    progress: bool = True
    """Show a rich progress bar."""
    renderer: str = "auto"
    """View renderer: auto (batched on CUDA, per-view reference on CPU), reference or batched."""
    wait_timeout: float = 600.0
    """Seconds a non-zero worker waits without a sign of progress from worker 0 (its manifest
    progress file, local stores) before giving up; on an fsspec URL, the whole wait."""
    manifest_workers: int | None = None
    """Processes reading image headers and hashing files for a new store's manifest (None: all
    cores)."""
    teacher_weights: str | None = None
    """Teacher weights: .safetensors, .pth/.bin state dict or snapshot folder (None: download)."""
    teacher_pooling: str | None = None
    """ViT teachers: cls, mean or cls+mean instead of the model's own pooled output."""
    amp: str | None = None
    """Deprecated: --precision (none = fp32, bf16, fp16)."""

    def __post_init__(self) -> None:
        check_pooling(self.teacher_pooling)
        self.precision = parse_precision(self.precision)
        if self.amp is not None:
            self.precision = parse_precision(self.amp, old_flag="--amp")
            self.amp = None
        if self.views < 1:
            raise ConfigError(f"views must be >= 1, got {self.views}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"workers must be >= 0, got {self.workers}")
        if self.manifest_workers is not None and self.manifest_workers < 1:
            raise ConfigError(f"manifest_workers must be >= 1, got {self.manifest_workers}")
        if self.dtype not in STORE_DTYPES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; valid: {', '.join(STORE_DTYPES)}")
        parse_device_name(self.device)
        if self.shard_size < 1:
            raise ConfigError(f"shard_size must be >= 1, got {self.shard_size}")
        if self.num_shards < 1 or not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"need 0 <= shard_index < num_shards, got {self.shard_index} / {self.num_shards}"
            )
        if self.size is not None and self.size < 8:
            raise ConfigError(f"size must be >= 8 px, got {self.size}")
        if self.max_shards is not None and self.max_shards < 0:
            raise ConfigError(f"max_shards must be >= 0, got {self.max_shards}")
        if self.renderer not in RENDERERS:
            raise ConfigError(f"unknown renderer {self.renderer!r}; valid: {', '.join(RENDERERS)}")


@dataclass
class VerifyConfig:
    """How ``disco store verify`` samples and checks cached views (the store and teacher aside)."""

    samples: int = 64
    """Stored views to re-render and check (spread over the shards)."""
    threshold: float = 0.999
    """Minimum cosine between the cached and the live embedding of a view."""
    seed: int = 0
    """Seed choosing the sampled views."""
    device: str = "auto"
    """auto (CUDA if present), cpu or cuda[:N]."""
    batch_size: int = 64
    """Views per live teacher forward."""
    accept_render_drift: bool = False
    """Check despite a render fingerprint drift; on pass, record this install's as accepted."""
    renderer: str = "auto"
    """Live views: auto (batched on CUDA, reference on CPU), reference or batched (batched is also
    checked against the reference within store.views.RENDER_BOUND)."""
    teacher_weights: str | None = None
    """Teacher weights: .safetensors, .pth/.bin state dict or snapshot folder (None: download)."""
    teacher_pooling: str | None = None
    """ViT teachers: cls, mean or cls+mean (None: the pooling the store recorded)."""
    dataset: str | None = None
    """The store's images at a new place (a dataset spec), checked against the manifest first
    (None: the spec the store recorded)."""
    full_check: bool = False
    """With dataset: hash every sample, not a sample of 64."""
    precision: str | None = None
    """Live forward precision: fp32, bf16 or fp16 (bf16/fp16 need CUDA; None: the store's
    recorded teacher.compute_dtype)."""

    def __post_init__(self) -> None:
        check_pooling(self.teacher_pooling)
        if self.precision is not None:
            self.precision = parse_precision(self.precision)
        if self.samples < 1 or self.batch_size < 1:
            raise ConfigError(
                f"samples and batch_size must be >= 1, got {self.samples}, {self.batch_size}"
            )
        if not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold is a cosine in [-1, 1], got {self.threshold}")
        if self.renderer not in RENDERERS:
            raise ConfigError(f"unknown renderer {self.renderer!r}; valid: {', '.join(RENDERERS)}")
        parse_device_name(self.device)
