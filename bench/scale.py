"""Scale rehearsal: the O(N) paths of an ImageNet-sized job, measured on a laptop.

(a) Manifest: writes an ImageNet-shaped ImageFolder (class-sorted folders, JPEGs of about 500x375)
    and builds its manifest (header sizes + sha256 of the bytes) with 1 worker and with all
    cores (best of 5 each; the files are in the page cache, so this is the CPU cost, not the
    disk's); the old rule (a full decode of every image, one core) is timed on a sample.
(b) A fabricated store of 1,281,167 rows (ImageNet-1k's train split), V 8, small D, 1,000 classes
    in folder order, rows in the store's row order (``store.manifest.store_rows``): the classes
    per batch of 256 the trainer's plan draws, against uniform sampling and against rows in
    dataset order. A fabricated store of 131,072 rows at D 768 (48 MB shards): slot writes per
    second of one writer doing the service's write-through / lazy fill (64 random slots per
    request), against the old rule (one read-modify-write of every touched shard).
    Trainer-side figures (plan rows/s, trainer RSS, resume jump) come from ``trainer_figures``
    (a hook for #23 items 3-4; null until it is filled).
(c) Extrapolations: a 1.28 M-image manifest on 16 cores, one epoch's plan.

Prints a table, then as its LAST line one JSON object with ``manifest_ms_per_image``,
``manifest_pool_speedup``, ``plan_rows_per_s``, ``classes_per_batch_ratio``, ``trainer_rss_mb``,
``resume_jump_s``, ``slot_writes_per_s`` (and the figures behind them).

    python bench/scale.py            # the rehearsal (under 10 minutes on 2 cores)
    python bench/scale.py --tiny     # seconds: the same code paths at toy sizes (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from rich.console import Console
from rich.table import Table

from store.datasets import open_dataset
from store.decode import decode_image
from store.embedding_store import EmbeddingStore
from store.locks import shard_lock
from store.manifest import Manifest, build_manifest, default_workers, store_rows
from store.views import get_recipe, plan_views

IMAGENET_ROWS = 1_281_167
IMAGENET_CLASSES = 1_000
BATCH = 256


@dataclass
class Sizes:
    """The rehearsal's sizes (full or ``--tiny``)."""

    files: int
    """JPEGs in the generated ImageFolder."""
    classes_folder: int
    """Class folders in it."""
    rows: int
    """Rows of the fabricated small-D store."""
    classes: int
    """Classes of the fabricated store."""
    dim: int
    """D of the small-D store."""
    rows_768: int
    """Rows of the D 768 store."""
    shard: int
    """Rows per shard of both stores."""
    requests: int
    """64-slot requests timed for slot writes (the log path)."""
    rmw_requests: int
    """Requests timed on the old read-modify-write path."""
    mix_batches: int
    """Batches of the trainer's plan counted for classes per batch."""
    repeats: int
    """Repeats of each manifest timing (median)."""


FULL = Sizes(3000, 100, IMAGENET_ROWS, IMAGENET_CLASSES, 16, 131_072, 4096, 60, 3, 200, 5)
TINY = Sizes(48, 4, 20_000, 100, 8, 2048, 256, 6, 2, 20, 1)


# ----------------------------------------------------------------------------------------------
# (a) manifest


def write_imagefolder(root: Path, files: int, classes: int, seed: int = 0) -> Path:
    """An ImageNet-shaped ImageFolder: ``classes`` folders ``n0000000k``, ``files`` JPEGs of
    about 500x375 (some portrait, some 333 px high), smooth content plus noise at quality 90 (about
    100-150 KB each, like ImageNet's). Reused when complete."""
    done = root / ".complete"
    if done.exists() and done.read_text() == f"{files} {classes} {seed}":
        return root
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:375, 0:500].astype(np.float32)
    bases = []
    for _ in range(8):  # smooth scenes, varied per file by noise (cheap to make)
        a, b, c = rng.uniform(0.005, 0.05, 3)
        chans = [np.sin(a * xx + b * yy), np.cos(b * xx), np.sin(c * yy)]
        bases.append(np.stack([128 + 90 * ch for ch in chans], axis=-1).astype(np.int16))
    for i in range(files):
        cls = i * classes // files
        folder = root / f"n{cls:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        noise = rng.integers(-24, 25, bases[0].shape, dtype=np.int16)
        rgb = np.clip(bases[i % 8] + noise, 0, 255).astype(np.uint8)
        shape = i % 5
        if shape == 3:
            rgb = np.ascontiguousarray(rgb.transpose(1, 0, 2))  # portrait 375x500
        elif shape == 4:
            rgb = rgb[:333]
        Image.fromarray(rgb).save(folder / f"n{cls:08d}_{i}.JPEG", quality=90)
    done.write_text(f"{files} {classes} {seed}")
    return root


