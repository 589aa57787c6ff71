"""Retrieval and kNN-classification metrics computed from ranked neighbours.

Every function takes neighbours already ranked best-first (``student_trainer.eval.knn.search``) and
labels as int64 arrays; all return fractions in [0, 1].

Vote tie-breaking (weighted and majority kNN): when two or more classes have exactly the same vote,
the prediction is the tied class whose best-ranked neighbour comes first. This makes the classifier
deterministic (CompRess breaks ties at random, DINO by an unstable sort) and reduces to the 1-NN
answer when every neighbour is its own class.
"""

from __future__ import annotations

import numpy as np


def _check(neighbour_labels: np.ndarray, k: int) -> np.ndarray:
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    if labels.ndim != 2:
        raise ValueError(f"neighbour labels must be (Q, k), got shape {labels.shape}")
    if not 1 <= k <= labels.shape[1]:
        raise ValueError(f"k={k} needs at least k ranked neighbours, have {labels.shape[1]}")
    return labels[:, :k]


def vote(neighbour_labels: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Predicted class per query from weighted neighbour votes.

    ``neighbour_labels`` (Q, k) int64, ranked best first; ``weights`` (Q, k) float64 vote of each
    neighbour. Returns (Q,) int64 labels; ties go to the tied class whose best-ranked
    neighbour comes first (module docstring).
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    n_q, k = labels.shape
    classes, codes = np.unique(labels, return_inverse=True)
    codes = codes.reshape(n_q, k)
    n_cls = classes.size
    votes = np.zeros((n_q, n_cls), dtype=np.float64)
    first = np.full((n_q, n_cls), k, dtype=np.int64)
    rows = np.arange(n_q)
    for r in range(k):  # in rank order, so float sums are formed the same way every time
        c = codes[:, r]
        votes[rows, c] += weights[:, r]
        first[rows, c] = np.minimum(first[rows, c], r)
    best = votes.max(axis=1, keepdims=True)
    tie_rank = np.where(votes == best, first, k + 1)
    return classes[np.argmin(tie_rank, axis=1)]


def weighted_knn_predict(
    neighbour_labels: np.ndarray, similarities: np.ndarray, k: int = 20, temperature: float = 0.07
) -> np.ndarray:
    """DINO's weighted kNN: each of the top ``k`` votes exp(similarity / temperature).

    ``neighbour_labels`` (Q, >=k) int64, ``similarities`` (Q, >=k) cosine. Returns (Q,) int64.
    """
    labels = _check(neighbour_labels, k)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    weights = np.exp(np.asarray(similarities, dtype=np.float64)[:, :k] / temperature)
    return vote(labels, weights)


def majority_predict(neighbour_labels: np.ndarray, k: int = 20) -> np.ndarray:
    """Majority vote of the top ``k`` neighbours (CompRess's k-NN; k=1 is plain 1-NN). (Q,)
    int64."""
    labels = _check(neighbour_labels, k)
    return vote(labels, np.ones(labels.shape, dtype=np.float64))


def accuracy(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of queries whose predicted label equals ``truth``; both (Q,) int64."""
    predicted = np.asarray(predicted)
    truth = np.asarray(truth)
    if predicted.shape != truth.shape or predicted.size == 0:
        raise ValueError(f"need equal non-empty shapes, got {predicted.shape} and {truth.shape}")
    return float(np.mean(predicted == truth))


def recall_at_k(neighbour_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Fraction of queries with at least one of their top ``k`` neighbours sharing their label."""
    labels = _check(neighbour_labels, k)
    hit = (labels == np.asarray(query_labels, dtype=np.int64)[:, None]).any(axis=1)
    return float(hit.mean())


def relevant_counts(bank_labels: np.ndarray, query_labels: np.ndarray) -> np.ndarray:
    """R per query: how many bank items share the query's label. (Q,) int64."""
    classes, counts = np.unique(np.asarray(bank_labels, dtype=np.int64), return_counts=True)
    lookup = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    q = np.asarray(query_labels, dtype=np.int64)
    return np.array([lookup.get(int(x), 0) for x in q], dtype=np.int64)


def map_at_r(
    neighbour_labels: np.ndarray, query_labels: np.ndarray, bank_labels: np.ndarray
) -> float:
    """Mean average precision at R (Musgrave et al. 2020, "A Metric Learning Reality Check").

    For a query with R relevant bank items: (1/R) * sum over ranks i <= R of precision@i * rel(i).
    ``neighbour_labels`` (Q, >= max R) int64. Queries whose class is absent from the bank (R = 0)
    are left out of the mean.
    """
    labels = np.asarray(neighbour_labels, dtype=np.int64)
    q = np.asarray(query_labels, dtype=np.int64)
    r = relevant_counts(bank_labels, q)
    keep = r > 0
    if not keep.any():
        raise ValueError("no query has a relevant bank item; mAP@R is undefined")
    r_max = int(r.max())
    if labels.shape[1] < r_max:
        raise ValueError(f"mAP@R needs {r_max} ranked neighbours per query, have {labels.shape[1]}")
    labels, q, r = labels[keep, :r_max], q[keep], r[keep]
    ranks = np.arange(1, r_max + 1)
    within = ranks[None, :] <= r[:, None]
    rel = (labels == q[:, None]) & within
    precision = np.cumsum(rel, axis=1) / ranks[None, :]
    ap = np.sum(precision * rel, axis=1) / r
    return float(ap.mean())


def neighbour_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Recall@k of the teacher's neighbours: mean over queries of |T_k ∩ S_k| / k.

    ``student`` and ``teacher`` (Q, >=k) int64 bank indices, ranked best first, same bank
    and queries.
    """
    s = _check(student, k)
    t = _check(teacher, k)
    if s.shape[0] != t.shape[0]:
        raise ValueError(f"student has {s.shape[0]} queries, teacher {t.shape[0]}")
    shared = (s[:, :, None] == t[:, None, :]).any(axis=2).sum(axis=1)
    return float(np.mean(shared / k))
