"""``disco store verify``: is the cache faithful to the live teacher?

A sample of written (row, view) slots is drawn (spread over the shards: every shard with written
slots is hit once before any is hit twice), each view is re-rendered from the stored parameters
with the one render function, the live teacher embeds it, and the cosine to the cached vector is
measured. A control pairs each cached vector with the live embedding of a *different* sample's
view; it must fall below the threshold, or the check is not discriminative and verify fails.

With ``renderer="batched"`` (or ``auto`` on CUDA) the views are rendered by the batched renderer on
the device, and verify also checks it against the per-view reference on CPU: uint8 values within
``RENDER_BOUND["max_abs_diff"]`` and live embeddings of the two renders with cosine at least
``RENDER_BOUND["min_cosine"]`` (the stated bound under which a trainer may use another renderer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from store.dataset_base import ImageDataset
from store.embedding_store import EmbeddingStore
from store.errors import DecodeError, StoreError, StoreMismatchError
from store.precision import COMPUTE_DTYPES, parse_precision
from store.precision import compute_dtype as precision_dtype
from store.relocate import open_moved_dataset
from store.runtime import autocast, resolve_device
from store.views import (
    RENDER_BOUND,
    render_view,
    render_views,
    resolve_renderer,
)
from teacher_service.config import VerifyConfig
from teacher_service.sources import LoadedTeacher, load_teacher, to_pixels

__all__ = ["VerifyResult", "sample_slots", "verify_store"]


@dataclass
class VerifyResult:
    """Cosine statistics of cached vs live embeddings, and of the wrong-view control."""

    store: str
    samples: int
    """Views checked."""
    threshold: float
    cos_min: float
    cos_mean: float
    cos_median: float
    control_median: float
    """Median cosine of cached vectors to live embeddings of other samples' views."""
    control_max: float
    passed: bool
    """All checked cosines >= threshold and the control below it."""
    control_ok: bool
    """The control fell below the threshold (the check can tell a wrong view)."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Up to 20 ``{"row", "view", "shard", "cos"}`` below the threshold."""
    skipped: dict[str, str] = field(default_factory=dict)
    """Sample key -> reason for sampled rows that no longer decode."""
    render: str = "match"
    """Render fingerprint check: match, accepted, drift-accepted or unrecorded."""
    render_recorded: bool = False
    """This install's render fingerprint was recorded as accepted in the store (passed + asked)."""
    renderer: str = "reference"
    """Renderer of the live views (``reference`` per view on CPU, or ``batched`` on ``device``)."""
    render_device: str = "cpu"
    """Where the live views were rendered."""
    render_max_abs_diff: int | None = None
    """Batched only: max |batched - reference| over the uint8 values of the checked views."""
    render_cos_min: float | None = None
    """Batched only: min cosine of live embeddings of the batched vs the reference render."""
    render_ok: bool = True
    """Batched only: both within ``RENDER_BOUND`` (part of ``passed``)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)

    def summary(self) -> str:
        """Human-readable multi-line summary."""
        verdict = "PASS" if self.passed else "FAIL"
        lines = [
            f"{verdict}: {self.samples} views, cosine cached vs live: min {self.cos_min:.6f}, "
            f"median {self.cos_median:.6f}, mean {self.cos_mean:.6f} (threshold {self.threshold})",
            f"control (wrong view): median {self.control_median:.4f}, max {self.control_max:.4f} "
            f"-> {'ok, below threshold' if self.control_ok else 'NOT below threshold'}",
        ]
        if self.render_max_abs_diff is not None:
            lines.append(
                f"renderer {self.renderer} on {self.render_device} vs reference: max |diff| "
                f"{self.render_max_abs_diff} (bound {RENDER_BOUND['max_abs_diff']:.0f}), "
                f"embedding cosine min {self.render_cos_min:.6f} "
                f"(bound {RENDER_BOUND['min_cosine']}) -> {'ok' if self.render_ok else 'OUT'}"
            )
        shards = sorted({f["shard"] for f in self.failures})
        if self.failures:
            lines.append(f"{len(self.failures)}+ views below threshold, in shards {shards}")
        if self.render != "match":
            lines.append(
                f"render fingerprint: {self.render}"
                + ("; this install's fingerprint is now accepted" if self.render_recorded else "")
            )
        return "\n".join(lines)


def sample_slots(written: np.ndarray, shard_size: int, samples: int, seed: int) -> np.ndarray:
    """Pick up to ``samples`` written (row, view) slots, spread over shards: ``(k, 2) int64``.

    Shards take turns (in a seeded random order), each giving a random not-yet-picked slot.
    """
    rng = np.random.default_rng(seed)
    rows, views = np.nonzero(written)
    if len(rows) == 0:
        return np.empty((0, 2), np.int64)
    order = rng.permutation(len(rows))
    rows, views = rows[order], views[order]
    shard = rows // shard_size
    per_shard = [np.flatnonzero(shard == s) for s in rng.permutation(np.unique(shard))]
    picked: list[int] = []
    depth = 0
    while len(picked) < samples and any(depth < len(p) for p in per_shard):
        for p in per_shard:
            if depth < len(p) and len(picked) < samples:
                picked.append(int(p[depth]))
        depth += 1
    sel = np.asarray(picked, np.int64)
    return np.stack([rows[sel], views[sel]], axis=1).astype(np.int64)


def _precision_of(recorded: object) -> str:
    """The precision of a store's recorded ``compute_dtype`` (none recorded: fp32)."""
    names = {v: k for k, v in COMPUTE_DTYPES.items()}
    return names.get(str(recorded), parse_precision(None if recorded is None else str(recorded)))