def _best_s(fn: Callable[[], object], repeats: int) -> float:
    """The fastest of ``repeats`` runs, s: on a shared machine the other jobs only ever add time,
    so the minimum is the closest to what the code itself costs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def _cpu_s(fn: Callable[[], object]) -> float:
    """CPU seconds ``fn`` costs in this process and in the child processes it waits for."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.process_time()
    fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    children = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return time.process_time() - t0 + children


def bench_manifest(root: Path, sizes: Sizes) -> dict[str, Any]:
    """ms per image of the manifest at 1 worker and at all cores, and of the old full decode."""
    ds = open_dataset(f"imagefolder:{root}")
    n = len(ds)
    cores = default_workers()
    one = _best_s(lambda: build_manifest(ds, "all", False, workers=1), sizes.repeats)
    many = _best_s(lambda: build_manifest(ds, "all", False, workers=cores), sizes.repeats)
    sample = list(range(0, n, max(1, n // 300)))  # the old rule, on a sample: it is slow

    def decode_all() -> None:
        for i in sample:
            decode_image((root / ds.keys[i]).read_bytes(), ds.keys[i])

    # CPU seconds of both (this process + pool workers): independent of the machine's load, so
    # the pool's own cost shows even when the other jobs leave it no free core.
    cpu_one = _cpu_s(lambda: build_manifest(ds, "all", False, workers=1))
    cpu_many = _cpu_s(lambda: build_manifest(ds, "all", False, workers=cores))
    decode = _best_s(decode_all, 1)
    check = build_manifest(ds, "all", False, workers=cores)
    mb = sum((root / k).stat().st_size for k in ds.keys) / 2**20
    return {
        "files": n,
        "mean_file_kb": round(mb * 1024 / n, 1),
        "cores": cores,
        "manifest_ms_per_image_1": 1e3 * one / n,
        "manifest_ms_per_image": 1e3 * many / n,
        "manifest_pool_speedup": one / many,
        "manifest_pool_cpu_ratio": cpu_many / cpu_one,
        "decode_ms_per_image_1": 1e3 * decode / len(sample),
        "header_vs_decode_speedup": (decode / len(sample)) / (one / n),
        "manifest_invalid": check.num_invalid,
    }


# ----------------------------------------------------------------------------------------------
# (b) fabricated stores


def fabricated_manifest(n: int, classes: int, row_order: str = "permuted") -> Manifest:
    """A class-sorted dataset of ``n`` images (``classes`` folders of near-equal size, as
    ImageFolder lists them), rows ordered by ``row_order`` as ``build_manifest`` would."""
    labels = np.arange(n, dtype=np.int64) * classes // n
    rows = store_rows(n, "all", row_order)
    keys = np.char.add(
        np.char.add("n", labels[rows].astype(str)), np.char.add("/", rows.astype(str))
    )
    manifest = Manifest(
        dataset=f"fabricated:{n}",
        split="all",
        indices=rows,
        keys=keys,
        labels=labels[rows],
        sha256=np.full(n, "ab" * 32),
        heights=np.full(n, 375, np.int32),
        widths=np.full(n, 500, np.int32),
        valid=np.ones(n, bool),
    )
    manifest.row_order = row_order
    return manifest


def fabricate_store(
    path: Path, n: int, views: int, dim: int, classes: int, shard: int, fill: bool
) -> EmbeddingStore:
    """A store over :func:`fabricated_manifest` with a teacher of width ``dim`` attached; params
    are one shard's plan repeated (real values, no per-row planning cost); ``fill`` writes
    random unit vectors into every slot, shard by shard."""
    manifest = fabricated_manifest(n, classes)
    recipe = get_recipe("mocov2", 224)
    tile = plan_views(recipe, 0, manifest.heights[:shard], manifest.widths[:shard], views)
    params = np.resize(tile, (n, views, recipe.num_params))
    store = EmbeddingStore.create(
        str(path), manifest=manifest, recipe=recipe, seed=0, views=views, params=params,
        shard_size=shard, overwrite=True,
    )  # fmt: skip
    store.attach_teacher({"arch": "fabricated", "sha256": "f" * 64}, dim=dim)
    if fill:
        rng = np.random.default_rng(1)
        for s in range(store.num_shards):
            a, b = store.shard_bounds(s)
            x = rng.standard_normal((b - a, views, dim), dtype=np.float32)
            x /= np.linalg.norm(x, axis=-1, keepdims=True)
            store.write_shard(s, x)
    return store


def uniform_classes_per_batch(counts: np.ndarray, batch: int) -> float:
    """Expected distinct classes in ``batch`` rows drawn uniformly without replacement from a
    dataset with ``counts`` rows per class: sum_c 1 - C(N - n_c, b) / C(N, b)."""
    n = float(counts.sum())
    # log C(N - n_c, b) / C(N, b) = sum_{k<b} log((N - n_c - k) / (N - k))
    k = np.arange(batch, dtype=np.float64)
    miss = np.exp(np.log(np.maximum(n - counts[:, None] - k, 1e-300) / (n - k)).sum(axis=1))
    return float(np.sum(1.0 - miss))


def simulated_classes_per_batch(
    labels: np.ndarray, shard: int, buffer: int, batch: int, batches: int, seed: int = 0
) -> float:
    """Distinct classes per batch when rows (``labels`` in row order) are read as shards in a
    seeded order through a ``buffer``-item shuffle buffer (the trainer's scheme, DESIGN §7)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    order = rng.permutation(-(-n // shard))
    stream = np.concatenate([labels[s * shard : (s + 1) * shard] for s in order])
    need = buffer + batch * batches
    stream = stream[:need]
    buf = stream[:buffer].copy()
    out = np.empty(batch * batches, labels.dtype)
    picks = rng.integers(0, buffer, size=len(out))
    for k in range(len(out)):  # bounded by `batches`, not by N
        j = picks[k]
        out[k] = buf[j]
        buf[j] = stream[buffer + k]
    per = out.reshape(batches, batch)
    return float(np.mean([len(np.unique(b)) for b in per]))


def plan_classes_per_batch(store: EmbeddingStore, batches: int) -> float:
    """Distinct classes per batch of ``BATCH`` in the first ``batches`` batches of the trainer's
    own epoch plan (``student_trainer.train.data.StorePlan``) over ``store``."""
    # The trainer's own plan (torch comes with it): imported only for this figure, so the
    # manifest pool's workers do not import torch.
    from student_trainer.train.data import StorePlan

    plan = StorePlan(store, seed=0, batch=BATCH, buffer_size=8192)
    labels = store.manifest.labels
    counts = []
    for k, batch in enumerate(plan.batches(0)):
        rows = np.array([item.row for item in batch])
        counts.append(len(np.unique(labels[rows])))
        if k + 1 >= batches:
            break
    return float(np.mean(counts))


def bench_mix(store: EmbeddingStore, sizes: Sizes) -> dict[str, Any]:
    """Classes per batch: the trainer's plan over the store's rows, the same scheme over rows in
    dataset order (the old rule), and uniform sampling."""
    labels = store.manifest.labels
    counts = np.bincount(labels, minlength=sizes.classes)
    uniform = uniform_classes_per_batch(counts, BATCH)
    planned = plan_classes_per_batch(store, sizes.mix_batches)
    simulated = simulated_classes_per_batch(
        labels, store.shard_size, 8192, BATCH, sizes.mix_batches
    )
    dataset_order = simulated_classes_per_batch(
        np.sort(labels), store.shard_size, 8192, BATCH, sizes.mix_batches
    )
    measured = planned
    return {
        "row_order": store.row_order,
        "classes_per_batch": measured,
        "classes_per_batch_simulated": simulated,
        "classes_per_batch_dataset_order": dataset_order,
        "classes_per_batch_uniform": uniform,
        "classes_per_batch_ratio": measured / uniform,
        "classes_per_batch_ratio_dataset_order": dataset_order / uniform,
    }


def _requests(store: EmbeddingStore, count: int, size: int, seed: int) -> list[np.ndarray]:
    """``count`` requests of ``size`` distinct random slots (flat row * V + view), disjoint."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(store.n * store.views, size=count * size, replace=False)
    return list(flat.reshape(count, size))


def bench_slots(store: EmbeddingStore, sizes: Sizes, per_request: int = 64) -> dict[str, Any]:
    """Slot writes per second of one writer: ``write_slots`` (the slot log) against one
    read-modify-write of every touched shard per request (the old rule, still the path of
    fsspec stores)."""
    rng = np.random.default_rng(3)
    vec = rng.standard_normal((per_request, store.dim or 0), dtype=np.float32)
    vec /= np.linalg.norm(vec, axis=1, keepdims=True)
    reqs = _requests(store, sizes.requests + sizes.rmw_requests, per_request, seed=4)
    t0 = time.perf_counter()
    for flat in reqs[: sizes.requests]:
        store.write_slots(flat // store.views, flat % store.views, vec)
    log_s = time.perf_counter() - t0
    logged = store.written_mask().sum()
    enc = store._encode(vec[:, None])[:, 0]
    t0 = time.perf_counter()
    for flat in reqs[sizes.requests :]:
        rows, views = flat // store.views, flat % store.views
        shards = rows // store.shard_size
        for s in np.unique(shards).tolist():
            sel = shards == s
            with shard_lock(store.url, s):
                store._update_shard(
                    s, rows[sel] - s * store.shard_size, views[sel], enc[sel], None, False
                )
    rmw_s = time.perf_counter() - t0
    rows_per_req = np.mean([len(np.unique(f // store.views // store.shard_size)) for f in reqs])
    return {
        "slot_request": per_request,
        "shards_per_request": float(rows_per_req),
        "slot_writes_per_s": sizes.requests * per_request / log_s,
        "slot_writes_per_s_rewrite": sizes.rmw_requests * per_request / rmw_s,
        "slot_writes_speedup": (sizes.requests * per_request / log_s)
        / (sizes.rmw_requests * per_request / rmw_s),
        "slots_logged": int(logged),
    }


# ----------------------------------------------------------------------------------------------
# Trainer side (#23 items 3-4): planning, resume jump, bounded memory.

TRAINER_BATCHES = 120
"""Batches of a late epoch the RSS child reads (tens of shards: enough to show a leak)."""
LATE_EPOCH = 7


def _rss_mb() -> float:
    """Peak resident set of this process, MB: ``VmHWM`` of ``/proc/self/status`` (reset by exec;
    ``ru_maxrss`` is not: a child started from a big parent reports the parent's peak)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # no /proc: an upper bound


def trainer_child(url: str, fill_dim: int | None, batches: int, buffer: int) -> dict[str, Any]:
    """The trainer's real data path over the store at ``url`` in this (fresh) process: open it,
    build the plan (manifest, usable mask), read ``batches`` batches of a late epoch as the
    DataLoader's sampler does (shards read, slots copied out, targets stacked as ``collate_pairs``
    stacks them), then jump straight to a step near that epoch's end. Returns timings and the
    peak RSS, MB. ``fill_dim``: lazy-fill mode (every valid view usable; for a store whose slots
    are mostly unwritten)."""
    # the trainer's modules (torch) only in this child, as a trainer process imports them
    import torch

    from student_trainer.train.data import EpochBatchSampler, StorePlan

    t0 = time.perf_counter()
    store = EmbeddingStore.open(url)
    plan = StorePlan(store, seed=0, batch=BATCH, buffer_size=buffer, fill_dim=fill_dim)
    init_s = time.perf_counter() - t0
    sampler = EpochBatchSampler(plan)
    sampler.set_epoch(LATE_EPOCH)
    t0 = time.perf_counter()
    first_s = 0.0
    for k, items in enumerate(sampler):
        targets = [i.targets[0] for i in items if i.targets is not None]
        torch.from_numpy(np.stack(targets))  # as collate_pairs stacks them
        if k == 0:
            first_s = time.perf_counter() - t0
        if k + 1 >= batches:
            break
    stream_s = time.perf_counter() - t0
    # a resume: a new plan object (nothing planned ahead, as in a fresh process) jumps to 5
    # batches before the end of the next epoch; its start-up (manifest, mask) is plan_init_s
    skip = plan.steps_per_epoch - 5
    resumed = StorePlan(store, seed=0, batch=BATCH, buffer_size=buffer, fill_dim=fill_dim)
    jumper = EpochBatchSampler(resumed)
    jumper.set_epoch(LATE_EPOCH + 1, skip=skip)
    t0 = time.perf_counter()
    jumped = next(iter(jumper))
    jump_s = time.perf_counter() - t0
    return {
        "rows": int(store.n),
        "dim": int(store.dim or 0),
        "plan_init_s": init_s,
        "first_batch_s": first_s,
        "batches_per_s": batches / stream_s,
        "resume_jump_s": jump_s,
        "resume_skip": skip,
        "resume_shards_read": len(resumed.shards_read),
        "shards": int(store.num_shards),
        "shard_rows": int(store.shard_size),
        "buffer": buffer,
        "live_shards_peak": plan.live_peak,
        "batch_targets_bytes": _held_bytes(jumped[0].targets),
        "rss_mb": _rss_mb(),
    }


def _held_bytes(targets: tuple[np.ndarray, np.ndarray] | None) -> int:
    """Bytes of the array an item's targets are views of (a batch's (b, 2, D) copy)."""
    if targets is None:
        return 0
    base = targets[0].base
    return int(targets[0].nbytes if base is None else base.nbytes)


def _child(url: str, fill_dim: int | None, batches: int, buffer: int) -> dict[str, Any]:
    """:func:`trainer_child` in a fresh interpreter (its own peak RSS); the last stdout line."""
    cmd = [sys.executable, __file__, "--child", url, "--child-batches", str(batches)]
    cmd += ["--child-buffer", str(buffer)]
    if fill_dim is not None:
        cmd += ["--child-fill-dim", str(fill_dim)]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    if proc.returncode:
        raise RuntimeError(f"trainer child failed: {proc.stderr[-2000:]}")
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def trainer_figures(
    store_big: EmbeddingStore, store_768: EmbeddingStore, sizes: Sizes
) -> dict[str, Any]:
    """``plan_rows_per_s``: the vectorised epoch plan over ``store_big`` (rows planned per second,
    best of 3 epochs, one thread); ``trainer_rss_mb``: peak RSS of a fresh trainer process on the
    real data path over ``store_big`` and over ``store_768`` (lazy-fill mode, D 768), the larger;
    ``resume_jump_s``: seconds from a resume to its first batch 5 steps before a late epoch's
    end (no replay: only the shards its batches need are read), against the first batch of an
    epoch (``resume_jump_ratio``)."""
    # the trainer's default window (8192) at full size; two shards' worth at toy sizes, so the
    # window spans as few shards as it does at full size
    buffer = min(8192, 2 * sizes.shard)
    # The trainer's own plan (torch comes with it): imported only for these figures.
    from student_trainer.train.data import StorePlan

    plan = StorePlan(store_big, seed=0, batch=BATCH, buffer_size=buffer)
    times = []
    for epoch in range(3):
        t0 = time.perf_counter()
        rows = len(plan.plan_epoch(epoch).rows)
        times.append(time.perf_counter() - t0)
    batches = min(sizes.mix_batches, TRAINER_BATCHES)
    big = _child(store_big.url, None, batches, buffer)
    wide = _child(store_768.url, 768, batches, buffer)
    return {
        "plan_rows_per_s": rows / min(times),
        "plan_epoch_s": min(times),
        "trainer_rss_mb": max(big["rss_mb"], wide["rss_mb"]),
        "resume_jump_s": big["resume_jump_s"],
        "resume_jump_ratio": big["resume_jump_s"] / big["first_batch_s"],
        **{f"trainer_big_{k}": v for k, v in big.items()},
        **{f"trainer_768_{k}": v for k, v in wide.items()},
    }


# ----------------------------------------------------------------------------------------------


def extrapolate(m: dict[str, Any], t: dict[str, Any]) -> dict[str, Any]:
    """(c) 1.28 M-image manifest on 16 cores (the measured per-core cost, the measured pool
    efficiency) and one epoch's plan."""
    eff = m["manifest_pool_speedup"] / max(1, m["cores"])
    per_image_s = m["manifest_ms_per_image_1"] / 1e3
    out = {
        "manifest_1p28m_16_cores_min": IMAGENET_ROWS * per_image_s / (16 * min(1.0, eff)) / 60,
        "manifest_1p28m_1_core_min": IMAGENET_ROWS * per_image_s / 60,
        "decode_manifest_1p28m_1_core_min": IMAGENET_ROWS * m["decode_ms_per_image_1"] / 1e3 / 60,
        "epoch_plan_s": None,
    }
    if t.get("plan_rows_per_s"):
        out["epoch_plan_s"] = IMAGENET_ROWS / t["plan_rows_per_s"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="toy sizes (seconds; for tests)")
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)  # trainer_child's store
    ap.add_argument("--child-fill-dim", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-batches", type=int, default=TRAINER_BATCHES, help=argparse.SUPPRESS)
    ap.add_argument("--child-buffer", type=int, default=8192, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(trainer_child(a.child, a.child_fill_dim, a.child_batches, a.child_buffer)))
        return
    sizes = TINY if a.tiny else FULL
    root = Path(a.dir) if a.dir else Path(tempfile.mkdtemp(prefix="disco-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    console = Console(stderr=True)
    load = os.getloadavg()
    t_all = time.perf_counter()
    try:
        folder = write_imagefolder(root / "imagefolder", sizes.files, sizes.classes_folder)
        m = bench_manifest(folder, sizes)
        big = fabricate_store(
            root / "big.zarr", sizes.rows, 8, sizes.dim, sizes.classes, sizes.shard, fill=True
        )
        mix = bench_mix(big, sizes)
        wide = fabricate_store(
            root / "d768.zarr", sizes.rows_768, 8, 768, sizes.classes, sizes.shard, fill=False
        )
        slots = bench_slots(wide, sizes)
        trainer = trainer_figures(big, wide, sizes)
        ext = extrapolate(m, trainer)
    finally:
        if not a.keep and not a.dir:
            shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {
        "bench": "scale",
        "manifest_ms_per_image": m["manifest_ms_per_image"],
        "manifest_pool_speedup": m["manifest_pool_speedup"],
        "plan_rows_per_s": trainer["plan_rows_per_s"],
        "classes_per_batch_ratio": mix["classes_per_batch_ratio"],
        "trainer_rss_mb": trainer["trainer_rss_mb"],
        "resume_jump_s": trainer["resume_jump_s"],
        "slot_writes_per_s": slots["slot_writes_per_s"],
        **{
            k: v
            for k, v in m.items()
            if k not in ("manifest_ms_per_image", "manifest_pool_speedup")
        },
        **{k: v for k, v in mix.items() if k != "classes_per_batch_ratio"},
        **{k: v for k, v in slots.items() if k != "slot_writes_per_s"},
        **{
            k: v
            for k, v in trainer.items()
            if k not in ("plan_rows_per_s", "trainer_rss_mb", "resume_jump_s")
        },
        **ext,
        "rows": sizes.rows,
        "rows_768": sizes.rows_768,
        "tiny": a.tiny,
        "load_avg_1m": load[0],
        "seconds": time.perf_counter() - t_all,
    }
    table = Table(title=f"scale rehearsal ({'tiny' if a.tiny else 'full'}; load {load[0]:.1f})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for key, value in out.items():
        if key == "bench":
            continue
        table.add_row(
            key,
            "null"
            if value is None
            else f"{value:,.3f}"
            if isinstance(value, float)
            else str(value),
        )
    Console().print(table)
    console.print(f"scratch: {root}" if a.keep or a.dir else "")
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
