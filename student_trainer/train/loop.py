"""The training loop: ``train(cfg) -> TrainResult``, read top to bottom.

1. set up (process group under torchrun, data plan + renderer, student, MoCo module, optimiser);
2. resume from ``out/ckpt/last.pt`` or fill the queues with real keys;
3. for each step: learning rate from the schedule, momentum update (no grad), targets (cached or
   from a frozen online teacher), losses, a finite check, SGD step, enqueue, log, checkpoint;
4. export ``final.pt`` (query encoder with head, loads as a teacher), ``deployed.pt`` +
   ``deployed.safetensors`` (the backbone's own state dict, loadable with plain timm/torchvision
   code) + ``deployed.json``, ``config.json``, ``log.jsonl`` and ``loss_curves.png``.

Normalisation belongs to each model: the views are rendered in uint8, the student sees them
normalised with its own mean/std (a timm student's data config, else the recipe's), and an online
teacher gets the pixels and applies its own.

With ``knn_every`` the kNN monitor (``student_trainer.eval.monitor``) scores the query backbone
before step 1 and every N epochs (under DDP each rank embeds its share; all get the record),
logs it to ``log.jsonl`` (records with a ``knn_weighted`` key instead of ``lr``/losses), draws
it on the curves and, with ``keep_best``, writes ``best.pt`` at each new best. It uses no random
state, so it does not change the weights.

Every random decision is keyed by (seed, epoch/step, rank) and the data position is the step
count, so N steps + resume + N steps gives the same weights as 2N steps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from store.atomic import atomic_write_text
from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import CheckpointError, ConfigError, DiscoError
from store.manifest import build_manifest
from store.memory import InMemoryStore
from store.precision import compute_dtype
from store.relocate import open_moved_dataset
from store.runtime import (
    autocast,
    default_workers,
    prepare_model,
    resolve_device,
    to_device,
)
from store.views import Recipe, get_recipe, resolve_renderer
from student_trainer.eval.monitor import KnnMonitor, best_record
from student_trainer.train.config import RESUME_FREE_FIELDS, TrainConfig
from student_trainer.train.data import (
    TAG_PREFILL,
    DatasetPlan,
    EpochBatchSampler,
    ImageBank,
    PairBatch,
    PairRenderer,
    StorePlan,
    collate_pairs,
    plan_seed,
    render_pairs,
)
from student_trainer.train.export import export_deployed
from student_trainer.train.lazyfill import (
    LazyFillError,
    TargetFiller,
    TeacherLink,
    service_store_name,
)
from student_trainer.train.moco import MoCo, StepOutput, effective_queue_size
from student_trainer.train.models import (
    build_student,
    deployed_backbone,
    resolve_bn_groups,
    student_config,
    student_normalisation,
)
from student_trainer.train.schedule import cosine_lr
from teacher_service.checkpoint import atomic_torch_save, save_checkpoint
from teacher_service.encoders import TIMM_PREFIX, Encoder, count_parameters
from teacher_service.sources import TeacherModel, load_teacher, to_pixels

__all__ = ["STATE_FORMAT", "NonFiniteLossError", "TrainResult", "train"]

STATE_FORMAT = "disco-train-state/1"
"""Format tag of the resumable training state ``ckpt/last.pt``."""

StepHook = Callable[[int, PairBatch, StepOutput], None]


class NonFiniteLossError(DiscoError, FloatingPointError):
    """The loss became NaN or infinite; training stopped."""


@dataclass
class TrainResult:
    """What a finished run produced. Paths are strings; losses are floats (nats)."""

    out: str
    final_path: str
    deployed_path: str
    steps: int
    steps_per_epoch: int
    queue_size: int
    student_parameters: int
    deployed_parameters: int
    seconds: float
    """Training wall seconds of this process, without the kNN monitor's evaluations."""
    samples_per_second: float
    first_terms: dict[str, float] = field(default_factory=dict)
    last_terms: dict[str, float] = field(default_factory=dict)
    knn: list[dict[str, Any]] = field(default_factory=list)
    """kNN monitor records of the whole run (every rank: the same records)."""
    best_path: str | None = None
    """``best.pt`` (the query encoder at the best monitor figure) with ``keep_best``."""
    data_seconds: float = 0.0
    """Of ``seconds``: waiting for the next batch (decode + render not hidden by the workers,
    store reads, batched rendering). Host time: on CUDA, queued GPU work is not waited for."""
    teacher_seconds: float = 0.0
    """Of ``seconds``: the online teacher's forward on both views (0 with cached targets)."""
    fill: dict[str, float] = field(default_factory=dict)
    """Lazy fill (``teacher_url``): the last ``FillStats.snapshot()`` (fill_fetched slots,
    fill_slots_per_s, fill_cached fraction, fill_dropped samples); empty otherwise."""


