"""``disco store estimate``: what a store will cost on disk, before anything is computed.

The embeddings dominate: ``N x V x D x 2`` bytes in float16 (1 byte + a (D,) float32 scale in
int8); optional backbone features add ``N x V x F x 2``; the view plan ``N x V x P x 4`` and the
manifest are small. ``N`` comes from the dataset's file list (nothing is decoded), ``D``/``F``
from ``--dim``/``--feature-dim`` or from the teacher (one forward of a grey batch).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from store.errors import ConfigError

__all__ = ["StoreEstimate", "estimate_store", "human_bytes"]

MANIFEST_BYTES_PER_ROW = 32 + 8 + 8 + 64
"""sha256 + label + index + (roughly) a key, per sample."""


def human_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


@dataclass
class StoreEstimate:
    """Bytes of a store before compression (the codecs save ~7-9% on fp16 unit vectors)."""

    n: int
    """Samples N."""
    views: int
    """Views V per sample."""
    dim: int
    """Embedding width D."""
    dtype: str
    """Stored embedding dtype: float16 or int8."""
    embeddings_bytes: int
    """N x V x D x (2 or 1)."""
    features_bytes: int
    """N x V x F x 2 (0 without --features)."""
    params_bytes: int
    """View plan: N x V x P x 4."""
    manifest_bytes: int
    """Manifest arrays, roughly."""
    total_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)

    def summary(self) -> str:
        """One line per component and the total."""
        per = 2 if self.dtype == "float16" else 1
        lines = [
            f"embeddings  {self.n} x {self.views} x {self.dim} x {per} B = "
            f"{human_bytes(self.embeddings_bytes)} ({self.dtype})",
        ]
        if self.features_bytes:
            lines.append(f"features    {human_bytes(self.features_bytes)} (float16)")
        lines += [
            f"view plan   {human_bytes(self.params_bytes)}",
            f"manifest    ~{human_bytes(self.manifest_bytes)}",
            f"total       ~{human_bytes(self.total_bytes)} before compression",
        ]
        return "\n".join(lines)


def estimate_store(
    n: int,
    views: int,
    dim: int,
    dtype: str = "float16",
    feature_dim: int | None = None,
    num_params: int = 16,
) -> StoreEstimate:
    """Bytes of a store of ``n`` samples x ``views`` views of ``dim``-wide embeddings."""
    if n < 0 or views < 1 or dim < 1:
        raise ConfigError(f"need n >= 0, views >= 1, dim >= 1; got {n}, {views}, {dim}")
    if dtype not in ("float16", "int8"):
        raise ConfigError(f"dtype must be float16 or int8, got {dtype!r}")
    per = 2 if dtype == "float16" else 1
    emb = n * views * dim * per + (dim * 4 if dtype == "int8" else 0)
    feats = n * views * feature_dim * 2 if feature_dim else 0
    params = n * views * num_params * 4
    manifest = n * MANIFEST_BYTES_PER_ROW
    written = n * views
    return StoreEstimate(
        n=n,
        views=views,
        dim=dim,
        dtype=dtype,
        embeddings_bytes=emb,
        features_bytes=feats,
        params_bytes=params,
        manifest_bytes=manifest,
        total_bytes=emb + feats + params + manifest + written,
    )
