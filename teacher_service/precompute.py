"""The precompute job: the teacher's final embedding of every planned view, written shard by shard.

Pipeline (one process = one worker of the job)::

    DataLoader workers: decode rows + render all V views of them as uint8 pixels
      (renderer ``batched``: the workers only decode; the main thread renders each batch's views
      at once on the teacher's device with ``store.views.render_views``, same bytes on CPU)
      -> main thread: teacher forward on the pixels (the teacher applies its own mean/std; eval,
         inference mode, optional autocast on CUDA),
         L2-normalised embeddings gathered into a whole-shard buffer (n, V, D) float32
      -> writer thread (bounded queue): store.merge_shard(s, ...) -- one read-modify-write per
         shard under its lock, the ``written`` mask set only after the data write returned.

Resume = run the same command again: only slots not yet written are computed (a shard that was in
flight when a process died has no ``written`` bits and is recomputed). The same holds for a store
filled partly by anyone else (the HTTP service's write-through, lazy-fill trainers, rows added by
``disco store append``): the job renders only the unwritten (row, view) slots and merges them into
each shard with ``EmbeddingStore.merge_shard`` under the shard's lock, so every slot written
before (or meanwhile, by another process) keeps its stored bytes. Scale-out:
whole shards are dealt round-robin to ``num_shards * WORLD_SIZE`` workers (``--num-shards`` /
``--shard-index`` for job arrays, ``RANK``/``WORLD_SIZE`` from torchrun); worker 0 creates the
store, the others wait for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text
from torch.utils.data import DataLoader, Dataset

from store.datasets import ImageDataset, open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import (
    ConfigError,
    DecodeError,
    StoreError,
    StoreMismatchError,
    StoreNotFoundError,
)
from store.locks import is_local
from store.manifest import build_manifest
from store.precision import compute_dtype as precision_dtype
from store.runtime import (
    autocast,
    default_workers,
    prepare_model,
    resolve_device,
    to_device,
)
from store.views import (
    RENDER_BOUND,
    Recipe,
    plan_views,
    render_view,
    render_views,
    resolve_renderer,
)
from teacher_service.checkpoint import LoadedEncoder, recipe_for
from teacher_service.config import STORE_DTYPES, PrecomputeConfig
from teacher_service.sources import LoadedTeacher, TeacherModel, load_teacher, to_pixels

__all__ = [
    "STORE_DTYPES",
    "PrecomputeConfig",
    "PrecomputeReport",
    "ShardSink",
    "record_renderer",
    "run_precompute",
    "teacher_attrs",
    "worker_identity",
]

ShardSink = Callable[[int, np.ndarray, np.ndarray | None, np.ndarray], None]
"""``sink(shard, embeddings (n,V,D) f32, features (n,V,F) f32 | None, computed (n,V) bool)``:
``computed`` marks the slots this run filled in (the rest of the buffers is zero)."""


@dataclass
class PrecomputeReport:
    """What one worker did."""

    store: str
    worker: int
    """This worker's id in [0, workers)."""
    workers: int
    """num_shards x WORLD_SIZE."""
    shards_total: int
    """Shards in the store."""
    shards_assigned: int
    """Shards this worker owns."""
    shards_skipped: int
    """Owned shards already fully written (resume)."""
    shards_computed: int
    """Shards (partly) computed and written in this run."""
    computed_shards: list[int]
    """Their indices."""
    views_computed: int
    """Teacher forwards (one per (row, view)) in this run."""
    seconds: float
    """Wall time of the compute loop, s."""
    images_per_s: float
    """views_computed / seconds."""
    compute_dtype: str
    device: str
    renderer: str = "reference"
    """The renderer that produced the views: reference (per view, workers) or batched."""
    invalid_rows: int = 0
    """Rows of the computed shards skipped because the manifest marks them undecodable."""
    slots_kept: int = 0
    """Slots of the computed shards that were already written (an earlier run, the service, a
    lazy-fill trainer): not recomputed, their stored bytes untouched."""
    errors: dict[str, str] = field(default_factory=dict)
    """Sample key -> reason, for rows that failed to decode during this run (also skipped)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON-able)."""
        return asdict(self)