@dataclass
class _Data:
    plan: StorePlan | DatasetPlan
    renderer: PairRenderer
    recipe: Recipe
    teacher_dim: int | None
    use_cached_targets: bool
    dataset_spec: str
    filler: TargetFiller | None = None
    """Lazy fill: fetches the plan's missing targets from the teacher service."""
    complete: bool = True
    """Every target the plan can use is written (a lazy and a plain run plan alike then);
    checked only when resuming."""


def _connect_service(cfg: TrainConfig, store: Any, world: int) -> tuple[TeacherLink, int]:
    """Lazy fill: the link to ``cfg.teacher_url`` for ``store`` (identity checked, unless the
    service is down under ``missing=skip``) and the targets' width D (the store's, else the
    service's ``GET /v1/model`` ``embed_dim`` for a store without a teacher yet)."""
    assert cfg.teacher_url is not None and cfg.store is not None
    if cfg.missing == "skip" and world > 1:
        raise ConfigError("missing=skip needs one process: DDP ranks gather equal batches")
    name = service_store_name(cfg.store, cfg.service_store)
    link = TeacherLink(cfg.teacher_url, name, store.attrs, cfg.missing)
    model = link.model()  # checks the service's store first; error/wait/skip on no answer
    dim = store.dim
    if dim is None:
        if model is None:
            raise LazyFillError(
                f"store {cfg.store} has no teacher yet and the teacher service "
                f"{link.url} is unreachable: its embedding dim is unknown"
            )
        dim = int(model["embed_dim"])
    return link, int(dim)


def _open_data(
    cfg: TrainConfig, rank: int, world: int, batch: int, renderer: str = "reference"
) -> _Data:
    """Data plan + renderer for ``cfg`` (store or dataset); refuses a mismatched store first."""
    show = cfg.progress and rank == 0
    if cfg.store is not None:
        store = EmbeddingStore.open(cfg.store, expect=dict(cfg.expect) or None)
        cached = cfg.spec.uses_teacher and cfg.online_teacher is None
        if cached and store.teacher is None and cfg.teacher_url is None:
            raise ConfigError(
                f"store {cfg.store} has no teacher embeddings; run `disco precompute` first "
                "(or fill it while training: --teacher-url)"
            )
        if cached:  # cached targets pair with fresh renders: refuse a library that drew otherwise
            store.check_render(accept_drift=cfg.accept_render_drift)
        link, fill_dim = None, None
        if cached and cfg.teacher_url is not None:
            link, fill_dim = _connect_service(cfg, store, world)
        if cfg.store_in_ram and store.teacher is not None:
            store = InMemoryStore.load(store)
        manifest = store.manifest
        dataset = open_moved_dataset(manifest, cfg.dataset, full=cfg.full_check)
        recipe = store.recipe
        plan: StorePlan | DatasetPlan = StorePlan(
            store,
            seed=cfg.seed,
            batch=batch,
            rank=rank,
            world=world,
            buffer_size=cfg.shuffle_buffer,
            use_targets=cached,
            max_views=cfg.views,
            fill_dim=fill_dim,
        )
        teacher_dim = (fill_dim or store.dim) if cached else None
        complete = not (cached and cfg.resume) or _store_complete(store, cfg.views)
    else:
        assert cfg.dataset is not None
        dataset = open_dataset(cfg.dataset)
        manifest = build_manifest(dataset, cfg.split, progress=show)
        recipe = get_recipe(cfg.resolved_recipe(), cfg.size)
        plan = DatasetPlan(
            manifest, seed=cfg.seed, batch=batch, epochs=cfg.epochs, rank=rank, world=world
        )
        cached, teacher_dim, link, complete = False, None, None, True
    bank = ImageBank(dataset, manifest, ImageBank.should_cache(manifest, cfg.cache_images), show)
    pairs = PairRenderer(bank, recipe, cfg.seed, render=renderer == "reference")
    filler = None if link is None else TargetFiller(link, bank.image, cfg.fill_depth)
    return _Data(plan, pairs, recipe, teacher_dim, cached, dataset.spec, filler, complete)


def _store_complete(store: Any, views: int | None) -> bool:
    """True when ``store`` holds a target for every view (the first ``views``) of every valid
    row, fetched fresh (a store without a teacher is empty)."""
    fresh = EmbeddingStore.open(store.url)  # from storage, also for a store held in RAM
    if fresh.teacher is None:
        return False
    mask = fresh.written_mask()[np.asarray(fresh.manifest.valid, dtype=bool)]
    return bool(mask[:, :views].all())


def _step_seed(seed: int, step: int, tag: int = 2) -> int:
    """Seed of step ``step``'s key shuffle (same on every rank; tag 3: queue prefill)."""
    return int(plan_seed(seed, step, tag).generate_state(1)[0])


