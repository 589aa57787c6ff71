"""Golden kNN / retrieval metrics on a hand-built bank whose neighbours are known exactly.

Bank (2-D unit vectors, angle from the x axis, label)::

    b0  10°  A      b1  20°  B      b2 -20°  B  (same x as b1: exact tie with b1 for q0)
    b3  30°  A      b4  90°  C      b5 180°  C

Queries: q0 = 0° (A), q1 = 180° (C), q2 = 90° (B). Cosine = cos(angle difference), so the rankings
are, best first (ties -> lower bank row):
    q0: b0 b1 b2 b3 b4 b5   labels A B B A C C
    q1: b5 b4 b3 b1 b2 b0   labels C C A B B A
    q2: b4 b3 b1 b0 b5 b2   labels C A B A C B
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from store.errors import ConfigError
from student_trainer.eval import metrics
from student_trainer.eval.knn import search

A, B, C = 0, 1, 2


def _unit(deg: float) -> list[float]:
    r = math.radians(deg)
    return [math.cos(r), math.sin(r)]


def _bank() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    c20, s20 = _unit(20)
    bank = np.array(
        [_unit(10), [c20, s20], [c20, -s20], _unit(30), [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32
    )
    bank_labels = np.array([A, B, B, A, C, C], dtype=np.int64)
    queries = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    query_labels = np.array([A, C, B], dtype=np.int64)
    return bank, bank_labels, queries, query_labels


EXPECTED_ORDER = np.array([[0, 1, 2, 3, 4, 5], [5, 4, 3, 1, 2, 0], [4, 3, 1, 0, 5, 2]])


@pytest.mark.parametrize("backend", ["faiss", "brute"])
def test_known_ranking_with_tie(backend: str) -> None:
    bank, _, queries, _ = _bank()
    nb = search(bank, queries, 6, backend=backend)
    np.testing.assert_array_equal(nb.indices, EXPECTED_ORDER)
    # q0: b1 and b2 tie exactly, the lower row comes first
    assert nb.similarities[0, 1] == nb.similarities[0, 2]
    np.testing.assert_allclose(
        nb.similarities[0, :4], [math.cos(math.radians(a)) for a in (10, 20, 20, 30)], atol=1e-6
    )


def _labels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    bank, bank_labels, queries, query_labels = _bank()
    nb = search(bank, queries, 6)
    return bank_labels[nb.indices], nb.similarities, query_labels, bank_labels


def test_one_nn_and_majority_with_ties() -> None:
    lab, _, truth, _ = _labels()
    # 1-NN: A, C, C -> q0 right, q1 right, q2 wrong
    np.testing.assert_array_equal(metrics.majority_predict(lab, 1), [A, C, C])
    assert metrics.accuracy(metrics.majority_predict(lab, 1), truth) == pytest.approx(2 / 3)
    # k=3: q0 A,B,B -> B; q1 C,C,A -> C; q2 C,A,B three-way tie -> best-ranked class C
    np.testing.assert_array_equal(metrics.majority_predict(lab, 3), [B, C, C])
    assert metrics.accuracy(metrics.majority_predict(lab, 3), truth) == pytest.approx(1 / 3)
    # k=4: q0 A,B,B,A tie 2-2 -> A (rank 0); q1 C,C,A,B -> C; q2 C,A,B,A -> A
    np.testing.assert_array_equal(metrics.majority_predict(lab, 4), [A, C, A])
    # k=5 is larger than every class (2 members each): q0 A,B,B,A,C tie A/B -> A;
    # q1 C,C,A,B,B tie C/B -> C; q2 C,A,B,A,C tie C/A -> C (best ranked)
    np.testing.assert_array_equal(metrics.majority_predict(lab, 5), [A, C, C])
    # k=6 = whole bank: every class 2 votes -> the 1-NN class
    np.testing.assert_array_equal(metrics.majority_predict(lab, 6), [A, C, C])


def test_weighted_knn_depends_on_temperature() -> None:
    lab, sims, truth, _ = _labels()
    # q0, k=3: A gets exp(cos10/T), B gets 2 exp(cos20/T); ratio A/B = exp((cos10-cos20)/T) / 2
    ratio_007 = math.exp((math.cos(math.radians(10)) - math.cos(math.radians(20))) / 0.07) / 2
    ratio_005 = math.exp((math.cos(math.radians(10)) - math.cos(math.radians(20))) / 0.05) / 2
    assert ratio_007 < 1 < ratio_005  # hand check: 0.952 and 1.233
    np.testing.assert_array_equal(metrics.weighted_knn_predict(lab, sims, 3, 0.07), [B, C, C])
    np.testing.assert_array_equal(metrics.weighted_knn_predict(lab, sims, 3, 0.05), [A, C, C])
    assert metrics.accuracy(
        metrics.weighted_knn_predict(lab, sims, 3, 0.07), truth
    ) == pytest.approx(1 / 3)
    assert metrics.accuracy(
        metrics.weighted_knn_predict(lab, sims, 3, 0.05), truth
    ) == pytest.approx(2 / 3)


def test_vote_tie_goes_to_best_ranked_class() -> None:
    labels = np.array([[7, 3, 3, 7], [3, 7, 7, 3], [5, 5, 9, 9]])
    np.testing.assert_array_equal(metrics.vote(labels, np.ones((3, 4))), [7, 3, 5])
    weights = np.array([[1.0, 0.5, 0.5, 0.0], [1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.5, 0.5]])
    # row 0: 7 -> 1.0, 3 -> 1.0 tie -> 7; row 1: 7 wins 2 > 1; row 2: tie 2-2 -> 5
    np.testing.assert_array_equal(metrics.vote(labels, weights), [7, 7, 5])


def test_recall_and_map_at_r() -> None:
    lab, _, truth, bank_labels = _labels()
    assert metrics.recall_at_k(lab, truth, 1) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(lab, truth, 2) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(lab, truth, 5) == 1.0  # q2's first B is at rank 3
    np.testing.assert_array_equal(metrics.relevant_counts(bank_labels, truth), [2, 2, 2])
    # R = 2 for every query. q0: A,B -> (1/1)/2 = 0.5; q1: C,C -> 1; q2: C,A -> 0
    assert metrics.map_at_r(lab, truth, bank_labels) == pytest.approx(0.5)


def test_map_at_r_hand_values_with_unequal_r() -> None:
    bank_labels = np.array([0, 0, 0, 1])
    # query label 0 (R=3): ranks rel 1,0,1 -> (1/1 + 2/3) / 3 ; query label 1 (R=1): rel 0 -> 0
    lab = np.array([[0, 1, 0, 0], [0, 0, 0, 1]])
    expected = ((1 + 2 / 3) / 3 + 0.0) / 2
    assert metrics.map_at_r(lab, np.array([0, 1]), bank_labels) == pytest.approx(expected)
    # a query whose class is absent from the bank is left out
    lab3 = np.vstack([lab, [[0, 0, 0, 1]]])
    assert metrics.map_at_r(lab3, np.array([0, 1, 5]), bank_labels) == pytest.approx(expected)
    with pytest.raises(ValueError, match="needs 3 ranked"):
        metrics.map_at_r(lab[:, :2], np.array([0, 1]), bank_labels)


def test_neighbour_agreement() -> None:
    teacher = np.array([[0, 1, 2, 4], [5, 4, 3, 0]])
    student = np.array([[2, 0, 9, 1], [1, 7, 8, 5]])
    # k=3: q0 shares {0, 2} of {0, 1, 2} -> 2/3; q1 shares nothing of {5, 4, 3} -> 0
    assert metrics.neighbour_agreement(student, teacher, 3) == pytest.approx(1 / 3)
    assert metrics.neighbour_agreement(teacher, teacher, 4) == 1.0


def test_bad_k_is_refused() -> None:
    bank, _, queries, _ = _bank()
    with pytest.raises(ConfigError, match="bank size 6"):
        search(bank, queries, 7)
    with pytest.raises(ConfigError, match="unknown kNN backend"):
        search(bank, queries, 2, backend="annoy")
    with pytest.raises(ValueError, match="k=4"):
        metrics.majority_predict(np.zeros((2, 3), dtype=np.int64), 4)
