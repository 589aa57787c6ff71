"""Benchmark: FAISS IndexFlatIP vs scikit-learn brute-force cosine kNN on random data.

Both find the k nearest bank vectors (cosine) of every query. Prints a table, then as its last line
one JSON object: {"bench": "knn", ..., "faiss_s", "sklearn_s", "speedup", "agreement"} where the
times are medians over ``--repeats`` runs and ``agreement`` is the fraction of queries whose top-1
neighbour is the same bank row in both (``agreement_up_to_ties`` also accepts a different row whose
similarity equals the best within float32 rounding). ``disco_search_s`` times
``student_trainer.knn.search`` (FAISS candidates + exact re-ranking, identical to brute force).
With ``--device cuda`` it also times the CPU FAISS index (``faiss_cpu_s``) and torch's matrix
product + top-k on the GPU (``torch_gpu_s``), and reports ``gpu_speedup`` (CPU FAISS time over
the fastest GPU path) and ``gpu_cpu_agreement`` (top-1 of the GPU paths vs CPU FAISS).

    python bench/knn.py                       # 50,000 bank x 10,000 queries x 512 dims
    python bench/knn.py --bank 20000 --queries 4000 --dim 256 --repeats 3
    python bench/knn.py --bank 1000000 --queries 10000 --dim 128 --device cuda \
        --skip-sklearn --skip-disco                 # GPU host: FAISS GPU / torch CUDA vs CPU
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import faiss
import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from student_trainer.knn import brute_candidates, faiss_has_gpu, l2_normalise, search


def _median_time(fn: Callable[[], np.ndarray], repeats: int) -> tuple[float, np.ndarray]:
    times, out = [], np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    """Parse flags, run both searches ``--repeats`` times, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bank", type=int, default=50_000, help="bank vectors (default 50000)")
    ap.add_argument("--queries", type=int, default=10_000, help="query vectors (default 10000)")
    ap.add_argument("--dim", type=int, default=512, help="dimensions (default 512)")
    ap.add_argument("--k", type=int, default=20, help="neighbours per query (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per method (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="data seed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU FAISS index if available)")
    ap.add_argument("--skip-disco", action="store_true", help="do not time knn.search")
    ap.add_argument("--skip-sklearn", action="store_true", help="do not time scikit-learn")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    bank = rng.standard_normal((args.bank, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    bank_n, queries_n = l2_normalise(bank), l2_normalise(queries)
    gpu_faiss = args.device.startswith("cuda") and faiss_has_gpu()

    def run_faiss(gpu: bool = gpu_faiss) -> np.ndarray:
        index: Any = faiss.IndexFlatIP(args.dim)
        if gpu:
            index = faiss.index_cpu_to_gpu(faiss.StandardGpuResources(), 0, index)
        index.add(bank_n)
        return np.asarray(index.search(queries_n, args.k)[1])

    def run_sklearn() -> np.ndarray:
        nn = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute", n_jobs=-1)
        nn.fit(bank)
        return np.asarray(nn.kneighbors(queries, return_distance=False))

    faiss_s, faiss_idx = _median_time(run_faiss, args.repeats)
    sklearn_s, sk_idx = (None, faiss_idx)
    if not args.skip_sklearn:
        sklearn_s, sk_idx = _median_time(run_sklearn, args.repeats)
    gpu: dict[str, Any] = {"faiss_cpu_s": None, "torch_gpu_s": None, "gpu_speedup": None}
    if args.device.startswith("cuda"):
        cpu_s, cpu_idx = (
            _median_time(lambda: run_faiss(False), args.repeats)
            if gpu_faiss
            else (faiss_s, faiss_idx)
        )
        torch_s, torch_idx = _median_time(
            lambda: brute_candidates(bank_n, queries_n, args.k, args.device), args.repeats
        )
        gpu_best = min(torch_s, faiss_s) if gpu_faiss else torch_s
        top1 = [torch_idx[:, 0] == cpu_idx[:, 0]]
        if gpu_faiss:
            top1.append(faiss_idx[:, 0] == cpu_idx[:, 0])
        gpu = {
            "faiss_cpu_s": round(cpu_s, 4),
            "torch_gpu_s": round(torch_s, 4),
            "gpu_speedup": round(cpu_s / gpu_best, 3),
            "gpu_cpu_agreement": float(min(t.mean() for t in top1)),
        }
    disco_s = None
    if not args.skip_disco:
        disco_s, _ = _median_time(
            lambda: search(bank, queries, args.k, "faiss", args.device).indices, args.repeats
        )

    same = faiss_idx[:, 0] == sk_idx[:, 0]
    sim_f = np.einsum("qd,qd->q", queries_n, bank_n[faiss_idx[:, 0]])
    sim_s = np.einsum("qd,qd->q", queries_n, bank_n[sk_idx[:, 0]])
    tie = np.abs(sim_f - sim_s) <= 1e-5
    result = {
        "bench": "knn",
        "bank": args.bank,
        "queries": args.queries,
        "dim": args.dim,
        "k": args.k,
        "repeats": args.repeats,
        "device": args.device,
        "faiss_gpu": gpu_faiss,
        "threads": {"faiss": faiss.omp_get_max_threads(), "torch": torch.get_num_threads()},
        "cpus": os.cpu_count(),
        "faiss_s": round(faiss_s, 4),
        "sklearn_s": None if sklearn_s is None else round(sklearn_s, 4),
        "speedup": None if sklearn_s is None else round(sklearn_s / faiss_s, 3),
        **gpu,
        "disco_search_s": None if disco_s is None else round(disco_s, 4),
        # Without scikit-learn there is nothing to agree with: null, not a self-comparison.
        "agreement": None if sklearn_s is None else float(same.mean()),
        "agreement_up_to_ties": None if sklearn_s is None else float((same | tie).mean()),
    }
    print(f"kNN bench: {args.bank} bank x {args.queries} queries x {args.dim} dims, k={args.k}")
    print(f"{'method':<32}{'median s':>10}")
    print(f"{'faiss IndexFlatIP':<32}{faiss_s:>10.3f}")
    if sklearn_s is not None:
        print(f"{'sklearn brute cosine':<32}{sklearn_s:>10.3f}")
    if gpu["torch_gpu_s"] is not None:
        print(f"{'faiss IndexFlatIP (CPU)':<32}{gpu['faiss_cpu_s']:>10.3f}")
        print(f"{'torch matmul + top-k (GPU)':<32}{gpu['torch_gpu_s']:>10.3f}")
    if disco_s is not None:
        print(f"{'student_trainer.knn.search':<32}{disco_s:>10.3f}")
    if sklearn_s is not None:
        speedup = sklearn_s / faiss_s
        print(f"speedup (sklearn / faiss): {speedup:.2f}x; top-1 agreement {same.mean():.4f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
