"""Backbone features of un-augmented images for the train (bank) and test (query) splits, cached.

A *feature model* turns one decoded image into a tensor (``prepare``) and a batch of those into
(B, F) float32 features (``embed``). Two kinds exist:

* :class:`EncoderFeatures` — a checkpoint loaded with ``teacher_service.checkpoint.load_encoder``;
  images go through ``store.views.render_center`` (resize shorter side + centre crop + normalise)
  and the raw backbone feature ``encoder(x, output="feature")`` is kept (the MLP head is not
  deployed).
* :class:`TeacherFeatures` — any teacher source (``timm:``, ``hf:``, ``open_clip:``, ``py:``):
  the centre view goes to the teacher as uint8 pixels, the teacher normalises them itself, and its
  backbone feature is kept.
* :class:`PixelFeatures` — the raw-pixel baseline: uint8 pixels / 255, flattened (DESIGN §12).

:func:`extract_features` caches both splits in one ``.npz`` named by a sha256 over the model
identity (checkpoint sha256 + preprocessing), the dataset spec + keys + labels, and the image
size, so re-evaluating an unchanged checkpoint reads the file instead of running the network.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from rich.progress import Progress

from store.atomic import atomic_write
from store.datasets import ImageDataset
from store.errors import DatasetError, DecodeError
from store.runtime import prepare_model, resolve_device, to_device
from store.views import get_recipe, render_center
from teacher_service.checkpoint import FORMAT, load_encoder, read_checkpoint
from teacher_service.encoders import count_parameters
from teacher_service.sources import load_teacher, to_pixels

CACHE_VERSION = "disco-features/1"


def default_cache_dir() -> Path:
    """``$DISCO_FEATURE_CACHE`` if set, else ``~/.cache/disco/features``."""
    env = os.environ.get("DISCO_FEATURE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "disco" / "features"


class FeatureModel(Protocol):
    """What :func:`extract_features` needs from a model."""

    name: str

    def identity(self) -> dict[str, Any]:
        """JSON-able description that changes whenever the features would change."""
        ...

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """One (H, W, 3) uint8 image -> the model's input tensor (fixed shape per model)."""
        ...

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """A stacked batch of prepared inputs -> (B, F) float32 features on the CPU."""
        ...


def _eval_recipe(preprocessing: dict[str, Any], size: int) -> Any:
    """The view recipe used for ``render_center`` at ``size`` px, with the checkpoint's mean/std.

    ``preprocessing["recipe"]`` may be a recipe name, a ``Recipe.to_dict()`` dict, or None
    (MoCo-v2 / torchvision files: the "mocov2" recipe with the recorded ImageNet mean/std).
    """
    named = preprocessing.get("recipe")
    if isinstance(named, dict):
        named = named.get("name")
    recipe = get_recipe(str(named or "mocov2"), size)
    changes: dict[str, Any] = {}
    for field in ("mean", "std"):
        value = preprocessing.get(field)
        if value is not None and tuple(float(v) for v in value) != tuple(getattr(recipe, field)):
            changes[field] = tuple(float(v) for v in value)
    return dataclasses.replace(recipe, **changes) if changes else recipe


