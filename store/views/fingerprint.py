"""Render fingerprint: a digest of fixed probe renders, so replay refuses silent library drift.

Byte-identical replay depends on torch / torchvision kernels (interpolate, grid_sample, adjust_*)
and on numpy. A store records, at create, the sha256 of rendering a fixed set of probe images
(generated here from integer arithmetic, no files) with fixed parameters through its recipe, plus
the library versions. Every reader that pairs stored targets with fresh renders recomputes the
digest on its own install (once per process and recipe) and refuses a difference, naming
``render.fingerprint`` and the versions on both sides.

The probe parameters come from the recipe's own sampler at a fixed key, so the digest covers
planning (which ``store append`` relies on) as well as rendering.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import warnings
from typing import Any

import numpy as np

from store.errors import StoreMismatchError
from store.views.recipes import Recipe
from store.views.render import render_center, render_view
from store.views.rng import counter_uniforms

__all__ = [
    "PROBE_VERSION",
    "check_render",
    "library_versions",
    "probe_images",
    "render_fingerprint",
    "render_record",
]

PROBE_VERSION = 1
"""Bump when the probe set below changes (a stored record of another version is not compared)."""
_PROBE_SEED = 0x5EED_F1A9
_PROBE_SHAPES = ((29, 37), (64, 64), (17, 90), (260, 300))
_PROBE_VIEWS = 8
_RENDER_PACKAGES = ("torch", "torchvision", "numpy", "pillow")


def library_versions() -> dict[str, str]:
    """Installed versions of the packages whose kernels decide rendered pixels."""
    out = {}
    for pkg in _RENDER_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def probe_images() -> list[np.ndarray]:
    """The probe images: (H, W, 3) uint8 for each of ``_PROBE_SHAPES`` (small, square, a strip,
    larger than 256 px). Noise from the counter RNG over smooth ramps and a hard-edged square, so
    every resize, colour and blur kernel sees both edges and gradients. Built with float64
    +, *, floor only (no libm), hence identical on every platform."""
    out = []
    for k, (h, w) in enumerate(_PROBE_SHAPES):
        n = h * w
        noise = counter_uniforms(_PROBE_SEED, np.full(n, k), np.arange(n), 3).reshape(h, w, 3)
        yy, xx = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64),
                             indexing="ij")  # fmt: skip
        smooth = np.stack([xx / w, yy / h, ((xx + yy) % 16) / 15], axis=-1)
        square = (np.abs(yy - h / 2) < h / 5) & (np.abs(xx - w / 3) < w / 6)
        smooth[square] = 1.0 - smooth[square]
        out.append(np.floor(255.999 * (0.35 * noise + 0.65 * smooth)).astype(np.uint8))
    return out


@functools.lru_cache(maxsize=32)
def render_fingerprint(recipe: Recipe) -> str:
    """sha256 hex digest of the probe renders of ``recipe`` on this install (cached per process).

    Covers, per probe image, ``_PROBE_VIEWS`` views sampled at a fixed key and the centre view,
    as float32 bytes of :func:`render_view` / :func:`render_center`, prefixed by the probe version.
    """
    h = hashlib.sha256(f"disco-render-probe/{PROBE_VERSION}".encode())
    for k, image in enumerate(probe_images()):
        ih, iw = image.shape[:2]
        views = np.arange(_PROBE_VIEWS)
        params = recipe.sample_batch(
            _PROBE_SEED, np.full(_PROBE_VIEWS, k), views,
            np.full(_PROBE_VIEWS, ih), np.full(_PROBE_VIEWS, iw),
        )  # fmt: skip
        h.update(params.tobytes())
        for p in params:
            h.update(render_view(image, p, recipe).numpy().tobytes())
        h.update(render_center(image, recipe).numpy().tobytes())
    return h.hexdigest()


def render_record(recipe: Recipe) -> dict[str, Any]:
    """What a store records at create under ``render``: fingerprint, probe version, versions."""
    return {
        "fingerprint": render_fingerprint(recipe),
        "probe_version": PROBE_VERSION,
        "versions": library_versions(),
        "accepted": [],
    }


def _versions_line(v: object) -> str:
    if not isinstance(v, dict):
        return "unknown"
    return ", ".join(f"{k} {v[k]}" for k in sorted(v))


def check_render(
    stored: dict[str, Any] | None, recipe: Recipe, *, accept_drift: bool = False, where: str = ""
) -> str:
    """Compare a store's ``render`` record with this install's renders of ``recipe``.

    Returns ``"match"``, ``"accepted"`` (this install's fingerprint was accepted into the store by
    a passing ``disco store verify --accept-render-drift``), ``"drift-accepted"`` (differs, and the
    caller accepts drift: a warning is issued) or ``"unrecorded"`` (a store written before render
    fingerprints, or with another probe version: a warning, nothing compared). Otherwise raises
    ``StoreMismatchError("render.fingerprint", ...)`` naming the versions on both sides.
    """
    label = f"store {where}" if where else "the store"
    if not stored or stored.get("probe_version") != PROBE_VERSION:
        warnings.warn(
            f"{label} records no render fingerprint of probe version {PROBE_VERSION} (written "
            "before disco-store/2): replay cannot be checked against library drift here; run "
            "`disco store verify` to compare cached targets with fresh renders",
            UserWarning,
            stacklevel=2,
        )
        return "unrecorded"
    mine = render_fingerprint(recipe)
    if stored.get("fingerprint") == mine:
        return "match"
    if mine in [a.get("fingerprint") for a in stored.get("accepted", []) if isinstance(a, dict)]:
        return "accepted"
    here, there = _versions_line(library_versions()), _versions_line(stored.get("versions"))
    if accept_drift:
        warnings.warn(
            f"{label}: this install renders views differently from the one that wrote it "
            f"(render.fingerprint; here: {here}; store: {there}); accepted by request",
            UserWarning,
            stacklevel=2,
        )
        return "drift-accepted"
    raise StoreMismatchError(
        "render.fingerprint",
        mine[:16],
        str(stored.get("fingerprint"))[:16],
        hint=(
            f"this install renders {label}'s views differently, so cached targets no longer pair "
            f"with fresh renders (libraries here: {here}; when the store was written: {there}). "
            "Run `disco store verify STORE --teacher CKPT --accept-render-drift`: if it passes "
            "it records this install's fingerprint as accepted in the store; or accept the drift "
            "for one run with --accept-render-drift (accept_render_drift=True)"
        ),
    )