def verify_store(
    url: str,
    teacher_path: str,
    samples: int = VerifyConfig.samples,
    threshold: float = VerifyConfig.threshold,
    seed: int = VerifyConfig.seed,
    device: str = VerifyConfig.device,
    batch_size: int = VerifyConfig.batch_size,
    teacher_weights: str | None = None,
    teacher_pooling: str | None = None,
    accept_render_drift: bool = VerifyConfig.accept_render_drift,
    renderer: str = VerifyConfig.renderer,
    dataset: str | None = None,
    full_check: bool = False,
    precision: str | None = VerifyConfig.precision,
) -> VerifyResult:
    """Check ``samples`` cached views of the store at ``url`` against the live teacher.

    ``teacher_path`` is any ``--teacher`` spelling (timm:, hf:, open_clip:, py:, a checkpoint);
    ``teacher_pooling`` defaults to the pooling the store recorded. The other options are
    :class:`teacher_service.config.VerifyConfig`'s fields (defaults and checks). Raises
    ``StoreMismatchError("teacher.<field>", ...)`` if the teacher is not the store's (source,
    name, weights sha256, pooling), ``StoreError`` if the store has no teacher or no written views,
    ``StoreMismatchError("render.fingerprint", ...)`` if this install renders the store's views
    differently and ``accept_render_drift`` is False, ``ConfigError`` for a bad option. With
    ``accept_render_drift``, a passing check records this install's render fingerprint as accepted
    in the store (then trainers here accept it too). ``renderer``: auto (batched on CUDA, reference
    on CPU), reference or batched; a batched render is also checked against the reference within
    ``RENDER_BOUND`` (see the module docstring). ``dataset``: the store's images at a new place,
    checked against the manifest before use (``store.relocate``; ``full_check`` hashes every
    row), else ``DatasetMismatchError`` naming the first differing key. ``precision``
    (fp32|bf16|fp16) runs the live
    teacher in that precision; None: the store's recorded ``compute_dtype``. bf16/fp16 need
    CUDA (a ``ConfigError`` on CPU, as in precompute and serve: pass ``precision="fp32"`` to
    check a bf16 store on a CPU host).
    """
    VerifyConfig(
        samples, threshold, seed, device, batch_size, accept_render_drift, renderer,
        dataset=dataset, full_check=full_check, precision=precision,
    )  # fmt: skip
    store = EmbeddingStore.open(url)
    render = store.check_render(accept_drift=accept_render_drift)
    dev = resolve_device(device)
    recorded = (store.teacher or {}).get("compute_dtype")
    dtype = precision_dtype(precision or _precision_of(recorded), dev.type)
    used = resolve_renderer(renderer, dev)
    loaded = _store_teacher(store, url, teacher_path, teacher_weights, teacher_pooling, dev)
    written = store.written_mask()
    slots = sample_slots(written, store.shard_size, samples, seed)
    if len(slots) == 0:
        raise StoreError(f"store {url} has no written views to verify")
    source = open_moved_dataset(store.manifest, dataset, full=full_check)
    sample = _render_sample(store, slots, source)
    if not len(sample.slots):
        raise StoreError(f"none of the sampled rows of {url} decode any more")
    live = _embed(loaded.model, sample.pixels, dev, dtype, batch_size)
    extra: dict[str, Any] = {
        "renderer": used,
        "render_device": str(dev) if used != "reference" else "cpu",
    }
    if used == "batched":
        live, render_check = _check_batched(
            store, sample, live, loaded.model, dev, dtype, batch_size
        )
        extra |= render_check
    cos = np.sum(sample.cached * live, axis=1)

    def embed(x: torch.Tensor) -> np.ndarray:
        return _embed(loaded.model, x, dev, dtype, batch_size)

    control = _control(store, source, sample, live, written, seed, embed)
    result = _result(url, store.shard_size, sample, cos, control, threshold, render, extra)
    if result.passed and accept_render_drift and render in ("drift-accepted", "unrecorded"):
        EmbeddingStore.open(url, mode="r+").accept_render(
            {
                "verify": {
                    "samples": result.samples,
                    "cos_min": result.cos_min,
                    "teacher": loaded.info["sha256"],
                }
            }
        )
        result.render_recorded = True
    return result


