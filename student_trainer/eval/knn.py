"""Cosine nearest-neighbour search: exact backends (FAISS ``IndexFlatIP``, a blocked torch matmul +
top-k, a brute-force torch reference), one approximate FAISS IVF index, and ``auto``.

Backends (``search(..., backend=...)``):

* ``faiss`` — ``IndexFlatIP`` (``GpuIndexFlatIP`` on CUDA when faiss has GPU support);
* ``torch`` — blocked matmul + top-k: query blocks x bank blocks, a running top-k merged per bank
  block, so memory stays at one (query block, bank block) similarity tile for any bank size;
* ``brute`` — the plain reference: one (query chunk, whole bank) product + top-k;
* ``auto`` (default) — the fastest exact backend for the device, chosen by measurement with
  ``bench/knn.py`` (:func:`default_backend`);
* ``faiss-ivf`` — approximate: ``IndexIVFFlat`` probing ``nprobe`` of ``nlist`` lists, for banks of
  millions; its candidates are re-ranked by the exact rule below but rows outside the probed lists
  are never seen (recall < 1). ``bench/knn.py`` reports its recall@k against exact.

All exact backends return the *same* neighbours and similarities, bit for bit. Each backend only
proposes candidates (its own float32 top-``k + margin``); the final ranking is decided by one shared
rule:

* similarity = float64 dot product of the L2-normalised float32 vectors (each float32 product is
  exact in float64; the sum over dimensions is numpy's pairwise sum along a contiguous row, so a
  (query, bank) pair always gets the same value whatever its position in the candidate list);
* order = similarity descending, then bank row ascending (ties go to the earlier bank row);
* a row is accepted only when no bank row outside the candidates can reach the k-th similarity given
  float32 rounding (bound ``_float32_slack``); otherwise that row is searched again with
  more candidates.

So the exact backends can differ only in speed, never in results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from store.errors import ConfigError
from store.runtime import cuda_index, is_cuda

EXACT_BACKENDS = ("faiss", "torch", "brute")
"""Backends whose results are identical (module docstring)."""
APPROX_BACKENDS = ("faiss-ivf",)
"""Backends that may miss true neighbours (recall@k < 1), for very large banks."""
BACKENDS = ("auto", *EXACT_BACKENDS, *APPROX_BACKENDS)
"""Every name :func:`search` accepts."""

# Fastest exact backend per device type, from ``bench/knn.py`` on this project's machines (README,
# "kNN backends"): on CPU FAISS's flat index beat the torch paths (MKL sgemm + top-k) in the same
# run at 50 000 x 4 000 x 512; on CUDA the GPU flat index is FAISS's strength.
_FASTEST_EXACT = {"cpu": "faiss", "cuda": "faiss"}

# Candidate source: (bank (N, D) float32, queries (Q, D) float32, k) -> indices (Q, k) int64.
CandidateFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class Neighbours:
    """The k nearest bank rows of each query, best first.

    ``indices`` (Q, k) int64 bank row numbers; ``similarities`` (Q, k) float64 cosine
    similarities in [-1, 1], non-increasing along each row.
    """

    indices: np.ndarray
    similarities: np.ndarray

    @property
    def k(self) -> int:
        """Number of neighbours per query."""
        return int(self.indices.shape[1])

    def head(self, k: int) -> Neighbours:
        """The first ``k`` neighbours of every query (a view, no copy)."""
        if k > self.k:
            raise ValueError(f"asked for {k} neighbours, only {self.k} were searched")
        return Neighbours(self.indices[:, :k], self.similarities[:, :k])


def l2_normalise(x: np.ndarray | torch.Tensor) -> np.ndarray:
    """Rows scaled to unit L2 norm. ``x`` (N, D) any float -> (N, D) float32, C-contiguous.

    All-zero rows stay zero (their cosine similarity to everything is 0).
    """
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"expected a (N, D) matrix, got shape {arr.shape}")
    norms = np.linalg.norm(arr.astype(np.float64), axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return np.ascontiguousarray((arr / norms).astype(np.float32))


def faiss_has_gpu() -> bool:
    """True when the installed faiss was built with GPU support and sees at least one GPU."""
    # lazy: faiss loads its native library only when a search runs
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def faiss_candidates(
    bank: np.ndarray, queries: np.ndarray, k: int, device: str = "cpu"
) -> np.ndarray:
    """Top-``k`` inner-product candidates from a FAISS flat index.

    ``bank`` (N, D) float32 and ``queries`` (Q, D) float32, both L2-normalised -> (Q, k) int64.
    A CUDA ``device`` uses ``GpuIndexFlatIP`` on that GPU (``cuda:N``: GPU N; ``cuda``: the
    current one) when faiss has GPU support, else the CPU ``IndexFlatIP``.
    """
    # lazy: faiss loads its native library only when a search runs
    import faiss

    index: Any = faiss.IndexFlatIP(bank.shape[1])
    # FAISS GPU flat search supports k <= 2048; deeper searches (mAP@R on big classes) use the CPU.
    if is_cuda(device) and k <= 2048 and faiss_has_gpu():
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, cuda_index(device), index)
    index.add(np.ascontiguousarray(bank, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return np.asarray(found, dtype=np.int64)


def default_backend(device: str = "cpu") -> str:
    """The exact backend ``auto`` uses on ``device`` (``cpu``, ``cuda`` or ``cuda:N``): the one
    measured fastest there (``_FASTEST_EXACT``); on CUDA without a GPU-enabled faiss, ``torch``
    (a CPU index would leave the GPU idle)."""
    kind = "cuda" if is_cuda(device) else "cpu"
    choice = _FASTEST_EXACT[kind]
    if kind == "cuda" and choice == "faiss" and not faiss_has_gpu():
        return "torch"
    return choice


def torch_candidates(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    device: str = "cpu",
    query_block: int = 1024,
    bank_block: int = 16384,
) -> np.ndarray:
    """Top-``k`` inner-product candidates by blocked torch matmul + top-k.

    ``bank`` (N, D) float32 and ``queries`` (Q, D) float32 -> (Q, k) int64. For each block of
    ``query_block`` queries the bank is scanned in blocks of ``bank_block`` rows; each block's
    top-k is merged into a running top-k, so at most one (query_block, bank_block) float32 tile
    (64 MiB by default) is alive. Every (query, bank row) score is computed once, so a row left
    out scored no higher than every kept row (what :func:`refine` relies on).
    """
    n_bank = bank.shape[0]
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).to(device)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    with torch.inference_mode():
        for qs in range(0, queries.shape[0], query_block):
            q = torch.from_numpy(np.ascontiguousarray(queries[qs : qs + query_block])).to(device)
            best_v: torch.Tensor | None = None
            best_i: torch.Tensor | None = None
            for bs in range(0, n_bank, bank_block):
                sims = q @ bank_t[bs : bs + bank_block].T
                top = sims.topk(min(k, sims.shape[1]), dim=1, sorted=False)
                vals, idx = top.values, top.indices + bs
                if best_v is not None and best_i is not None:
                    vals, idx = torch.cat([best_v, vals], 1), torch.cat([best_i, idx], 1)
                    top = vals.topk(min(k, vals.shape[1]), dim=1, sorted=False)
                    vals, idx = top.values, idx.gather(1, top.indices)
                best_v, best_i = vals, idx
            assert best_i is not None
            out[qs : qs + query_block] = best_i.cpu().numpy()
    return out


def ivf_search(
    bank: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    k: int,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
) -> Neighbours:
    """Approximate cosine top-``k`` with a FAISS ``IndexIVFFlat`` (inner product, CPU).

    ``bank`` (N, D), ``queries`` (Q, D), any float; L2-normalised here.
    ``nlist``: inverted lists (default ``4 * sqrt(N)``, at most ``N / 39`` as FAISS asks),
    trained by k-means on up to ``64 * nlist`` bank rows drawn with ``seed``.
    ``nprobe``: lists searched per query (default ``min(nlist, 32)``).
    The proposed ``k + margin`` candidates are re-ranked by the exact rule (float64 similarity,
    ties to the lower row); rows with fewer than ``k`` hits are searched again over every list.
    Returns (Q, k) neighbours whose recall@k against :func:`search` is < 1 in general.
    """
    # lazy: faiss loads its native library only when a search runs
    import faiss

    bank_n, queries_n = l2_normalise(bank), l2_normalise(queries)
    n_bank, dim = bank_n.shape
    if not 1 <= k <= n_bank:
        raise ConfigError(f"k must be between 1 and the bank size {n_bank}, got {k}")
    nlist = max(1, min(round(4 * n_bank**0.5), n_bank // 39)) if nlist is None else nlist
    nprobe = min(nlist, 32) if nprobe is None else nprobe
    if not 1 <= nprobe <= nlist <= n_bank:
        raise ConfigError(f"need 1 <= nprobe ({nprobe}) <= nlist ({nlist}) <= N ({n_bank})")
    quantizer = faiss.IndexFlatIP(dim)
    index: Any = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    train = bank_n if n_bank <= 64 * nlist else bank_n[rng.choice(n_bank, 64 * nlist, False)]
    index.cp.seed = seed
    index.train(np.ascontiguousarray(train))
    index.add(bank_n)
    n_cand = min(n_bank, k + max(8, k // 4))
    index.nprobe = nprobe
    _, cand = index.search(queries_n, n_cand)
    short = (cand < 0).any(axis=1)
    if short.any():  # probed lists held fewer than n_cand rows: search those queries everywhere
        index.nprobe = nlist
        cand[short] = index.search(queries_n[short], n_cand)[1]
    idx, sim = _rank(cand, exact_similarities(bank_n, queries_n, cand), k)
    return Neighbours(idx, sim)


def recall_at_k(approx: Neighbours, exact: Neighbours) -> float:
    """Mean fraction of each query's exact top-k bank rows that ``approx`` also returned (both
    (Q, k)); 1.0 = nothing missed."""
    hits = [
        len(np.intersect1d(a, e, assume_unique=True))
        for a, e in zip(approx.indices, exact.indices, strict=True)
    ]
    return float(np.mean(hits) / exact.k)


def brute_candidates(
    bank: np.ndarray, queries: np.ndarray, k: int, device: str = "cpu", chunk: int = 1024
) -> np.ndarray:
    """Top-``k`` inner-product candidates by a torch matrix product (the reference path).

    ``bank`` (N, D) float32 and ``queries`` (Q, D) float32 -> (Q, k) int64. Queries go through
    in chunks of ``chunk`` rows so the (chunk, N) similarity block stays small. Runs on ``device``.
    """
    bank_t = torch.from_numpy(np.ascontiguousarray(bank, dtype=np.float32)).to(device)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    with torch.inference_mode():
        for start in range(0, queries.shape[0], chunk):
            q = torch.from_numpy(np.ascontiguousarray(queries[start : start + chunk])).to(device)
            sims = q @ bank_t.T
            out[start : start + chunk] = sims.topk(k, dim=1).indices.cpu().numpy()
    return out


def exact_similarities(bank: np.ndarray, queries: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """float64 dot products of each query with its candidate bank rows.

    ``bank`` (N, D) float32, ``queries`` (Q, D) float32, ``indices`` (Q, C) int64 -> (Q, C) float64.
    The value for one (query, bank row) pair does not depend on where that row sits in ``indices``.
    """
    n_q, n_c = indices.shape
    dim = bank.shape[1]
    out = np.empty((n_q, n_c), dtype=np.float64)
    step = max(1, (1 << 22) // max(1, n_c * dim))
    for start in range(0, n_q, step):
        q = queries[start : start + step].astype(np.float64)[:, None, :]
        cand = bank[indices[start : start + step]].astype(np.float64)
        out[start : start + step] = np.sum(q * cand, axis=-1)
    return out


def _float32_slack(dim: int) -> float:
    """Upper bound on |float32 dot product - exact| for unit vectors of ``dim`` entries."""
    return 4.0 * (dim + 2) * float(np.finfo(np.float32).eps) + 1e-6


def _rank(indices: np.ndarray, sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row by (similarity desc, index asc) and keep the first ``k`` columns."""
    order = np.lexsort((indices, -sims), axis=1)
    idx = np.take_along_axis(indices, order, axis=1)[:, :k]
    sim = np.take_along_axis(sims, order, axis=1)[:, :k]
    return idx, sim


