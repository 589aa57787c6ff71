"""Benchmark: every kNN backend of ``student_trainer.eval.knn.search`` (+ scikit-learn) on random
data.

All exact backends (FAISS ``IndexFlatIP``, blocked torch matmul + top-k, the brute-force torch
reference) run through ``knn.search`` (candidates + the shared exact re-ranking), so their results
must be identical; the approximate FAISS IVF index is scored by its recall@k against them.
Repeats are interleaved (backend order rotates every repeat) and times are medians, so the
machine's load drifts over all backends alike. Prints a table, then as its last line one JSON
object: {"bench": "knn", "backends_s": {...}, "default_backend", "default_s",
"fastest_other_exact", "fastest_other_exact_s", "default_vs_fastest_other" (time ratio, <= 1 means
the default is at least as fast), "agreement" (fraction of queries whose k neighbours and
similarities are identical across every exact backend), "ivf": {nlist, nprobe, s,
"recall_at_k"}, "sklearn_s", "sklearn_top1_agreement_up_to_ties", ...}.

    python bench/knn.py                       # 50,000 bank x 10,000 queries x 512 dims
    python bench/knn.py --bank 50000 --queries 4000 --dim 512 --repeats 3
    python bench/knn.py --bank 200000 --queries 2000 --dim 128 --clusters 1000   # IVF recall
    python bench/knn.py --bank 1000000 --queries 10000 --dim 128 --device cuda --skip-sklearn
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

from student_trainer.eval.knn import (
    EXACT_BACKENDS,
    Neighbours,
    default_backend,
    faiss_has_gpu,
    ivf_search,
    l2_normalise,
    recall_at_k,
    search,
)


def _interleaved(
    fns: dict[str, Callable[[], Any]], repeats: int
) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per name over ``repeats`` rounds, the order rotating each round."""
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    out: dict[str, Any] = {}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            out[name] = fns[name]()
            times[name].append(time.perf_counter() - start)
    return {n: statistics.median(t) for n, t in times.items()}, out


def main() -> None:
    """Parse flags, time every backend ``--repeats`` times, print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--bank", type=int, default=50_000, help="bank vectors (default 50000)")
    ap.add_argument("--queries", type=int, default=10_000, help="query vectors (default 10000)")
    ap.add_argument("--dim", type=int, default=512, help="dimensions (default 512)")
    ap.add_argument("--k", type=int, default=20, help="neighbours per query (default 20)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per backend (default 3)")
    ap.add_argument("--seed", type=int, default=0, help="data seed")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (GPU FAISS index if available)")
    ap.add_argument("--nlist", type=int, default=None, help="IVF lists (default 4 sqrt(N))")
    ap.add_argument("--nprobe", type=int, default=None, help="IVF lists probed (default 32)")
    ap.add_argument(
        "--clusters", type=int, default=0,
        help="0: isotropic Gaussian data (no structure, IVF's worst case); C > 0: C Gaussian "
        "clusters (unit centres, noise 0.5 / sqrt(dim) per entry), closer to real features",
    )  # fmt: skip
    ap.add_argument("--skip-sklearn", action="store_true", help="do not time scikit-learn")
    ap.add_argument("--skip-ivf", action="store_true", help="do not time the IVF index")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    bank = rng.standard_normal((args.bank, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    if args.clusters > 0:
        centres = l2_normalise(rng.standard_normal((args.clusters, args.dim), dtype=np.float32))
        noise = np.float32(0.5 / args.dim**0.5)
        bank = centres[rng.integers(0, args.clusters, args.bank)] + noise * bank
        queries = centres[rng.integers(0, args.clusters, args.queries)] + noise * queries
    default = default_backend(args.device)

    def exact(name: str) -> Callable[[], Neighbours]:
        return lambda: search(bank, queries, args.k, name, args.device)

    fns: dict[str, Callable[[], Any]] = {name: exact(name) for name in EXACT_BACKENDS}
    if not args.skip_sklearn:

        def run_sklearn() -> np.ndarray:
            nn = NearestNeighbors(n_neighbors=args.k, metric="cosine", algorithm="brute", n_jobs=-1)
            nn.fit(bank)
            return np.asarray(nn.kneighbors(queries, return_distance=False))

        fns["sklearn"] = run_sklearn
    times, outs = _interleaved(fns, args.repeats)

    ref: Neighbours = outs[default]
    same = np.ones(args.queries, dtype=bool)
    for name in EXACT_BACKENDS:
        nb: Neighbours = outs[name]
        same &= (nb.indices == ref.indices).all(1) & (nb.similarities == ref.similarities).all(1)
    others = {n: t for n, t in times.items() if n in EXACT_BACKENDS and n != default}
    fastest_other = min(others, key=others.__getitem__)

    ivf: dict[str, Any] | None = None
    if not args.skip_ivf:
        start = time.perf_counter()
        approx = ivf_search(bank, queries, args.k, nlist=args.nlist, nprobe=args.nprobe)
        ivf_s = time.perf_counter() - start
        nlist = args.nlist or max(1, min(round(4 * args.bank**0.5), args.bank // 39))
        ivf = {
            "nlist": nlist,
            "nprobe": args.nprobe or min(nlist, 32),
            "s": round(ivf_s, 4),
            "recall_at_k": round(recall_at_k(approx, ref), 4),
        }

    sk_tie = None
    if "sklearn" in outs:
        b_n, q_n = l2_normalise(bank), l2_normalise(queries)
        sim_sk = np.einsum("qd,qd->q", q_n, b_n[outs["sklearn"][:, 0]])
        sk_tie = float((np.abs(sim_sk - ref.similarities[:, 0]) <= 1e-5).mean())

    result = {
        "bench": "knn",
        "bank": args.bank,
        "queries": args.queries,
        "dim": args.dim,
        "clusters": args.clusters,
        "k": args.k,
        "repeats": args.repeats,
        "device": args.device,
        "faiss_gpu": args.device.startswith("cuda") and faiss_has_gpu(),
        "threads": {"faiss": faiss.omp_get_max_threads(), "torch": torch.get_num_threads()},
        "cpus": os.cpu_count(),
        "backends_s": {n: round(t, 4) for n, t in times.items()},
        "default_backend": default,
        "default_s": round(times[default], 4),
        "fastest_other_exact": fastest_other,
        "fastest_other_exact_s": round(times[fastest_other], 4),
        "default_vs_fastest_other": round(times[default] / times[fastest_other], 3),
        "agreement": float(same.mean()),
        "ivf": ivf,
        "ivf_recall_at_k": None if ivf is None else ivf["recall_at_k"],
        "faiss_s": round(times["faiss"], 4),
        "sklearn_s": round(times["sklearn"], 4) if "sklearn" in times else None,
        "sklearn_top1_agreement_up_to_ties": sk_tie,
    }
    print(f"kNN bench: {args.bank} bank x {args.queries} queries x {args.dim} dims, k={args.k}")
    print(f"{'backend':<34}{'median s':>10}")
    for name, t in times.items():
        mark = " (default)" if name == default else ""
        print(f"{name + mark:<34}{t:>10.3f}")
    if ivf is not None:
        label = f"faiss-ivf nlist={ivf['nlist']} nprobe={ivf['nprobe']}"
        print(f"{label:<34}{ivf_s:>10.3f}   recall@{args.k} {ivf['recall_at_k']:.4f}")
    print(f"exact backends identical on {same.mean():.4f} of queries; default {default} / "
          f"fastest other ({fastest_other}) = {result['default_vs_fastest_other']}")  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