def _store_teacher(
    store: EmbeddingStore,
    url: str,
    teacher_path: str,
    teacher_weights: str | None,
    teacher_pooling: str | None,
    device: torch.device,
) -> LoadedTeacher:
    """The live teacher, refused unless it is the store's (source, sha256, name, pooling) and
    fits the store's view size."""
    recorded = store.teacher
    if recorded is None:
        raise StoreError(f"store {url} has no teacher attached; run `disco precompute` first")
    if teacher_pooling is None:
        teacher_pooling = recorded.get("pooling")
    loaded = load_teacher(teacher_path, teacher_weights, teacher_pooling, device=device)
    for key in ("source", "sha256", "name", "pooling"):
        if key in recorded and recorded.get(key) != loaded.info.get(key):
            raise StoreMismatchError(f"teacher.{key}", loaded.info.get(key), recorded.get(key))
    if "sha256" not in recorded:
        raise StoreMismatchError("teacher.sha256", loaded.info.get("sha256"), None)
    loaded.model.check_size(store.recipe.size)
    return loaded


@dataclass
class _Sample:
    """The sampled slots that still decode, with their cached vectors and reference renders."""

    slots: np.ndarray
    """``(k, 2) int64`` (row, view)."""
    cached: np.ndarray
    """``(k, D) float32`` cached embeddings."""
    pixels: torch.Tensor
    """``(k, 3, S, S) uint8`` views rendered per view on CPU (the reference renderer)."""
    sources: list[np.ndarray]
    """The decoded source images ``(H, W, 3) uint8``."""
    skipped: dict[str, str]
    """Sample key -> reason for sampled rows that no longer decode."""