def worker_identity(num_shards: int = 1, shard_index: int = 0) -> tuple[int, int]:
    """``(worker, workers)``: this process's id among ``num_shards * WORLD_SIZE`` workers.

    ``RANK``/``WORLD_SIZE`` come from the environment (torchrun sets them; default 0/1).
    """
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is outside WORLD_SIZE={world}")
    return shard_index * world + rank, num_shards * world


def teacher_attrs(loaded: LoadedTeacher | LoadedEncoder, compute_dtype: str) -> dict[str, Any]:
    """The ``teacher`` attrs recorded in a store: the teacher's identity (source, name, weights
    sha256, pooling, mean/std, input size, licence ...) + ``compute_dtype``."""
    return {**loaded.info, "compute_dtype": compute_dtype}


# --------------------------------------------------------------------------------------------
# Store creation / opening


def _expectations(cfg: PrecomputeConfig) -> dict[str, object]:
    expect: dict[str, object] = {
        "dataset.spec": cfg.dataset,
        "dataset.split": cfg.split,
        "recipe.seed": cfg.seed,
        "recipe.views": cfg.views,
    }
    if cfg.recipe is not None:
        expect["recipe.name"] = cfg.recipe
    if cfg.size is not None:
        expect["recipe.size"] = cfg.size
    return expect


CREATING = ".creating.json"
"""Suffix of worker 0's progress file ``<parent>/.<store name>.creating.json`` beside a local store
while it builds the manifest, plans the views and creates the store: waiting workers read it to
show progress and to tell a slow start from a dead one. Beside, not inside: creating a store
replaces its directory."""
HEARTBEAT_S = 1.0
"""Seconds between worker 0's progress-file updates."""
WAIT_REPORT_S = 10.0
"""Seconds between a waiting worker's progress lines."""


def heartbeat_path(url: str) -> Path | None:
    """Where worker 0 keeps its progress file for the store at ``url`` (None: fsspec URL)."""
    if not is_local(url):
        return None
    path = Path(url).expanduser().absolute()
    return path.parent / f".{path.name}{CREATING}"


class _Heartbeat:
    """Worker 0's progress file (local stores): rewritten every ``HEARTBEAT_S`` by a thread with
    the phase and the manifest's progress until the store with its teacher exists."""

    def __init__(self, url: str) -> None:
        self.path = heartbeat_path(url)
        self.state: dict[str, Any] = {"phase": "listing", "done": 0, "total": 0}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write()
            self._thread = threading.Thread(target=self._run, name="disco-heartbeat", daemon=True)
            self._thread.start()
        return self

    def update(self, phase: str, done: int = 0, total: int = 0) -> None:
        """Record the current phase (listing, manifest, plan, create) and its progress."""
        self.state = {"phase": phase, "done": int(done), "total": int(total)}

    def _write(self) -> None:
        assert self.path is not None
        record = {**self.state, "time": time.time(), "pid": os.getpid()}
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, self.path)
        except OSError:
            pass  # progress only: a failed update never stops the job

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            self._write()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.path is not None:
            self.path.unlink(missing_ok=True)