def refine(
    bank: np.ndarray,
    queries: np.ndarray,
    k: int,
    candidates: CandidateFn,
    margin: int | None = None,
) -> Neighbours:
    """Exact top-``k`` from any float32 candidate source, with the module's deterministic ranking.

    ``bank`` (N, D) and ``queries`` (Q, D) float32, L2-normalised. ``candidates`` proposes its own
    top-C rows; rows whose k-th neighbour is not provably ahead of every unproposed bank row are
    retried with twice as many candidates (at most N). Returns (Q, k) neighbours.
    """
    n_bank, dim = bank.shape
    if not 1 <= k <= n_bank:
        raise ConfigError(f"k must be between 1 and the bank size {n_bank}, got {k}")
    margin = max(8, k // 4) if margin is None else margin
    out_idx = np.empty((queries.shape[0], k), dtype=np.int64)
    out_sim = np.empty((queries.shape[0], k), dtype=np.float64)
    todo = np.arange(queries.shape[0])
    n_cand = min(n_bank, k + margin)
    slack = _float32_slack(dim)
    while todo.size:
        q = queries[todo]
        cand = candidates(bank, q, n_cand)
        sims = exact_similarities(bank, q, cand)
        idx, sim = _rank(cand, sims, k)
        if n_cand >= n_bank:
            done = np.ones(todo.size, dtype=bool)
        else:
            # An unproposed row u had backend score <= the weakest candidate's backend score, so
            # exact(u) <= f32(u) + slack <= min_c f32(c) + slack <= min_c exact(c) + 2 * slack.
            weakest = sims.min(axis=1)
            done = sim[:, -1] > weakest + 2 * slack
        out_idx[todo[done]] = idx[done]
        out_sim[todo[done]] = sim[done]
        todo = todo[~done]
        n_cand = min(n_bank, 2 * n_cand)
    return Neighbours(out_idx, out_sim)


def search(
    bank: np.ndarray | torch.Tensor,
    queries: np.ndarray | torch.Tensor,
    k: int,
    backend: str = "auto",
    device: str = "cpu",
) -> Neighbours:
    """The ``k`` most cosine-similar bank rows of every query: (Q, k) neighbours.

    ``bank`` (N, D) and ``queries`` (Q, D), any float dtype; both are L2-normalised here.
    ``backend`` is one of :data:`BACKENDS` (module docstring): the exact ones (``auto`` =
    :func:`default_backend` of ``device``) give identical results; ``faiss-ivf`` is approximate
    (:func:`ivf_search` with its defaults).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown kNN backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "faiss-ivf":
        return ivf_search(bank, queries, k)
    if backend == "auto":
        backend = default_backend(device)
    bank_n = l2_normalise(bank)
    queries_n = l2_normalise(queries)
    if bank_n.shape[1] != queries_n.shape[1]:
        raise ValueError(f"bank dim {bank_n.shape[1]} != query dim {queries_n.shape[1]}")
    fn: CandidateFn
    if backend == "faiss":

        def fn(b: np.ndarray, q: np.ndarray, c: int) -> np.ndarray:
            return faiss_candidates(b, q, c, device)

    elif backend == "torch":

        def fn(b: np.ndarray, q: np.ndarray, c: int) -> np.ndarray:
            return torch_candidates(b, q, c, device)

    else:

        def fn(b: np.ndarray, q: np.ndarray, c: int) -> np.ndarray:
            return brute_candidates(b, q, c, device)

    return refine(bank_n, queries_n, k, fn)