def _render_sample(store: EmbeddingStore, slots: np.ndarray, dataset: ImageDataset) -> _Sample:
    """Cached vectors of ``slots`` (read a shard at a time) and their views re-rendered from the
    stored parameters, images from ``dataset``; rows that no longer decode are skipped."""
    cached = np.zeros((len(slots), store.dim or 0), np.float32)
    by_shard: dict[int, list[int]] = {}
    for k, (row, _) in enumerate(slots):
        by_shard.setdefault(int(row) // store.shard_size, []).append(k)
    for s, ks in by_shard.items():
        block = store.read_shard(s)
        for k in ks:
            row, view = slots[k]
            cached[k] = block.embeddings[row - block.start, view]
    manifest, recipe, params = store.manifest, store.recipe, store.params
    skipped: dict[str, str] = {}
    keep: list[int] = []
    images: list[torch.Tensor] = []
    sources: list[np.ndarray] = []
    for k, (row, view) in enumerate(slots):
        try:
            image = dataset.load(int(manifest.indices[row]))
        except DecodeError as exc:
            skipped[str(manifest.keys[row])] = exc.reason
            continue
        images.append(render_view(image, params[row, view], recipe))
        sources.append(image)
        keep.append(k)
    pixels = (
        to_pixels(torch.stack(images), recipe.mean, recipe.std)
        if images
        else torch.empty((0, 3, recipe.size, recipe.size), dtype=torch.uint8)
    )
    return _Sample(slots[keep], cached[keep], pixels, sources, skipped)


def _check_batched(
    store: EmbeddingStore,
    sample: _Sample,
    live_ref: np.ndarray,
    encoder: torch.nn.Module,
    device: torch.device,
    dtype: str,
    batch_size: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Re-render the sample with the batched renderer on ``device``; return its live embeddings
    and its distance to the reference render (uint8 values, embedding cosine) and verdict."""
    params = store.params
    views = render_views(
        sample.sources, params[sample.slots[:, 0], sample.slots[:, 1]], store.recipe, device
    )
    diff = int((views.cpu().int() - sample.pixels.int()).abs().max())
    live = _embed(encoder, views, device, dtype, batch_size)
    render_cos = float(np.sum(live * live_ref, axis=1).min())
    render_ok = diff <= RENDER_BOUND["max_abs_diff"] and render_cos >= RENDER_BOUND["min_cosine"]
    return live, {"render_max_abs_diff": diff, "render_cos_min": render_cos,
                  "render_ok": render_ok}  # fmt: skip


def _control(
    store: EmbeddingStore,
    dataset: ImageDataset,
    sample: _Sample,
    live: np.ndarray,
    written: np.ndarray,
    seed: int,
    embed: Callable[[torch.Tensor], np.ndarray],
) -> np.ndarray:
    """Cosines of each cached vector to the live embedding of a view of *another* row: another
    sampled row's, or, when every sampled slot is of one row, a written view of a different row
    drawn with ``seed``. Empty when the store has no written view of another row (the check then
    cannot tell a wrong view, and fails)."""
    rows = sample.slots[:, 0]
    other = _other_row(rows)
    if other is not None:
        return np.asarray(np.sum(sample.cached * live[other], axis=1))
    candidates = np.argwhere(written & (np.arange(len(written)) != rows[0])[:, None])
    if not len(candidates):
        return np.empty(0, np.float32)
    for k in np.random.default_rng(seed).permutation(len(candidates)):
        row, view = (int(x) for x in candidates[k])
        try:
            image = dataset.load(int(store.manifest.indices[row]))
        except DecodeError:
            continue
        pixels = render_view(image, store.params[row, view], store.recipe)[None]
        wrong = embed(to_pixels(pixels, store.recipe.mean, store.recipe.std))
        return np.asarray(sample.cached @ wrong[0])
    return np.empty(0, np.float32)


def _result(
    url: str,
    shard_size: int,
    sample: _Sample,
    cos: np.ndarray,
    control: np.ndarray,
    threshold: float,
    render: str,
    extra: dict[str, Any],
) -> VerifyResult:
    """The verdict: every cosine at least ``threshold``, the control below it, and (batched) the
    render within its bound; up to 20 failures named by row, view and shard."""
    control_ok = bool(len(control) and np.median(control) < threshold)
    bad = np.flatnonzero(cos < threshold)
    failures = [
        {
            "row": int(sample.slots[k, 0]),
            "view": int(sample.slots[k, 1]),
            "shard": int(sample.slots[k, 0]) // shard_size,
            "cos": float(cos[k]),
        }
        for k in bad[:20]
    ]
    return VerifyResult(
        store=url,
        samples=len(sample.slots),
        threshold=threshold,
        cos_min=float(cos.min()),
        cos_mean=float(cos.mean()),
        cos_median=float(np.median(cos)),
        control_median=float(np.median(control)) if len(control) else float("nan"),
        control_max=float(control.max()) if len(control) else float("nan"),
        passed=bool(len(bad) == 0 and control_ok and extra.get("render_ok", True)),
        control_ok=control_ok,
        failures=failures,
        skipped=sample.skipped,
        render=render,
        **extra,
    )


def _other_row(rows: np.ndarray) -> np.ndarray | None:
    """For each k, an index j with ``rows[j] != rows[k]`` (None if all rows are equal)."""
    if len(np.unique(rows)) < 2:
        return None
    n = len(rows)
    out = np.empty(n, np.int64)
    for k in range(n):
        j = (k + 1) % n
        while rows[j] == rows[k]:
            j = (j + 1) % n
        out[k] = j
    return out


def _embed(
    encoder: torch.nn.Module,
    x: torch.Tensor,
    device: torch.device,
    compute_dtype: str,
    batch_size: int,
) -> np.ndarray:
    """Live embeddings ``(n, D) float32`` of ``x`` ``(n, 3, S, S)`` uint8 pixels, under the
    store's recorded compute dtype (CUDA only)."""
    outs = []
    with torch.inference_mode(), autocast(device, compute_dtype):
        for a in range(0, len(x), batch_size):
            emb = encoder(x[a : a + batch_size].to(device), output="embedding")
            outs.append(torch.nn.functional.normalize(emb.float(), dim=1).cpu().numpy())
    return np.concatenate(outs).astype(np.float32)