def _read_heartbeat(url: str) -> dict[str, Any] | None:
    path = heartbeat_path(url)
    if path is None:
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def open_or_create_store(
    cfg: PrecomputeConfig,
    loaded: LoadedTeacher,
    teacher: dict[str, Any],
    worker: int,
    dataset: ImageDataset | None = None,
) -> tuple[EmbeddingStore, ImageDataset | None]:
    """Worker 0 creates the store (or opens and checks an existing one) and attaches the teacher;
    the other workers wait for a store with a teacher, then check it. Returns the store and the
    dataset when this call opened it (so it is listed once per process), else ``dataset``.

    Worker 0 builds the manifest in ``cfg.manifest_workers`` processes and, on a local store,
    keeps a progress file (:func:`heartbeat_path`) up to date until the store has its teacher;
    a waiting worker prints that progress every ``WAIT_REPORT_S`` s and gives up only when
    worker 0 shows no sign of life for ``cfg.wait_timeout`` s (however long the manifest takes).
    On an fsspec URL there is no progress file and ``wait_timeout`` bounds the whole wait.
    """

    def attach(store: EmbeddingStore) -> EmbeddingStore:
        loaded.model.check_size(store.recipe.size)
        # Equal teacher: no-op; a different one raises StoreMismatchError naming the field.
        store.attach_teacher(
            teacher,
            dim=loaded.model.embed_dim,
            dtype=cfg.dtype,
            features_dim=loaded.model.feature_dim if cfg.features else None,
        )
        return store

    if worker == 0:
        store: EmbeddingStore | None = None
        if not cfg.overwrite:
            try:
                store = EmbeddingStore.open(cfg.store, mode="r+", expect=_expectations(cfg))
            except StoreNotFoundError:
                store = None
        if store is None:
            recipe = recipe_for(loaded.info.get("preprocessing"), cfg.recipe, cfg.size)
            loaded.model.check_size(recipe.size)  # before anything is written
            with _Heartbeat(cfg.store) as beat:
                if dataset is None:
                    dataset = open_dataset(cfg.dataset)
                manifest = build_manifest(
                    dataset,
                    cfg.split,
                    progress=cfg.progress,
                    workers=cfg.manifest_workers,
                    on_progress=lambda done, total: beat.update("manifest", done, total),
                )
                beat.update("plan", 0, len(manifest))
                params = plan_views(
                    recipe, cfg.seed, manifest.heights, manifest.widths, cfg.views, cfg.progress
                )
                beat.update("create", 0, len(manifest))
                store = EmbeddingStore.create(
                    cfg.store,
                    manifest=manifest,
                    recipe=recipe,
                    seed=cfg.seed,
                    views=cfg.views,
                    params=params,
                    shard_size=cfg.shard_size,
                    overwrite=cfg.overwrite,
                )
                return attach(store), dataset
        return attach(store), dataset
    return _wait_for_store(cfg, worker, attach), dataset


def _wait_for_store(
    cfg: PrecomputeConfig, worker: int, attach: Callable[[EmbeddingStore], EmbeddingStore]
) -> EmbeddingStore:
    """A worker other than 0: poll for the store worker 0 makes (see open_or_create_store)."""
    last_sign = time.monotonic()
    last_beat: float | None = None
    last_report = time.monotonic()
    while True:
        try:
            store = EmbeddingStore.open(cfg.store, mode="r+", expect=_expectations(cfg))
            if store.teacher is not None:
                return attach(store)
            last_sign = time.monotonic()  # the store exists: worker 0 is attaching its teacher
        except StoreNotFoundError:
            pass
        except StoreMismatchError as exc:
            # Worker 0 writes the group attrs last: a store without a schema is still being made.
            if exc.field != "schema" or exc.actual is not None:
                raise
            last_sign = time.monotonic()
        beat = _read_heartbeat(cfg.store)
        now = time.monotonic()
        if beat is not None and beat.get("time") != last_beat:
            last_beat, last_sign = beat.get("time"), now
        if now - last_report >= WAIT_REPORT_S:
            last_report = now
            where = (
                f"{beat.get('phase')} {beat.get('done')}/{beat.get('total')}"
                if beat
                else "no progress file yet"
            )
            print(
                f"worker {worker}: waiting for worker 0 to create {cfg.store} ({where})",
                file=sys.stderr,
                flush=True,
            )
        if now - last_sign > cfg.wait_timeout:
            raise StoreError(
                f"worker {worker}: no store with a teacher at {cfg.store} and no sign of "
                f"progress from worker 0 for {cfg.wait_timeout:.0f} s (worker 0 creates it)"
            )
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# DataLoader side: decode + render whole rows of a shard


