"""The FAISS path and the brute-force torch path give identical neighbours and metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from student_trainer import knn, metrics


def _reference(bank: np.ndarray, queries: np.ndarray, k: int) -> knn.Neighbours:
    """Full sort of every exact similarity: (similarity desc, bank row asc)."""
    b, q = knn.l2_normalise(bank), knn.l2_normalise(queries)
    all_rows = np.broadcast_to(np.arange(len(b)), (len(q), len(b)))
    sims = knn.exact_similarities(b, q, np.ascontiguousarray(all_rows))
    order = np.lexsort((all_rows, -sims), axis=1)[:, :k]
    return knn.Neighbours(
        np.take_along_axis(all_rows, order, 1), np.take_along_axis(sims, order, 1)
    )


def _datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    gauss = rng.standard_normal((1500, 48)).astype(np.float32)
    # many exact ties: small integer vectors, plus duplicated bank rows
    ints = rng.integers(0, 3, size=(800, 6)).astype(np.float32)
    ints[400:600] = ints[:200]
    # clustered: near-duplicates closer than float32 noise would blur
    centres = rng.standard_normal((10, 32)).astype(np.float32)
    clustered = centres[rng.integers(0, 10, 1200)] + 1e-4 * rng.standard_normal((1200, 32))
    return {
        "gauss": (gauss[:1200], gauss[1200:]),
        "ties": (ints[:700], ints[700:]),
        "clustered": (clustered[:1000].astype(np.float32), clustered[1000:].astype(np.float32)),
    }


@pytest.mark.parametrize("name", ["gauss", "ties", "clustered"])
@pytest.mark.parametrize("k", [1, 20, 137])
def test_faiss_equals_brute_equals_full_sort(name: str, k: int) -> None:
    bank, queries = _datasets()[name]
    fa = knn.search(bank, queries, k, backend="faiss")
    br = knn.search(bank, queries, k, backend="brute")
    ref = _reference(bank, queries, k)
    np.testing.assert_array_equal(fa.indices, br.indices)
    np.testing.assert_array_equal(fa.similarities, br.similarities)
    np.testing.assert_array_equal(fa.indices, ref.indices)
    np.testing.assert_array_equal(fa.similarities, ref.similarities)
    assert (np.diff(fa.similarities, axis=1) <= 0).all()


def test_metrics_identical_across_backends() -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((900, 16)).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    bank_labels = rng.integers(0, 5, 900)
    query_labels = rng.integers(0, 5, 200)
    depth = int(metrics.relevant_counts(bank_labels, query_labels).max())
    out = []
    for backend in knn.BACKENDS:
        nb = knn.search(bank, queries, depth, backend=backend)
        lab = bank_labels[nb.indices]
        out.append(
            (
                metrics.weighted_knn_predict(lab, nb.similarities, 20, 0.07).tolist(),
                metrics.majority_predict(lab, 20).tolist(),
                metrics.map_at_r(lab, query_labels, bank_labels),
                metrics.recall_at_k(lab, query_labels, 5),
            )
        )
    assert out[0] == out[1]


def test_whole_bank_and_zero_rows() -> None:
    bank = np.array([[1, 0], [0, 0], [1, 0], [0, 1]], dtype=np.float32)
    queries = np.array([[1, 0], [0, 0]], dtype=np.float32)
    nb = knn.search(bank, queries, 4)
    # the zero row scores 0 against everything; the zero query ties everywhere -> bank order
    np.testing.assert_array_equal(nb.indices, [[0, 2, 1, 3], [0, 1, 2, 3]])
    np.testing.assert_array_equal(nb.similarities[1], [0, 0, 0, 0])


def test_refine_retries_rows_with_too_few_candidates() -> None:
    bank = np.ones((50, 4), dtype=np.float32)  # 50-way tie: the margin cannot prove anything
    queries = np.ones((3, 4), dtype=np.float32)
    calls: list[int] = []

    def spy(b: np.ndarray, q: np.ndarray, c: int) -> np.ndarray:
        calls.append(c)
        return knn.brute_candidates(b, q, c)

    nb = knn.refine(knn.l2_normalise(bank), knn.l2_normalise(queries), 5, spy)
    np.testing.assert_array_equal(nb.indices, np.tile(np.arange(5), (3, 1)))
    assert calls[0] == 13 and calls[-1] == 50


@pytest.mark.gpu
def test_cuda_brute_equals_faiss_cpu() -> None:
    rng = np.random.default_rng(2)
    bank = rng.standard_normal((5000, 64)).astype(np.float32)
    queries = rng.standard_normal((700, 64)).astype(np.float32)
    cpu = knn.search(bank, queries, 25, backend="faiss", device="cpu")
    gpu = knn.search(bank, queries, 25, backend="brute", device="cuda")
    gpu_faiss = knn.search(bank, queries, 25, backend="faiss", device="cuda")
    assert torch.cuda.is_available()
    np.testing.assert_array_equal(cpu.indices, gpu.indices)
    np.testing.assert_array_equal(cpu.similarities, gpu.similarities)
    np.testing.assert_array_equal(cpu.indices, gpu_faiss.indices)