def _teacher_targets(
    teacher: TeacherModel, view1: torch.Tensor, view2: torch.Tensor, recipe: Recipe
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen teacher's L2-normalised embeddings of both views, ``(b, D)`` each. The views come
    normalised for the student (``recipe``'s mean/std); the teacher gets their exact uint8
    pixels and applies its own normalisation."""
    with torch.inference_mode():
        t1 = teacher(to_pixels(view1, recipe.mean, recipe.std))
        t2 = teacher(to_pixels(view2, recipe.mean, recipe.std))
    assert isinstance(t1, torch.Tensor) and isinstance(t2, torch.Tensor)
    return t1.float().clone(), t2.float().clone()  # clone: usable outside inference mode


def _check_plan(state: dict[str, Any], plan: StorePlan | DatasetPlan, path: Path) -> None:
    """Refuse a training state whose data position was planned under another rule (its step
    would land on other rows): it names both rules. A state written before plans were
    versioned was planned by ``store-plan/1`` (a store) or ``dataset-plan/1``."""
    saved = state.get("plan")
    if saved is None:
        saved = "store-plan/1" if state["config"].get("store") is not None else "dataset-plan/1"
    if saved != plan.version:
        raise CheckpointError(
            f"cannot resume {path}: it was planned under {saved}, this trainer plans "
            f"{plan.version} (the same step would be other rows and views); start a new run "
            f"(another --out) or resume with the release that wrote it"
        )


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    mine = cfg.to_dict()
    # a field added after the state was written counts as its default (e.g. symmetric=False)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
    if saved.get("amp") and "precision" not in saved:  # written with the old --amp (bf16)
        saved = {**saved, "amp": False, "precision": "bf16"}
    saved = defaults | saved
    diff = sorted(k for k in mine if k not in RESUME_FREE_FIELDS and saved.get(k) != mine[k])
    if diff:
        raise ConfigError(
            "cannot resume: the checkpoint was written with different settings for "
            + ", ".join(f"{k} ({saved.get(k)!r} != {mine[k]!r})" for k in diff)
        )


def _log_lines(path: Path, keep_until: int) -> None:
    """Drop log lines after step ``keep_until`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    kept = [
        line
        for line in path.read_text().splitlines()
        if line.strip() and json.loads(line)["step"] <= keep_until
    ]
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _read_log(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``log.jsonl`` -> (step records with ``lr`` and losses, kNN monitor records)."""
    if not path.exists():
        return [], []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if "lr" in r], [r for r in records if "knn_weighted" in r]


def _plot(log_path: Path, png: Path) -> None:
    """PNG of every logged loss term, the lr and (if logged) the kNN monitor against the step."""
    # lazy: matplotlib only when drawing the curves
    import matplotlib

    matplotlib.use("Agg")
    # lazy: matplotlib only when drawing the curves
    import matplotlib.pyplot as plt

    records, knn = _read_log(log_path)
    if not records:
        return
    names = [k for k in records[0] if k == "loss" or k in ("infonce", "distill", "mse", "seed")]
    heights = (3, 1, 2) if knn else (3, 1)
    fig, axes = plt.subplots(
        len(heights), 1, figsize=(7, 6 + 2 * bool(knn)), sharex=True, height_ratios=heights
    )
    ax, ax_lr = axes[0], axes[1]
    steps = [r["step"] for r in records]
    for name in names:
        ax.plot(steps, [r[name] for r in records], label=name, linewidth=1)
    ax.set_ylabel("loss (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    ax_lr.plot(steps, [r["lr"] for r in records], color="grey")
    ax_lr.set_ylabel("lr")
    if knn:
        ax_knn = axes[2]
        ax_knn.plot(
            [r["step"] for r in knn],
            [100 * r["knn_weighted"] for r in knn],
            marker="o",
            label=f"weighted 20-NN ({knn[-1].get('monitor', '')})",
        )
        best = best_record(knn)
        assert best is not None
        ax_knn.annotate(
            f"best {100 * best['knn_weighted']:.1f} (epoch {best['epoch']})",
            (best["step"], 100 * best["knn_weighted"]),
            textcoords="offset points",
            xytext=(0, -14),
            ha="center",
            fontsize=8,
        )
        ax_knn.set_ylabel("kNN-w (%)")
        ax_knn.legend(loc="lower right")
        ax_knn.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def _batches(
    loader: DataLoader[Any],
    sampler: EpochBatchSampler,
    epoch: int,
    skip: int,
    tag: int = 0,
    device: torch.device | str = "cpu",
) -> Iterator[PairBatch]:
    """The loader's batches of (epoch, tag), after ``skip`` of them, with their views rendered
    (on ``device`` when the workers only decoded them)."""
    sampler.set_epoch(epoch, skip=skip, tag=tag)
    dataset = loader.dataset
    assert isinstance(dataset, PairRenderer)
    for batch in loader:
        yield render_pairs(batch, dataset.recipe, device)


def _timed(items: Iterable[PairBatch], clock: _Clock) -> Iterator[PairBatch]:
    """``items``, adding the seconds spent waiting for each one to ``clock.data``."""
    it = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            clock.data += time.perf_counter() - start
        yield item


def _saving_on_fill_error(
    batches: Iterator[PairBatch], save: Callable[[], None]
) -> Iterator[PairBatch]:
    """``batches``; when lazy fill fails (``LazyFillError``) the training state is saved first
    (``save``), so ``--resume`` continues from the last finished step."""
    try:
        yield from batches
    except LazyFillError:
        save()
        raise


def train(cfg: TrainConfig, step_hook: StepHook | None = None) -> TrainResult:
    """Train a student (or a teacher, with ``mocov2``) as ``cfg`` says; see the module docstring.

    ``step_hook(step, batch, output)`` is called after every optimiser step (for tests and tools).
    Raises ``ConfigError``/``StoreMismatchError`` before training for bad settings or a store that
    does not match ``cfg.expect``; ``NonFiniteLossError`` if the loss stops being finite.
    """
    device = resolve_device(cfg.device)  # cuda:LOCAL_RANK under torchrun, set as current
    compute_dtype(cfg.precision, device.type)  # bf16/fp16 off CUDA: one clear error, before work
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    created_group = False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        created_group = True
    rank = dist.get_rank() if world > 1 else 0
    if cfg.batch_size % world:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world} ranks")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, step_hook, device, rank, world, out)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    step_hook: StepHook | None,
    device: torch.device,
    rank: int,
    world: int,
    out: Path,
) -> TrainResult:
    """The run, top to bottom: build, resume or prefill, the steps, export."""
    run = _build(cfg, device, rank, world, out)  # --- 1. set-up
    loader = _loader(run)
    if cfg.resume and run.state_path.exists():  # --- 2. resume, or fill the queues
        _resume(run)
    else:
        _start_fresh(run, loader)
    if rank == 0:
        cfg.save(out / "config.json")
    if world > 1:  # after resume/prefill: DDP starts every rank from rank 0's module state
        run.ddp = DistributedDataParallel(run.model, broadcast_buffers=False)
    seconds = _loop(run, loader, step_hook)  # --- 3. the steps
    del loader  # shuts persistent workers down
    return _export(run, seconds)  # --- 4. export


@dataclass
class _Clock:
    """Wall seconds of a run. ``train_seconds`` (training time without the kNN monitor's, also of
    earlier processes of this run) is logged as ``seconds`` so runs compare at equal training
    time; ``data`` and ``teacher`` split this process's loop time (waiting for batches, running
    an online teacher)."""

    before: float = 0.0
    """Training seconds of earlier processes of this run (from ``log.jsonl`` on resume)."""
    start: float = field(default_factory=time.perf_counter)
    monitor: float = 0.0
    data: float = 0.0
    teacher: float = 0.0

    def train_seconds(self) -> float:
        """Training seconds so far, earlier processes included, the monitor's excluded."""
        return self.before + time.perf_counter() - self.start - self.monitor

    def restart(self) -> None:
        """Start this process's loop time now (set-up and prefill do not count)."""
        self.start = time.perf_counter()
        self.monitor = self.data = self.teacher = 0.0


@dataclass
class _Run:
    """What a training process holds: built once by :func:`_build`; the steps below advance
    ``step`` and record terms, kNN figures and times."""

    cfg: TrainConfig
    device: torch.device
    rank: int
    world: int
    out: Path
    data: _Data
    teacher: TeacherModel | None
    student: Encoder
    model: MoCo
    ddp: torch.nn.Module
    """What the step calls: ``model``, or its ``DistributedDataParallel`` wrapper."""
    optimizer: torch.optim.Optimizer
    sampler: EpochBatchSampler
    monitor: KnnMonitor | None
    preprocessing: dict[str, Any]
    queue_size: int
    amp: contextlib.AbstractContextManager[Any]
    step: int = 0
    start_step: int = 0
    first_terms: dict[str, float] = field(default_factory=dict)
    last_terms: dict[str, float] = field(default_factory=dict)
    knn_records: list[dict[str, Any]] = field(default_factory=list)
    """kNN monitor records of the run (kept across a resume: the best so far survives)."""
    clock: _Clock = field(default_factory=_Clock)
    pending: list[tuple[dict[str, Any], list[str], torch.Tensor]] = field(default_factory=list)
    """Steps not yet read back: (host part of the log record, term names, (T,) terms on the
    device). :func:`_flush` reads them all at once."""
    log: IO[str] | None = None
    """``log.jsonl`` open for appending (rank 0, during the loop)."""

    @property
    def spe(self) -> int:
        """Steps per epoch."""
        return self.data.plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        """Steps of the whole schedule (``epochs`` x steps per epoch)."""
        return self.cfg.epochs * self.spe

    @property
    def stop(self) -> int:
        """The step this process stops after (``stop_at_step`` cuts the schedule short)."""
        return min(self.total_steps, self.cfg.stop_at_step or self.total_steps)

    @property
    def state_path(self) -> Path:
        """The resumable training state."""
        return self.out / "ckpt" / "last.pt"

    @property
    def log_path(self) -> Path:
        """One JSON record per step (and per kNN evaluation)."""
        return self.out / "log.jsonl"


def _build(cfg: TrainConfig, device: torch.device, rank: int, world: int, out: Path) -> _Run:
    """Data plan, online teacher, student, MoCo module, monitor and optimiser, in that order
    (the order fixes what the seeded RNG initialises)."""
    batch = cfg.batch_size // world
    # Batched renderer: workers only decode; views are rendered at once on `device` (same bytes
    # on CPU as the workers' per-view render; within store.views.RENDER_BOUND on CUDA).
    data = _open_data(cfg, rank, world, batch, resolve_renderer(cfg.renderer, device))
    teacher = _online_teacher(cfg, data, device)
    embed_dim = cfg.head_out or data.teacher_dim or 128
    if data.teacher_dim is not None and embed_dim != data.teacher_dim:
        raise ConfigError(f"head_out {embed_dim} != the teacher's embedding dim {data.teacher_dim}")
    torch.manual_seed(cfg.seed)
    student = _student(cfg, data, embed_dim, batch)
    queue_size = effective_queue_size(cfg.queue_size, data.plan.num_samples, cfg.batch_size)
    model = _moco(cfg, student, queue_size, data.plan.num_samples)
    prepare_model(model, device)  # see runtime.prepare_model
    model.train()
    preprocessing = _preprocessing(data.recipe)
    monitor: KnnMonitor | None = None
    if cfg.knn_every:  # every rank: each embeds its share of the bank and queries
        monitor = KnnMonitor.create(
            cfg.monitor_dataset or data.dataset_spec,
            cfg.monitor_split,
            preprocessing,
            device,
            cfg.monitor_max_queries,
            cfg.monitor_max_bank,
        )
    optimizer = torch.optim.SGD(
        student.parameters(),
        lr=cfg.peak_lr,
        momentum=cfg.sgd_momentum,
        weight_decay=cfg.weight_decay,
    )
    amp = autocast(device, compute_dtype(cfg.precision, device.type))
    sampler = EpochBatchSampler(data.plan, data.filler)
    return _Run(cfg, device, rank, world, out, data, teacher, student, model, model, optimizer,
                sampler, monitor, preprocessing, queue_size, amp)  # fmt: skip


def _online_teacher(cfg: TrainConfig, data: _Data, device: torch.device) -> TeacherModel | None:
    """The frozen online teacher (``online_teacher`` with a method that uses one), else None;
    sets ``data.teacher_dim`` to its embedding width."""
    if cfg.online_teacher is None or not cfg.spec.uses_teacher:
        return None
    teacher = load_teacher(
        cfg.online_teacher, cfg.teacher_weights, cfg.teacher_pooling, device=device
    ).model
    teacher.requires_grad_(False)  # frozen, visibly
    teacher.eval()
    teacher.check_size(data.recipe.size)
    prepare_model(teacher, device)  # see runtime.prepare_model
    data.teacher_dim = teacher.embed_dim
    return teacher


def _student(cfg: TrainConfig, data: _Data, embed_dim: int, batch: int) -> Encoder:
    """The student encoder (seeded weights); the renderer then normalises views with the
    student's own mean/std."""
    small_stem = cfg.small_stem
    if small_stem is None:  # timm students keep their own stem (the export must load in timm)
        small_stem = data.recipe.size <= 64 and not cfg.arch.startswith(TIMM_PREFIX)
    encoder_cfg = student_config(
        cfg.arch,
        embed_dim,
        head_hidden=cfg.head_hidden,
        head_bn=cfg.head_bn,
        bn_groups=resolve_bn_groups(cfg.bn_groups, batch) if cfg.head_bn else 1,
        small_stem=small_stem,
        width=cfg.width,
    )
    student = build_student(encoder_cfg)
    mean, std = student_normalisation(student, data.recipe.mean, data.recipe.std)
    data.recipe = dataclasses.replace(data.recipe, mean=mean, std=std)
    data.renderer.recipe = data.recipe  # the student's own normalisation of the uint8 views
    return student


def _moco(cfg: TrainConfig, student: Encoder, queue_size: int, num_samples: int) -> MoCo:
    """The MoCo module around ``student`` (the teacher queue sized for ``num_samples`` rows)."""
    teacher_queue = effective_queue_size(
        cfg.teacher_queue_size or queue_size, num_samples, cfg.batch_size
    )
    return MoCo(
        student,
        method=cfg.method,
        queue_size=queue_size,
        teacher_queue_size=teacher_queue,
        temperature=cfg.temperature,
        distill_weight=cfg.distill_weight,
        teacher_temperature=cfg.seed_teacher_temperature,
        shuffle_keys=cfg.shuffle_keys,
        symmetric=cfg.symmetric,
    )


def _loader(run: _Run) -> DataLoader[Any]:
    """Workers decoding (and, with the reference renderer, rendering) the sampler's batches."""
    cfg, device = run.cfg, run.device
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    return DataLoader(
        run.data.renderer,
        batch_sampler=run.sampler,
        num_workers=workers,
        collate_fn=collate_pairs,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )


def _targets(run: _Run, b: PairBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Teacher targets of both views on the device: the online teacher's, the cached ones, or
    none (``mocov2``)."""
    if run.teacher is not None:
        entered = time.perf_counter()
        with run.amp:  # the online teacher runs in the same precision a precompute would
            t = _teacher_targets(
                run.teacher,
                to_device(b.view1, run.device),
                to_device(b.view2, run.device),
                run.data.recipe,
            )
        run.clock.teacher += time.perf_counter() - entered
        return t
    if run.data.use_cached_targets:
        assert b.target1 is not None and b.target2 is not None
        return to_device(b.target1, run.device), to_device(b.target2, run.device)
    return None, None


def _resume(run: _Run) -> None:
    """Continue from ``ckpt/last.pt``: weights, queues, optimiser, RNG, step; the log is cut
    back to that step (rank 0) and its kNN records and training seconds carried on."""
    cfg = run.cfg
    state = torch.load(run.state_path, map_location=run.device, weights_only=True)
    if state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{run.state_path} is not a {STATE_FORMAT} training state")
    _check_plan(state, run.data.plan, run.state_path)
    _check_resumable(state["config"], cfg)
    was_lazy = state["config"].get("teacher_url") is not None
    if was_lazy != (cfg.teacher_url is not None) and not run.data.complete:
        raise ConfigError(
            "cannot resume: the run was started "
            + ("with" if was_lazy else "without")
            + " lazy fill (teacher_url) and the store still lacks targets, so the data "
            "plan would differ; resume it "
            + ("with --teacher-url" if was_lazy else "without --teacher-url")
        )
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["rng_torch"].cpu())
    run.step = int(state["step"])
    if run.rank == 0:
        _log_lines(run.log_path, keep_until=run.step)
        steps_logged, knn_logged = _read_log(run.log_path)
        run.knn_records.extend(knn_logged)  # the best so far survives a resume
        run.clock.before = float(steps_logged[-1].get("seconds", 0.0)) if steps_logged else 0.0


def _start_fresh(run: _Run, loader: DataLoader[Any]) -> None:
    """A new run: drop an old log (rank 0) and, with ``prefill_queue``, fill the queues with
    real keys (and teacher targets) of the prefill batches before the first step."""
    if run.rank == 0 and run.log_path.exists():
        run.log_path.unlink()
    if not run.cfg.prefill_queue:
        return
    model, device = run.model, run.device
    with torch.no_grad():
        for i, b in enumerate(_batches(loader, run.sampler, 0, 0, TAG_PREFILL, device)):
            if model.queue_full():
                break
            keys = None
            if model.spec.uses_contrast:
                keys = model.encode_keys(to_device(b.view2, device), _step_seed(run.cfg.seed, i, 3))
            t1, _ = _targets(run, b)
            model.enqueue(keys, t1)


def _loop(run: _Run, loader: DataLoader[Any], step_hook: StepHook | None) -> float:
    """Steps from ``run.step`` to ``run.stop``, each logged, monitored and checkpointed when due;
    returns this process's training seconds (without the monitor's)."""
    cfg = run.cfg
    run.start_step = run.step
    run.clock.restart()
    filler = run.data.filler
    with (
        Progress(*_bar_columns(filler), disable=not (cfg.progress and run.rank == 0)) as bar,
        open(run.log_path, "a") if run.rank == 0 else contextlib.nullcontext() as log,
    ):
        run.log = log
        task = bar.add_task(
            "train", total=run.stop, completed=run.step, method=cfg.method, loss=0.0,
            fill=_fill_text(filler),
        )  # fmt: skip
        if cfg.knn_every and run.step == 0:
            _monitor(run, 0, log)  # the initial weights: what training has to beat
        while run.step < run.stop:
            epoch, skip = divmod(run.step, run.spe)
            batches = _batches(loader, run.sampler, epoch, skip, device=run.device)
            for b in _timed(_saving_on_fill_error(batches, lambda: _save_progress(run)), run.clock):
                output = _step(run, b, epoch)
                if step_hook is not None:
                    step_hook(run.step, b, output)
                save = run.step % cfg.checkpoint_every == 0 or run.step == run.stop
                if save or run.step % cfg.log_every == 0 or run.step % run.spe == 0:
                    _flush(run)  # the same steps on every rank (it may all-reduce)
                    bar.update(task, loss=run.last_terms["loss"])
                bar.update(task, completed=run.step, fill=_fill_text(filler))
                _monitor_if_due(run, log)
                if run.rank == 0 and save:
                    _save_state(run, cfg)
                if run.step >= run.stop:
                    break
        run.log = None
    return time.perf_counter() - run.clock.start - run.clock.monitor


def _step(run: _Run, b: PairBatch, epoch: int) -> StepOutput:
    """One optimiser step on batch ``b``: lr from the schedule, momentum update (no grad),
    targets, losses, SGD, enqueue. The loss terms stay on the device (``run.pending``) until
    :func:`_flush`: reading them here would wait for the device every step."""
    cfg, model, device = run.cfg, run.model, run.device
    lr = cosine_lr(run.step, run.total_steps, cfg.peak_lr, round(cfg.warmup_epochs * run.spe))
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    model.momentum_update(cfg.key_momentum)
    t1, t2 = _targets(run, b)
    with run.amp:
        output: StepOutput = run.ddp(
            to_device(b.view1, device),
            to_device(b.view2, device),
            t1,
            t2,
            shuffle_seed=_step_seed(cfg.seed, run.step),
        )
    run.optimizer.zero_grad(set_to_none=True)
    output.loss.backward()
    run.optimizer.step()
    model.enqueue(output.keys, output.teacher_keys)
    run.step += 1
    names = ["loss", *output.terms]
    terms = torch.stack([output.loss.detach(), *output.terms.values()]).float()
    record: dict[str, Any] = {"step": run.step, "epoch": epoch, "lr": lr}
    extra: dict[str, Any] = {"seconds": round(run.clock.train_seconds(), 3)}
    if run.data.filler is not None:
        extra |= {"batch": len(b.rows)} | run.data.filler.stats.snapshot()
    run.pending.append((record | {"_extra": extra}, names, terms))
    return output


def _flush(run: _Run, collective: bool = True) -> None:
    """Read the pending steps' loss terms back (one device sync), stop the run if any is not
    finite (on any rank: one all-reduce under DDP when ``collective``), and append their records
    to ``log.jsonl`` (rank 0).

    Checked here, not per step: a non-finite step is caught within ``log_every`` steps, always
    before a checkpoint, monitor run or export (each flushes first), so no file is written from
    non-finite weights; the error names the first non-finite step."""
    if not run.pending:
        return
    values = torch.stack([t for _, _, t in run.pending]).cpu().numpy()  # the one sync
    finite = np.isfinite(values).all(axis=1)
    everywhere = bool(finite.all())
    if collective and run.world > 1:
        flag = torch.tensor([1.0 if everywhere else 0.0], device=run.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        everywhere = bool(flag.item() > 0)
    records = []
    for (record, names, _), row in zip(run.pending, values.tolist(), strict=True):
        extra = record.pop("_extra")
        records.append(record | dict(zip(names, row, strict=True)) | extra)
    run.pending.clear()
    if not everywhere:
        bad = next((r for r, ok in zip(records, finite, strict=True) if not ok), None)
        where = "another rank" if bad is None else f"step {bad['step']} (epoch {bad['epoch']})"
        shown = {} if bad is None else {k: bad[k] for k in names}
        lr = records[-1]["lr"] if bad is None else bad["lr"]
        raise NonFiniteLossError(
            f"non-finite loss at {where}: {shown}; try a lower --lr than {lr:.4g}"
        )
    terms = [{k: r[k] for k in records[0] if k in names} for r in records]
    run.first_terms = run.first_terms or terms[0]
    run.last_terms = terms[-1]
    if run.log is not None:
        run.log.write("".join(json.dumps(r) + "\n" for r in records))
        run.log.flush()


def _monitor_if_due(run: _Run, log: IO[str] | None) -> None:
    """The kNN monitor at the end of every ``knn_every``-th epoch and of the last one."""
    every = run.cfg.knn_every
    epoch_done, into_epoch = divmod(run.step, run.spe)
    due = epoch_done % every == 0 if every else False
    if every and into_epoch == 0 and (due or run.step == run.total_steps):
        _monitor(run, epoch_done, log)


def _monitor(run: _Run, epoch_done: int, log: IO[str] | None) -> None:
    """kNN monitor after ``epoch_done`` epochs, logged (rank 0); ``best.pt`` on a new best.
    Under DDP every rank embeds its share and all get the same record (see
    :meth:`KnnMonitor.evaluate`), so none waits for another's whole evaluation."""
    cfg = run.cfg
    entered = time.perf_counter()
    if run.monitor is not None:
        best = best_record(run.knn_records)
        record: dict[str, Any] = {"step": run.step, "epoch": epoch_done}
        record |= {"seconds": round(run.clock.train_seconds(), 3)}
        record |= run.monitor.evaluate(run.student, run.rank, run.world)
        run.knn_records.append(record)
        if log is not None:
            log.write(json.dumps(record) + "\n")
            log.flush()
        better = best is None or record["knn_weighted"] > best["knn_weighted"]
        if cfg.keep_best and better and run.rank == 0:
            meta = _export_meta(run) | {"epoch": epoch_done, "knn": record}
            save_checkpoint(
                run.out / "best.pt", run.student, run.preprocessing, train=cfg.to_dict(), meta=meta
            )
    run.clock.monitor += time.perf_counter() - entered


def _save_progress(run: _Run) -> None:
    """Save the training state if this process has stepped (rank 0): before a lazy-fill error
    propagates, so ``--resume`` continues from the last finished step."""
    _flush(run, collective=False)  # one rank's error: no collective call
    if run.rank == 0 and run.step > run.start_step:
        _save_state(run, run.cfg)


def _bar_columns(filler: TargetFiller | None) -> tuple[ProgressColumn, ...]:
    """Progress bar columns: method, bar, steps, loss, lazy fill status, time left."""
    return (
        TextColumn("[bold]train {task.fields[method]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        *([TextColumn("{task.fields[fill]}")] if filler is not None else []),
        TimeRemainingColumn(),
    )


def _fill_text(filler: TargetFiller | None) -> str:
    """The lazy fill column: the service's status, else the fill figures."""
    if filler is None:
        return ""
    return filler.link.status or filler.stats.describe()


def _export_meta(run: _Run) -> dict[str, Any]:
    """The ``meta`` of exported checkpoints: method, steps, queue, head and DDP settings,
    parameter counts and the last loss terms."""
    cfg, student = run.cfg, run.student
    return {
        "method": cfg.method,
        "steps": run.step,
        "total_steps": run.total_steps,
        "queue_size": run.queue_size,
        "head_bn": cfg.head_bn,
        "bn_groups": student.config.bn_groups,
        "shuffle_keys": cfg.shuffle_keys,
        "prefill_queue": cfg.prefill_queue,
        "symmetric": cfg.symmetric,
        "world_size": run.world,
        "student_parameters": count_parameters(student),
        "deployed_parameters": count_parameters(deployed_backbone(student)),
        "last_terms": run.last_terms,
    }


def _export(run: _Run, seconds: float) -> TrainResult:
    """Write ``final.pt``, the deployed backbone and the curves (rank 0); return the result."""
    cfg, out, student = run.cfg, run.out, run.student
    final_path, deployed_path = out / "final.pt", out / "deployed.pt"
    deployed = deployed_backbone(student)
    deployed_params = count_parameters(deployed)
    if run.rank == 0:
        meta = _export_meta(run)
        student.eval()
        save_checkpoint(final_path, student, run.preprocessing, train=cfg.to_dict(), meta=meta)
        export_deployed(
            out,
            deployed,
            run.preprocessing,
            train=cfg.to_dict(),
            meta=meta | {"deployed": "backbone only (MLP head dropped)"},
        )
        _plot(run.log_path, out / "loss_curves.png")
    done = run.step - run.start_step
    filler = run.data.filler
    return TrainResult(
        out=str(out),
        final_path=str(final_path),
        deployed_path=str(deployed_path),
        steps=run.step,
        steps_per_epoch=run.spe,
        queue_size=run.queue_size,
        student_parameters=count_parameters(student),
        deployed_parameters=deployed_params,
        seconds=seconds,
        samples_per_second=done * cfg.batch_size / seconds if seconds > 0 else 0.0,
        first_terms=run.first_terms,
        last_terms=run.last_terms,
        knn=run.knn_records,
        best_path=str(out / "best.pt") if cfg.keep_best and run.rank == 0 else None,
        data_seconds=run.clock.data,
        teacher_seconds=run.clock.teacher,
        fill=filler.stats.snapshot() if filler is not None else {},
    )


def _preprocessing(recipe: Recipe) -> dict[str, Any]:
    """The ``preprocessing`` dict of an exported checkpoint for views rendered with ``recipe``."""
    return {
        "size": recipe.size,
        "mean": list(recipe.mean),
        "std": list(recipe.std),
        "interpolation": recipe.interpolation,
        "antialias": True,
        "recipe": recipe.to_dict(),
    }


def _save_state(run: _Run, cfg: TrainConfig) -> None:
    """Atomically write the resumable state (``weights_only``-loadable: tensors, plain values),
    with the data plan's rule (a resume under another rule is refused)."""
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "step": run.step,
            "plan": run.data.plan.version,
            "model": {k: v.detach().cpu() for k, v in run.model.state_dict().items()},
            "optimizer": run.optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "config": cfg.to_dict(),
        },
        run.state_path,
    )