@dataclass
class _Batch:
    shard: int
    rows: np.ndarray  # (m,) int64 store rows whose views are in `images`, each repeated V times
    views: np.ndarray  # (m,) int64
    images: torch.Tensor  # (m, 3, S, S) uint8 pixels; empty when the main thread renders
    errors: list[tuple[int, str, str]]  # (row, key, reason)
    sources: list[np.ndarray] = field(default_factory=list)  # (H, W, 3) uint8 per view (batched)
    params: np.ndarray | None = None  # (m, P) float32 view parameters (batched)

    def pin_memory(self) -> _Batch:
        # DataLoader(pin_memory=True) calls this (CUDA only); without it a dataclass batch would
        # stay in pageable memory and the non-blocking copy to the GPU would be synchronous.
        return dataclasses.replace(self, images=self.images.pin_memory())


class _RowViews(Dataset[_Batch]):
    """Item k = the views to compute of a block of rows of one shard, rendered."""

    def __init__(
        self,
        spec: str,
        items: list[tuple[int, list[int]]],
        indices: np.ndarray,
        keys: np.ndarray,
        valid: np.ndarray,
        params: dict[int, np.ndarray],
        shard_starts: dict[int, int],
        recipe: Recipe,
        dataset: ImageDataset | None = None,
        render: bool = True,
        need: dict[int, np.ndarray] | None = None,
    ) -> None:
        self.need = need
        """Shard -> (n, V) bool slots to compute (None: every view of the listed rows)."""
        self.render = render
        """False: decode only; the views' sources and params go to the main thread."""
        self.spec = spec
        self.items = items
        self.indices = indices
        self.keys = keys
        self.valid = valid
        self.params = params
        self.shard_starts = shard_starts
        self.recipe = recipe
        self._dataset = dataset

    def __len__(self) -> int:
        return len(self.items)

    def _ds(self) -> ImageDataset:
        if self._dataset is None:
            self._dataset = open_dataset(self.spec)
        return self._dataset

    def __getitem__(self, k: int) -> _Batch:
        shard, block = self.items[k]
        params = self.params[shard]
        base = self.shard_starts[shard]
        need = self.need[shard] if self.need is not None else None
        images: list[torch.Tensor] = []
        rows: list[int] = []
        views: list[int] = []
        errors: list[tuple[int, str, str]] = []
        sources: list[np.ndarray] = []
        for row in block:
            if not self.valid[row]:
                continue
            try:
                image = self._ds().load(int(self.indices[row]))
            except DecodeError as exc:
                errors.append((row, str(self.keys[row]), exc.reason))
                continue
            for v in range(params.shape[1]):
                if need is not None and not need[row - base, v]:
                    continue
                if self.render:
                    images.append(render_view(image, params[row - base, v], self.recipe))
                else:
                    sources.append(image)
                rows.append(row)
                views.append(v)
        size = self.recipe.size
        stacked = (
            to_pixels(torch.stack(images), self.recipe.mean, self.recipe.std)
            if images
            else torch.empty(0, 3, size, size, dtype=torch.uint8)
        )
        rows_a, views_a = np.asarray(rows, np.int64), np.asarray(views, np.int64)
        if self.render:
            return _Batch(shard, rows_a, views_a, stacked, errors)
        return _Batch(
            shard, rows_a, views_a, stacked, errors, sources, params[rows_a - base, views_a]
        )


def _identity(batch: Any) -> Any:
    return batch


# --------------------------------------------------------------------------------------------
# Writer thread


class _ShardWriter:
    """Runs ``sink`` on whole shards in a background thread; a bounded queue overlaps writes with
    compute. The first sink error is re-raised in the main thread."""

    def __init__(self, sink: ShardSink, depth: int = 2) -> None:
        self.sink = sink
        self.queue: queue.Queue[tuple[int, np.ndarray, np.ndarray | None, np.ndarray] | None]
        self.queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="disco-shard-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                self.sink(*item)
            except BaseException as exc:
                self.error = exc

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(
        self, shard: int, emb: np.ndarray, feats: np.ndarray | None, written: np.ndarray
    ) -> None:
        """Queue one whole shard (blocks while ``depth`` shards are pending)."""
        while True:
            self._check()
            try:
                self.queue.put((shard, emb, feats, written), timeout=0.2)
                return
            except queue.Full:
                continue

    def close(self) -> None:
        """Wait for all queued shards to be written; re-raise a sink error."""
        self.queue.put(None)
        self.thread.join()
        self._check()