class EncoderFeatures:
    """Backbone features of a checkpoint (see module docstring).

    ``size`` overrides the checkpoint's preprocessing size (pixels). ``info`` is the loader's info
    dict; ``meta``/``train`` are the checkpoint's free-form dicts (empty for foreign formats).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int | None = None,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.device = str(resolve_device(device))
        loaded = load_encoder(self.path, device=self.device)
        self.encoder = loaded.encoder
        prepare_model(self.encoder, self.device)  # see runtime.prepare_model
        self.info: dict[str, Any] = loaded.info
        if "meta" in self.info:  # a student export: metadata from the .json beside it
            self.meta: dict[str, Any] = dict(self.info["meta"])
            self.train: dict[str, Any] = dict(self.info.get("train") or {})
        else:
            raw = read_checkpoint(self.path)
            own = isinstance(raw, dict) and raw.get("format") == FORMAT
            self.meta = dict(raw.get("meta") or {}) if own else {}
            self.train = dict(raw.get("train") or {}) if own else {}
            del raw
        preprocessing = dict(self.info.get("preprocessing") or {})
        self.size = int(size or preprocessing.get("size") or 224)
        self.recipe = _eval_recipe(preprocessing, self.size)
        self.name = name or str(self.meta.get("name") or self.path.stem)
        self.method = str(
            self.meta.get("method") or self.train.get("method") or self.info["format"]
        )
        self.params = count_parameters(self.encoder.backbone)
        self.feature_dim = int(self.info["feature_dim"])

    def identity(self) -> dict[str, Any]:
        """Checkpoint sha256 + the exact preprocessing used."""
        return {
            "kind": "checkpoint",
            "sha256": self.info["sha256"],
            "recipe": self.recipe.to_dict(),
            "size": self.size,
        }

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S) float32 via ``store.views.render_center``."""
        return render_center(image, self.recipe)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 -> (B, F) float32 backbone features (CPU).

        On CUDA the batch goes through pinned memory with a non-blocking ``channels_last`` copy.
        """
        if torch.device(self.device).type == "cuda":
            batch = batch.pin_memory()
        with torch.inference_mode():
            out = self.encoder(to_device(batch, self.device), output="feature")
        assert isinstance(out, torch.Tensor)
        return out.float().cpu()


class TeacherFeatures:
    """Backbone features of a teacher source (see module docstring).

    ``spec``/``weights``/``pooling`` as ``--teacher``/``--teacher-weights``/``--teacher-pooling``;
    ``size`` defaults to the teacher's input size (pixels).
    """

    method = "teacher"

    def __init__(
        self,
        spec: str,
        weights: str | os.PathLike[str] | None = None,
        pooling: str | None = None,
        size: int | None = None,
        device: str | None = None,
        name: str | None = None,
    ) -> None:
        self.device = resolve_device(device)
        loaded = load_teacher(spec, weights, pooling, device=self.device)
        self.model = loaded.model
        prepare_model(self.model, self.device)
        self.info: dict[str, Any] = loaded.info
        self.path = spec
        self.size = int(size or self.model.input_size)
        self.model.check_size(self.size)
        # Only the crop + resize of render_center matter: the pixels go to the teacher.
        self.recipe = get_recipe("mocov2", self.size)
        self.name = name or str(self.info.get("spec"))
        self.params = sum(p.numel() for p in self.model.parameters())
        self.feature_dim = int(self.info["feature_dim"])

    def identity(self) -> dict[str, Any]:
        """Teacher identity (source, name, weights sha256, pooling) + view size."""
        keys = ("source", "name", "sha256", "pooling")
        return {"kind": "teacher", **{k: self.info.get(k) for k in keys}, "size": self.size}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S) uint8 centre view (the teacher normalises it)."""
        view = render_center(image, self.recipe)[None]
        return to_pixels(view, self.recipe.mean, self.recipe.std)[0]

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) uint8 -> (B, F) float32 backbone features (CPU)."""
        with torch.inference_mode():
            out = self.model(batch.to(self.device), output="feature")
        assert isinstance(out, torch.Tensor)
        return out.float().cpu()


class PixelFeatures:
    """Raw pixels scaled to [0, 1] and flattened: the baseline rows (DESIGN §12).

    Images already ``size`` x ``size`` are used as they are; others are resized (shorter side ->
    size, bilinear) and centre-cropped. ``size=None`` takes the shorter side of the dataset's first
    image (28 for mnist5k, 8 for digits) — call :meth:`bind` before use.
    """

    method = "pixels"
    params = 0

    def __init__(self, size: int | None = None, name: str = "raw pixels") -> None:
        self.size = size
        self.name = name
        self.feature_dim: int | None = None

    def bind(self, dataset: ImageDataset) -> None:
        """Fix ``size`` from the dataset's first image when it was not given."""
        if self.size is None:
            first = dataset.load(0)
            self.size = int(min(first.shape[0], first.shape[1]))
        self.feature_dim = self.size * self.size * 3

    def identity(self) -> dict[str, Any]:
        """Kind + size."""
        return {"kind": "pixels", "size": self.size}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (S * S * 3,) float32 in [0, 1]."""
        if self.size is None:
            raise RuntimeError("PixelFeatures.bind(dataset) must be called first")
        s = self.size
        if image.shape[:2] != (s, s):
            h, w = image.shape[:2]
            scale = s / min(h, w)
            nh, nw = max(s, round(h * scale)), max(s, round(w * scale))
            resized = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
            top, left = (nh - s) // 2, (nw - s) // 2
            image = resized[top : top + s, left : left + s]
        return torch.from_numpy(np.ascontiguousarray(image).reshape(-1).astype(np.float32) / 255.0)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """Identity on (B, S * S * 3) float32."""
        return batch.float()


@dataclass(frozen=True)
class SplitFeatures:
    """Features of one split: ``features`` (N, F) float32, ``labels`` (N,) int64, ``indices`` (N,)
    int64 dataset indices (undecodable samples left out)."""

    features: np.ndarray
    labels: np.ndarray
    indices: np.ndarray


@dataclass(frozen=True)
class FeatureSet:
    """Bank (train split) and queries (test split) of one model on one dataset."""

    train: SplitFeatures
    test: SplitFeatures
    skipped: list[str]
    """Keys of samples that could not be decoded (left out of both splits)."""
    cache_path: Path | None
    from_cache: bool


def dataset_fingerprint(dataset: ImageDataset) -> str:
    """sha256 over the dataset's spec, keys and labels (cheap; no image is read)."""
    h = hashlib.sha256(dataset.spec.encode())
    for key in dataset.keys:
        h.update(key.encode() + b"\0")
    h.update(np.ascontiguousarray(dataset.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def cache_key(model: FeatureModel, dataset: ImageDataset) -> str:
    """Hex name of the cache file for ``model`` on ``dataset``."""
    ident = {
        "version": CACHE_VERSION,
        "model": model.identity(),
        "dataset": dataset.spec,
        "data": dataset_fingerprint(dataset),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _extract_split(
    model: FeatureModel,
    dataset: ImageDataset,
    indices: np.ndarray,
    batch_size: int,
    progress: Progress | None,
    label: str,
    skipped: list[str],
) -> SplitFeatures:
    feats: list[torch.Tensor] = []
    kept: list[int] = []
    batch: list[torch.Tensor] = []
    task = progress.add_task(label, total=len(indices)) if progress is not None else None

    def flush() -> None:
        if batch:
            feats.append(model.embed(torch.stack(batch)))
            if progress is not None and task is not None:
                progress.advance(task, len(batch))
            batch.clear()

    for i in indices.tolist():
        try:
            image = dataset.load(i)
        except DecodeError:
            skipped.append(dataset.keys[i])
            if progress is not None and task is not None:
                progress.advance(task, 1)
            continue
        batch.append(model.prepare(image))
        kept.append(i)
        if len(batch) >= batch_size:
            flush()
    flush()
    if not kept:
        raise DatasetError(f"no decodable image in the {label} split of {dataset.spec!r}")
    kept_arr = np.asarray(kept, dtype=np.int64)
    return SplitFeatures(
        features=torch.cat(feats).numpy().astype(np.float32, copy=False),
        labels=np.asarray(dataset.labels, dtype=np.int64)[kept_arr],
        indices=kept_arr,
    )


def _save(path: Path, fs: FeatureSet) -> None:
    with atomic_write(path) as fh:
        np.savez(
            fh,
            train_features=fs.train.features,
            train_labels=fs.train.labels,
            train_indices=fs.train.indices,
            test_features=fs.test.features,
            test_labels=fs.test.labels,
            test_indices=fs.test.indices,
            skipped=np.asarray(fs.skipped, dtype=str),
        )


def _load(path: Path) -> FeatureSet:
    with np.load(path, allow_pickle=False) as z:
        return FeatureSet(
            train=SplitFeatures(z["train_features"], z["train_labels"], z["train_indices"]),
            test=SplitFeatures(z["test_features"], z["test_labels"], z["test_indices"]),
            skipped=[str(s) for s in z["skipped"]],
            cache_path=path,
            from_cache=True,
        )


def extract_features(
    model: FeatureModel,
    dataset: ImageDataset,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
    use_cache: bool = True,
) -> FeatureSet:
    """Features of the train split (bank) and test split (queries) of ``dataset``.

    Images are decoded in dataset split order, prepared one by one, embedded in batches of
    ``batch_size`` under ``torch.inference_mode``. Undecodable samples are skipped and listed. With
    ``use_cache`` the result is read from / written to ``cache_dir`` (default
    :func:`default_cache_dir`) as ``<sha256>.npz`` (written to a temporary name, then renamed).
    """
    if isinstance(model, PixelFeatures):
        model.bind(dataset)
    path = Path(cache_dir or default_cache_dir()) / f"{cache_key(model, dataset)}.npz"
    if use_cache and path.is_file():
        return _load(path)
    skipped: list[str] = []
    bar = Progress(transient=True, disable=not progress)
    with bar:
        train = _extract_split(
            model,
            dataset,
            dataset.split_indices("train"),
            batch_size,
            bar,
            f"{model.name}: train",
            skipped,
        )
        test = _extract_split(
            model,
            dataset,
            dataset.split_indices("test"),
            batch_size,
            bar,
            f"{model.name}: test",
            skipped,
        )
    fs = FeatureSet(train, test, skipped, path if use_cache else None, from_cache=False)
    if use_cache:
        _save(path, fs)
    return fs
