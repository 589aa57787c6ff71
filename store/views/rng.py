"""Counter-based RNG for view plans: uniforms keyed by (plan seed, row, view) and a counter.

A splitmix64 hash of the key and a counter, so no global or worker RNG state is involved and any
single (i, v) can be re-sampled on its own, in any order, in any process.
"""

from __future__ import annotations

import numpy as np

__all__ = ["counter_uniforms"]

_MASK64 = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (a bijection; wraps modulo 2**64)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def counter_uniforms(seed: int, index: np.ndarray, view: np.ndarray, count: int) -> np.ndarray:
    """Uniforms in [0, 1) keyed by (seed, index, view) and a counter: (n, count) float64.

    ``index`` and ``view`` are (n,) integer arrays. Entry [r, k] depends only on
    (seed, index[r], view[r], k) — a counter-based generator (splitmix64 over the hashed key).
    """
    idx = np.asarray(index, dtype=np.int64).astype(np.uint64)
    vw = np.asarray(view, dtype=np.int64).astype(np.uint64)
    s = np.full(idx.shape, seed & _MASK64, dtype=np.uint64)
    z = _mix(_mix(_mix(s + _GOLDEN) ^ idx) ^ (vw * _GOLDEN))
    counters = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
    bits = _mix(z[:, None] + counters)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