# --------------------------------------------------------------------------------------------
# Progress


class _RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} img/s" if speed else "-- img/s", style="cyan")


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        disable=not enabled,
    )


# --------------------------------------------------------------------------------------------
# The job


def _plan_items(
    store: EmbeddingStore, need: dict[int, np.ndarray], batch_size: int
) -> list[tuple[int, list[int]]]:
    """Batches of (shard, rows): rows with a slot to compute, about ``batch_size`` views each."""
    items: list[tuple[int, list[int]]] = []
    for s, mask in need.items():
        start = store.shard_bounds(s)[0]
        rows: list[int] = []
        count = 0
        for local in np.flatnonzero(mask.any(axis=1)).tolist():
            k = int(mask[local].sum())
            if rows and count + k > batch_size:
                items.append((s, rows))
                rows, count = [], 0
            rows.append(start + local)
            count += k
        if rows:
            items.append((s, rows))
    return items


def run_precompute(
    cfg: PrecomputeConfig,
    sink: ShardSink | None = None,
    dataset: ImageDataset | None = None,
) -> PrecomputeReport:
    """Compute and store the teacher's embedding of every planned view this worker owns.

    ``sink`` replaces the store write (``store.merge_shard``), e.g. a null writer in benchmarks;
    ``dataset`` reuses an already opened dataset (workers otherwise open ``cfg.dataset`` lazily).
    Returns a :class:`PrecomputeReport`. Raises ``DiscoError`` subclasses on bad input.
    """
    job = _start_job(cfg, dataset)
    work = _plan_work(job.store, job.worker, job.workers, cfg)
    loader = _work_loader(job, work, cfg, job.dataset)
    writer = _ShardWriter(sink if sink is not None else _store_sink(job.store))
    t0 = time.perf_counter()
    try:
        done = _compute(job, work, loader, writer, cfg)
    finally:
        writer.close()
    if done.failed_rows and sink is None:
        # Valid by their header at manifest time, undecodable now: recorded in the store so no
        # consumer waits for targets that will never come (the slots stay unwritten).
        job.store.mark_invalid(np.asarray(done.failed_rows, np.int64), done.errors)
    return _report(cfg, job, work, done, time.perf_counter() - t0)


@dataclass
class _Job:
    """Where and with what one worker computes: device, dtype, its id, the teacher, the store."""

    device: torch.device
    compute_dtype: str
    worker: int
    workers: int
    encoder: TeacherModel
    store: EmbeddingStore
    renderer: str
    loader_workers: int
    dataset: ImageDataset | None
    """The dataset when this process has opened it already (listed once, handed to workers)."""


@dataclass
class _Work:
    """This worker's shards and, in each shard to do, the slots to compute."""

    mine: list[int]
    """Shards this worker owns."""
    need: dict[int, np.ndarray]
    """Shard to do -> (n, V) bool: valid rows' unwritten slots."""
    skipped: int
    """Owned shards with nothing to compute."""
    items: list[tuple[int, list[int]]]
    """Batches of (shard, rows), about ``batch_size`` views each."""
    kept: int
    """Already written slots of the shards to do (their bytes stay)."""

    @property
    def todo(self) -> list[int]:
        """The shards to compute, in order."""
        return list(self.need)


@dataclass
class _Done:
    """What the compute loop did."""

    views: int = 0
    computed: list[int] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    failed_rows: list[int] = field(default_factory=list)


