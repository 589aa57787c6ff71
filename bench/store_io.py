"""Store I/O benchmark: whole-shard zarr writes/reads vs one raw numpy file of the same bytes.

Writes random unit vectors (N, V, D) float16 into an EmbeddingStore shard by shard (random shard
order, one call per shard), reads them back whole-shard in a seeded random order, and does the same
with ``ndarray.tofile`` / ``np.fromfile``. Compares the codecs none / zstd / blosc-bitshuffle, and
int8 (per-dimension scales) for bytes and cosine to fp32. Prints a table, then as the LAST line
one JSON object: write_mb_s, read_mb_s, raw_write_mb_s, raw_read_mb_s, read_ratio, write_ratio,
compression_ratio (for the chosen codec), plus per-codec figures. Figures are medians of repeats.

    python bench/store_io.py                  # 200000 x 16 x 128
    python bench/store_io.py --n 50000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from store.embedding_store import CODECS, EmbeddingStore, int8_scales
from store.inspection import file_sizes
from store.manifest import Manifest
from store.views import get_recipe

CHOSEN_CODEC = "none"


def _manifest(n: int) -> Manifest:
    keys = np.array([str(i) for i in range(n)])
    return Manifest(
        dataset=f"bench:{n}",
        split="all",
        indices=np.arange(n),
        keys=keys,
        labels=np.full(n, -1),
        sha256=np.full(n, "0" * 64),
        heights=np.full(n, 32),
        widths=np.full(n, 32),
        valid=np.ones(n, dtype=bool),
    )


def _unit_vectors(n: int, v: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, v, d), dtype=np.float16)
    step = 8192
    for a in range(0, n, step):
        x = rng.standard_normal((min(step, n - a), v, d), dtype=np.float32)
        x /= np.linalg.norm(x, axis=-1, keepdims=True)
        out[a : a + len(x)] = x
    return out


def _fsync_tree(path: str) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def bench_codec(
    root: Path,
    data: np.ndarray,
    codec: str,
    dtype: str,
    shard: int,
    chunk: int | None,
    repeats: int,
    manifest: Manifest,
) -> dict[str, float]:
    """Write + read ``data`` through an EmbeddingStore; median MB/s over ``repeats``."""
    n, v, d = data.shape
    mb = data.nbytes / 1e6
    writes, reads, reads_f32 = [], [], []
    ratio = 1.0
    scale = int8_scales(data[: min(n, 20000)].reshape(-1, d).astype(np.float32))
    cos_min = cos_mean = 1.0
    for rep in range(repeats):
        url = str(root / f"{codec}-{dtype}-{rep}.zarr")
        store = EmbeddingStore.create(
            url,
            manifest=manifest,
            recipe=get_recipe("digits", 32),
            seed=0,
            views=v,
            params=np.zeros((n, v, 8), dtype=np.float32),
            shard_size=shard,
            chunk_size=chunk,
            codec=codec,
        )
        store.attach_teacher({"arch": "bench"}, dim=d, dtype=dtype, int8_scale=scale)
        order = np.random.default_rng(rep).permutation(store.num_shards).tolist()
        _fsync_tree(url)  # flush the manifest/params written by create outside the timing
        t0 = time.perf_counter()
        for s in order:
            a, b = store.shard_bounds(s)
            store.write_shard(s, data[a:b])
        _fsync_tree(url)
        writes.append(mb / (time.perf_counter() - t0))
        reader = EmbeddingStore.open(url)
        t0 = time.perf_counter()
        for s in np.random.default_rng(100 + rep).permutation(reader.num_shards).tolist():
            reader.read_shard_raw(s)
        reads.append(mb / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for block in reader.iter_blocks(seed=rep):
            if dtype == "int8" and rep == 0 and block.shard == 0:
                ref = data[block.start : block.stop].astype(np.float32)
                cos = (block.embeddings * ref).sum(-1) / np.linalg.norm(block.embeddings, axis=-1)
                cos_min, cos_mean = float(cos.min()), float(cos.mean())
        reads_f32.append(mb / (time.perf_counter() - t0))
        sizes = file_sizes(url)
        stored = sum(sz for k, sz in sizes.items() if k.startswith("embeddings/c/"))
        ratio = data.nbytes / stored
        shutil.rmtree(url)
    return {
        "write_mb_s": statistics.median(writes),
        "read_mb_s": statistics.median(reads),
        "read_f32_mb_s": statistics.median(reads_f32),
        "compression_ratio": ratio,
        "int8_cos_min": cos_min,
        "int8_cos_mean": cos_mean,
    }


def bench_raw(root: Path, data: np.ndarray, repeats: int) -> dict[str, float]:
    """One raw file: ``tofile`` + fsync, then ``np.fromfile``; median MB/s."""
    mb = data.nbytes / 1e6
    writes, reads = [], []
    for rep in range(repeats):
        path = root / f"raw-{rep}.bin"
        t0 = time.perf_counter()
        with open(path, "wb") as f:
            data.tofile(f)
            f.flush()
            os.fsync(f.fileno())
        writes.append(mb / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        back = np.fromfile(path, dtype=np.float16)
        reads.append(mb / (time.perf_counter() - t0))
        assert back.size == data.size
        path.unlink()
    return {"write_mb_s": statistics.median(writes), "read_mb_s": statistics.median(reads)}


def main() -> None:
    """Run the benchmark and print the table and the JSON line."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="rows N")
    ap.add_argument("--views", type=int, default=16, help="views V")
    ap.add_argument("--dim", type=int, default=128, help="embedding dim D")
    ap.add_argument("--shard", type=int, default=4096, help="rows per shard")
    ap.add_argument("--chunk", type=int, default=None, help="rows per inner chunk")
    ap.add_argument("--repeats", type=int, default=3, help="repeats per measurement (median)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--codecs", default=",".join(CODECS), help="codecs to compare")
    args = ap.parse_args()
    console = Console()
    root = Path(tempfile.mkdtemp(prefix="store_io_", dir=args.dir))
    try:
        data = _unit_vectors(args.n, args.views, args.dim)
        manifest = _manifest(args.n)
        raw = bench_raw(root, data, args.repeats)
        results = {}
        for codec in args.codecs.split(","):
            results[codec] = bench_codec(
                root, data, codec, "float16", args.shard, args.chunk, args.repeats, manifest
            )
        int8 = bench_codec(
            root, data, "none", "int8", args.shard, args.chunk, args.repeats, manifest
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    table = Table(title=f"store_io N={args.n} V={args.views} D={args.dim} shard={args.shard}")
    for col in (
        "layout",
        "write MB/s",
        "read MB/s",
        "read->f32 MB/s",
        "compression",
        "w/raw",
        "r/raw",
    ):
        table.add_column(col)
    table.add_row(
        "raw file", f"{raw['write_mb_s']:.0f}", f"{raw['read_mb_s']:.0f}", "-", "1.00", "1", "1"
    )
    for name, r in [*((f"fp16 {c}", results[c]) for c in results), ("int8 none", int8)]:
        table.add_row(
            name,
            f"{r['write_mb_s']:.0f}",
            f"{r['read_mb_s']:.0f}",
            f"{r['read_f32_mb_s']:.0f}",
            f"{r['compression_ratio']:.3f}",
            f"{r['write_mb_s'] / raw['write_mb_s']:.2f}",
            f"{r['read_mb_s'] / raw['read_mb_s']:.2f}",
        )
    console.print(table)
    console.print(
        f"int8 (per-dim scales): {1 / int8['compression_ratio']:.2f}x the fp16 bytes; "
        f"cosine to fp32 min {int8['int8_cos_min']:.5f} mean {int8['int8_cos_mean']:.5f}"
    )
    chosen = results.get(CHOSEN_CODEC, next(iter(results.values())))
    out = {
        "bench": "store_io",
        "n": args.n,
        "views": args.views,
        "dim": args.dim,
        "shard": args.shard,
        "repeats": args.repeats,
        "codec": CHOSEN_CODEC,
        "write_mb_s": round(chosen["write_mb_s"], 1),
        "read_mb_s": round(chosen["read_mb_s"], 1),
        "read_f32_mb_s": round(chosen["read_f32_mb_s"], 1),
        "raw_write_mb_s": round(raw["write_mb_s"], 1),
        "raw_read_mb_s": round(raw["read_mb_s"], 1),
        "read_ratio": round(chosen["read_mb_s"] / raw["read_mb_s"], 3),
        "write_ratio": round(chosen["write_mb_s"] / raw["write_mb_s"], 3),
        "compression_ratio": round(chosen["compression_ratio"], 4),
        "codecs": {
            c: {k: round(v, 4) for k, v in r.items() if not k.startswith("int8")}
            for c, r in results.items()
        },
        "int8_cos_min": round(int8["int8_cos_min"], 6),
        "int8_cos_mean": round(int8["int8_cos_mean"], 6),
        "int8_bytes_vs_fp16": 0.5,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
