"""Every exact kNN backend gives identical neighbours and metrics; ``auto`` picks one of them; the
approximate IVF index is scored by its recall against exact search."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from store.errors import ConfigError
from student_trainer.eval import knn, metrics


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
def test_every_exact_backend_equals_the_full_sort(name: str, k: int) -> None:
    bank, queries = _datasets()[name]
    ref = _reference(bank, queries, k)
    b, q = knn.l2_normalise(bank), knn.l2_normalise(queries)

    def tiny_blocks(bb: np.ndarray, qq: np.ndarray, c: int) -> np.ndarray:
        # blocks smaller than k and than the bank, so the running top-k merge is exercised
        return knn.torch_candidates(bb, qq, c, query_block=37, bank_block=61)

    results = {name: knn.search(bank, queries, k, backend=name) for name in knn.EXACT_BACKENDS}
    results["auto"] = knn.search(bank, queries, k)
    results["torch-tiny-blocks"] = knn.refine(b, q, k, tiny_blocks)
    for backend, nb in results.items():
        np.testing.assert_array_equal(nb.indices, ref.indices, err_msg=backend)
        np.testing.assert_array_equal(nb.similarities, ref.similarities, err_msg=backend)
    assert (np.diff(ref.similarities, axis=1) <= 0).all()


def test_metrics_identical_across_backends() -> None:
    rng = np.random.default_rng(1)
    bank = rng.standard_normal((900, 16)).astype(np.float32)
    queries = rng.standard_normal((200, 16)).astype(np.float32)
    bank_labels = rng.integers(0, 5, 900)
    query_labels = rng.integers(0, 5, 200)
    depth = int(metrics.relevant_counts(bank_labels, query_labels).max())
    out = []
    for backend in ("auto", *knn.EXACT_BACKENDS):
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
    assert all(o == out[0] for o in out[1:])


def test_auto_is_the_measured_fastest_exact_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    assert knn.default_backend("cpu") in knn.EXACT_BACKENDS
    assert knn.default_backend("cpu") == knn._FASTEST_EXACT["cpu"]
    monkeypatch.setattr(knn, "faiss_has_gpu", lambda: True)
    assert knn.default_backend("cuda:1") == "faiss"
    monkeypatch.setattr(knn, "faiss_has_gpu", lambda: False)
    assert knn.default_backend("cuda") == "torch"  # a CPU faiss index would leave the GPU idle
    with pytest.raises(ConfigError, match="valid: auto, faiss, torch, brute, faiss-ivf"):
        knn.search(np.eye(3), np.eye(3), 1, backend="annoy")


def test_torch_candidates_hold_the_top_k_of_their_own_scores() -> None:
    """What ``refine`` relies on: every row left out scored no higher than every kept row."""
    rng = np.random.default_rng(5)
    b = knn.l2_normalise(rng.standard_normal((500, 24)))
    q = knn.l2_normalise(rng.standard_normal((70, 24)))
    cand = knn.torch_candidates(b, q, 15, query_block=16, bank_block=64)
    scores = q @ b.T
    for row in range(len(q)):
        kept = scores[row, cand[row]]
        left = np.delete(scores[row], cand[row])
        assert len(set(cand[row].tolist())) == 15
        assert left.max() <= kept.min() + 1e-6


def _clustered(n_bank: int, n_query: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    bank = centres[rng.integers(0, 40, n_bank)] + 0.3 * rng.standard_normal((n_bank, dim))
    queries = centres[rng.integers(0, 40, n_query)] + 0.3 * rng.standard_normal((n_query, dim))
    return bank.astype(np.float32), queries.astype(np.float32)


def test_ivf_recall_against_exact_on_a_small_bank() -> None:
    bank, queries = _clustered(3000, 200, 32, seed=3)
    exact = knn.search(bank, queries, 10, backend="brute")
    # every list probed: the candidates are exact, so after re-ranking the result is too
    full = knn.ivf_search(bank, queries, 10, nlist=40, nprobe=40)
    np.testing.assert_array_equal(full.indices, exact.indices)
    np.testing.assert_array_equal(full.similarities, exact.similarities)
    assert knn.recall_at_k(full, exact) == 1.0
    # a few lists of clustered data: high recall; one list of many: lower
    some = knn.recall_at_k(knn.ivf_search(bank, queries, 10, nlist=40, nprobe=4), exact)
    one = knn.recall_at_k(knn.ivf_search(bank, queries, 10, nlist=200, nprobe=1), exact)
    assert some >= 0.9 and one < some
    # similarities of what IVF returns are exact and ranked by the shared rule
    approx = knn.search(bank, queries, 10, backend="faiss-ivf")
    sims = knn.exact_similarities(knn.l2_normalise(bank), knn.l2_normalise(queries), approx.indices)
    np.testing.assert_array_equal(approx.similarities, sims)
    assert (np.diff(approx.similarities, axis=1) <= 0).all()
    assert knn.recall_at_k(approx, exact) >= 0.9


def test_recall_at_k_counts_shared_rows() -> None:
    exact = knn.Neighbours(np.array([[0, 1, 2], [3, 4, 5]]), np.zeros((2, 3)))
    approx = knn.Neighbours(np.array([[2, 1, 9], [7, 8, 6]]), np.zeros((2, 3)))
    assert knn.recall_at_k(approx, exact) == pytest.approx((2 / 3 + 0) / 2)


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