def _start_job(cfg: PrecomputeConfig, dataset: ImageDataset | None) -> _Job:
    """Resolve the device and worker id, load the frozen teacher, open (or create) the store and
    record the renderer in it (worker 0)."""
    device = resolve_device(cfg.device)
    compute_dtype = precision_dtype(cfg.precision, device.type)
    worker, workers = worker_identity(cfg.num_shards, cfg.shard_index)
    if cfg.overwrite and workers > 1:
        # Another worker could open the old store before worker 0 replaced it.
        raise ConfigError("--overwrite needs a single worker; delete the store first instead")
    loaded = load_teacher(cfg.teacher, cfg.teacher_weights, cfg.teacher_pooling, device=device)
    teacher = teacher_attrs(loaded, compute_dtype)
    store, dataset = open_or_create_store(cfg, loaded, teacher, worker, dataset)
    encoder = loaded.model.requires_grad_(False).eval()
    prepare_model(encoder, device)  # see runtime.prepare_model
    loader_workers = cfg.workers if cfg.workers is not None else default_workers(device)
    renderer = resolve_renderer(cfg.renderer, device)
    if worker == 0:
        record_renderer(store, renderer, device)
    return _Job(
        device, compute_dtype, worker, workers, encoder, store, renderer, loader_workers, dataset
    )


def _plan_work(store: EmbeddingStore, worker: int, workers: int, cfg: PrecomputeConfig) -> _Work:
    """This worker's shards (every ``workers``-th); a shard is to do when a valid row has an
    unwritten view, and only those slots are computed (at most ``cfg.max_shards`` shards)."""
    mine = [s for s in range(store.num_shards) if s % workers == worker]
    valid = store.manifest.valid
    written_now = store.written_mask()
    need: dict[int, np.ndarray] = {}
    for s in mine:
        a, b = store.shard_bounds(s)
        mask = valid[a:b, None] & ~written_now[a:b]
        if mask.any():
            need[s] = mask
    skipped = len(mine) - len(need)
    if cfg.max_shards is not None:
        need = {s: need[s] for s in list(need)[: cfg.max_shards]}
    items = _plan_items(store, need, max(store.views, cfg.batch_size))
    kept = sum(int(written_now[slice(*store.shard_bounds(s))].sum()) for s in need)
    return _Work(mine, need, skipped, items, kept)


def _work_loader(
    job: _Job, work: _Work, cfg: PrecomputeConfig, dataset: ImageDataset | None
) -> DataLoader[_Batch]:
    """Workers that decode (and, with the reference renderer, render) the work's batches."""
    store = job.store
    manifest = store.manifest
    if dataset is None and work.need:
        # Listed once here and handed to the DataLoader workers (forked: no copy, no re-walk).
        dataset = open_dataset(manifest.dataset)
    all_params = store.params
    source = _RowViews(
        manifest.dataset,
        work.items,
        manifest.indices,
        manifest.keys,
        manifest.valid,
        {s: all_params[slice(*store.shard_bounds(s))] for s in work.todo},
        {s: store.shard_bounds(s)[0] for s in work.todo},
        store.recipe,
        dataset=dataset,
        render=job.renderer == "reference",
        need=work.need,
    )
    n = job.loader_workers
    return DataLoader(
        source,
        batch_size=None,
        shuffle=False,
        num_workers=n,
        collate_fn=_identity,
        pin_memory=job.device.type == "cuda",
        prefetch_factor=4 if n > 0 else None,
    )


def _compute(
    job: _Job,
    work: _Work,
    loader: DataLoader[_Batch],
    writer: _ShardWriter,
    cfg: PrecomputeConfig,
) -> _Done:
    """Embed every batch into its shard's buffer; hand a shard to ``writer`` once its last batch
    is in. Undecodable rows are recorded (see :func:`_record_failures`) and stay unwritten."""
    store, encoder = job.store, job.encoder
    batches_left = {s: 0 for s in work.todo}
    for s, _ in work.items:
        batches_left[s] += 1
    buffers: dict[int, tuple[np.ndarray, np.ndarray | None, np.ndarray]] = {}
    done = _Done()
    total_views = int(sum(m.sum() for m in work.need.values()))
    with _progress(cfg.progress) as bar, torch.inference_mode():
        task = bar.add_task(f"precompute w{job.worker}/{job.workers}", total=total_views)
        for batch in _iterate(loader):
            s = batch.shard
            if s not in buffers:
                n = store.shard_bounds(s)[1] - store.shard_bounds(s)[0]
                emb_buf = np.zeros((n, store.views, encoder.embed_dim), np.float32)
                feat_buf = (
                    np.zeros((n, store.views, encoder.feature_dim), np.float32)
                    if cfg.features
                    else None
                )
                buffers[s] = (emb_buf, feat_buf, np.zeros((n, store.views), bool))
            for row, key, reason in batch.errors:
                done.errors[key] = reason  # its slots stay unwritten; recorded in the store
                done.failed_rows.append(row)
            if len(batch.rows):
                _embed_into(job, batch, buffers[s], batch.rows - store.shard_bounds(s)[0])
                done.views += len(batch.rows)
                bar.advance(task, len(batch.rows))
            batches_left[s] -= 1
            if batches_left[s] == 0:
                writer.submit(s, *buffers.pop(s))
                done.computed.append(s)
    return done


def _embed_into(
    job: _Job,
    batch: _Batch,
    buffer: tuple[np.ndarray, np.ndarray | None, np.ndarray],
    local: np.ndarray,
) -> None:
    """Render (batched renderer) or move the batch's views to the device, run the teacher and
    put the L2-normalised embeddings (and features) at shard-local rows ``local``."""
    emb_buf, feat_buf, written = buffer
    device = job.device
    if batch.params is not None:
        x = render_views(batch.sources, batch.params, job.store.recipe, device)
    else:
        x = to_device(batch.images, device)
    with autocast(device, job.compute_dtype):
        feat, emb = job.encoder(x, output="both")
    emb = torch.nn.functional.normalize(emb.float(), dim=1)
    emb_buf[local, batch.views] = emb.cpu().numpy()
    written[local, batch.views] = True
    if feat_buf is not None:
        feat_buf[local, batch.views] = feat.float().cpu().numpy()


def _report(
    cfg: PrecomputeConfig, job: _Job, work: _Work, done: _Done, seconds: float
) -> PrecomputeReport:
    """The worker's :class:`PrecomputeReport`."""
    store = job.store
    valid = store.manifest.valid
    return PrecomputeReport(
        store=cfg.store,
        worker=job.worker,
        workers=job.workers,
        shards_total=store.num_shards,
        shards_assigned=len(work.mine),
        shards_skipped=work.skipped,
        shards_computed=len(done.computed),
        computed_shards=done.computed,
        views_computed=done.views,
        seconds=seconds,
        images_per_s=done.views / seconds if seconds > 0 else 0.0,
        compute_dtype=job.compute_dtype,
        device=str(job.device),
        renderer=job.renderer,
        invalid_rows=sum(int((~valid[slice(*store.shard_bounds(s))]).sum()) for s in work.todo),
        errors=done.errors,
        slots_kept=work.kept,
    )


def record_renderer(store: EmbeddingStore, renderer: str, device: torch.device | str) -> None:
    """Add ``{"renderer", "device"}`` to the store's ``renderers`` attr (the renderers and device
    types that produced its targets, with the stated bound between them) unless already there.

    Readers compare their own renderer with this list: another one is used only within
    ``RENDER_BOUND`` (``disco store verify --renderer ... --device ...`` checks it).
    """
    entry = {"renderer": renderer, "device": torch.device(device).type}
    current: Any = dict(store.group.attrs).get("renderers") or {}
    seen = list(current.get("producers", []))
    if entry in seen:
        return
    record: Any = {"producers": [*seen, entry], "bound": dict(RENDER_BOUND)}
    store.group.attrs.update({"renderers": record})


def _iterate(loader: DataLoader[_Batch]) -> Iterator[_Batch]:
    # An empty loader with workers still spawns processes; skip it.
    if len(loader.dataset) == 0:  # type: ignore[arg-type]
        return iter(())
    return iter(loader)


def _store_sink(store: EmbeddingStore) -> ShardSink:
    def write(shard: int, emb: np.ndarray, feats: np.ndarray | None, computed: np.ndarray) -> None:
        # Under the shard lock; slots another writer filled meanwhile keep their bytes.
        store.merge_shard(shard, emb, computed, features=feats)

    return write
