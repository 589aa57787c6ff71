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
before step 1 and every N epochs (rank 0; the figure is broadcast), logs it to ``log.jsonl``
(records with a ``knn_weighted`` key instead of ``lr``/losses), draws it on the curves and, with
``keep_best``, writes ``best.pt`` at each new best. It uses no random state, so it does not change
the weights.

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
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from store.datasets import open_dataset
from store.embedding_store import EmbeddingStore
from store.errors import CheckpointError, ConfigError, DiscoError
from store.manifest import build_manifest
from store.memory import InMemoryStore
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
from teacher_service.encoders import TIMM_PREFIX, count_parameters
from teacher_service.runtime import (
    autocast,
    default_workers,
    prepare_model,
    resolve_device,
    to_device,
)
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
    """kNN monitor records of the whole run (rank 0: full records; other ranks: the figure)."""
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
        dataset = open_dataset(manifest.dataset)
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


def _all_ranks_finite(terms: dict[str, float], world: int, device: torch.device) -> bool:
    """True when every loss term is finite on every rank (so all ranks stop together)."""
    finite = all(np.isfinite(v) for v in terms.values())
    if world == 1:
        return finite
    flag = torch.tensor([1.0 if finite else 0.0], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() > 0)


def _check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    mine = cfg.to_dict()
    # a field added after the state was written counts as its default (e.g. symmetric=False)
    defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
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
    path.write_text("".join(line + "\n" for line in kept))


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


def _timed(items: Iterable[PairBatch], clock: dict[str, float]) -> Iterator[PairBatch]:
    """``items``, adding the seconds spent waiting for each one to ``clock["data"]``."""
    it = iter(items)
    while True:
        start = time.perf_counter()
        try:
            item = next(it)
        except StopIteration:
            return
        finally:
            clock["data"] += time.perf_counter() - start
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
    # --- 1. set-up --------------------------------------------------------------------------
    device = resolve_device(cfg.device)  # cuda:LOCAL_RANK under torchrun, set as current
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
    batch = cfg.batch_size // world
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        return _train(cfg, step_hook, device, rank, world, batch, out)
    finally:
        if created_group:
            dist.destroy_process_group()


def _train(
    cfg: TrainConfig,
    step_hook: StepHook | None,
    device: torch.device,
    rank: int,
    world: int,
    batch: int,
    out: Path,
) -> TrainResult:
    # Batched renderer: workers only decode; views are rendered at once on `device` (same bytes
    # on CPU as the workers' per-view render; within store.views.RENDER_BOUND on CUDA).
    data = _open_data(cfg, rank, world, batch, resolve_renderer(cfg.renderer, device))
    teacher: TeacherModel | None = None
    if cfg.online_teacher is not None and cfg.spec.uses_teacher:
        teacher = load_teacher(
            cfg.online_teacher, cfg.teacher_weights, cfg.teacher_pooling, device=device
        ).model
        teacher.requires_grad_(False)  # frozen, visibly
        teacher.eval()
        teacher.check_size(data.recipe.size)
        prepare_model(teacher, device)  # see runtime.prepare_model
        data.teacher_dim = teacher.embed_dim
    embed_dim = cfg.head_out or data.teacher_dim or 128
    if data.teacher_dim is not None and embed_dim != data.teacher_dim:
        raise ConfigError(f"head_out {embed_dim} != the teacher's embedding dim {data.teacher_dim}")

    torch.manual_seed(cfg.seed)
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
    plan = data.plan
    queue_size = effective_queue_size(cfg.queue_size, plan.num_samples, cfg.batch_size)
    teacher_queue = effective_queue_size(
        cfg.teacher_queue_size or queue_size, plan.num_samples, cfg.batch_size
    )
    model = MoCo(
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
    prepare_model(model, device)  # see runtime.prepare_model
    model.train()
    preprocessing = _preprocessing(data.recipe)
    monitor: KnnMonitor | None = None
    if cfg.knn_every and rank == 0:
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
    sampler = EpochBatchSampler(plan, data.filler)
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers(device)
    loader: DataLoader[Any] = DataLoader(
        data.renderer,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate_pairs,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
    )

    amp = autocast(device, "bfloat16" if cfg.amp else "float32")  # no-op on CPU

    def targets(b: PairBatch) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if teacher is not None:
            entered = time.perf_counter()
            with amp:  # the online teacher gets the same bf16 flag as a precompute would
                t = _teacher_targets(
                    teacher, to_device(b.view1, device), to_device(b.view2, device), data.recipe
                )
            clock["teacher"] += time.perf_counter() - entered
            return t
        if data.use_cached_targets:
            assert b.target1 is not None and b.target2 is not None
            return to_device(b.target1, device), to_device(b.target2, device)
        return None, None

    # --- 2. resume, or fill the queues with real keys ----------------------------------------
    knn_records: list[dict[str, Any]] = []
    # training wall seconds (without the monitor's) of earlier processes of this run, and of the
    # monitor in this one: logged as "seconds" so runs can be compared at equal training time
    # (and, of the loop's time, waiting for batches and running an online teacher)
    clock = {"before": 0.0, "monitor": 0.0, "start": time.perf_counter()}
    clock |= {"data": 0.0, "teacher": 0.0}

    def train_seconds() -> float:
        return clock["before"] + time.perf_counter() - clock["start"] - clock["monitor"]

    spe = plan.steps_per_epoch
    total_steps = cfg.epochs * spe
    warmup = round(cfg.warmup_epochs * spe)
    state_path = out / "ckpt" / "last.pt"
    log_path = out / "log.jsonl"
    step = 0
    if cfg.resume and state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{state_path} is not a {STATE_FORMAT} training state")
        _check_resumable(state["config"], cfg)
        was_lazy = state["config"].get("teacher_url") is not None
        if was_lazy != (cfg.teacher_url is not None) and not data.complete:
            raise ConfigError(
                "cannot resume: the run was started "
                + ("with" if was_lazy else "without")
                + " lazy fill (teacher_url) and the store still lacks targets, so the data "
                "plan would differ; resume it "
                + ("with --teacher-url" if was_lazy else "without --teacher-url")
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"].cpu())
        step = int(state["step"])
        if rank == 0:
            _log_lines(log_path, keep_until=step)
            steps_logged, knn_logged = _read_log(log_path)
            knn_records.extend(knn_logged)  # the best so far survives a resume
            clock["before"] = float(steps_logged[-1].get("seconds", 0.0)) if steps_logged else 0.0
    else:
        if rank == 0 and log_path.exists():
            log_path.unlink()
        if cfg.prefill_queue:
            with torch.no_grad():
                for i, b in enumerate(_batches(loader, sampler, 0, 0, TAG_PREFILL, device)):
                    if model.queue_full():
                        break
                    keys = None
                    if model.spec.uses_contrast:
                        keys = model.encode_keys(
                            to_device(b.view2, device), _step_seed(cfg.seed, i, 3)
                        )
                    t1, _ = targets(b)
                    model.enqueue(keys, t1)
    if rank == 0:
        cfg.save(out / "config.json")

    def export_meta() -> dict[str, Any]:
        return {
            "method": cfg.method,
            "steps": step,
            "total_steps": total_steps,
            "queue_size": queue_size,
            "head_bn": cfg.head_bn,
            "bn_groups": encoder_cfg.bn_groups,
            "shuffle_keys": cfg.shuffle_keys,
            "prefill_queue": cfg.prefill_queue,
            "symmetric": cfg.symmetric,
            "world_size": world,
            "student_parameters": count_parameters(student),
            "deployed_parameters": count_parameters(deployed_backbone(student)),
            "last_terms": last_terms,
        }

    def run_monitor(epoch_done: int, log: Any) -> None:
        """kNN monitor after ``epoch_done`` epochs (rank 0), logged; best.pt on a new best."""
        record: dict[str, Any] = {}
        entered = time.perf_counter()
        if monitor is not None:
            best = best_record(knn_records)
            record = {"step": step, "epoch": epoch_done, "seconds": round(train_seconds(), 3)}
            record |= monitor.evaluate(student)
            knn_records.append(record)
            if log is not None:
                log.write(json.dumps(record) + "\n")
                log.flush()
            if cfg.keep_best and (best is None or record["knn_weighted"] > best["knn_weighted"]):
                meta = export_meta() | {"epoch": epoch_done, "knn": record}
                save_checkpoint(
                    out / "best.pt", student, preprocessing, train=cfg.to_dict(), meta=meta
                )
        if world > 1:  # every rank learns the figure (and waits for rank 0's evaluation)
            figure = torch.tensor(
                [record.get("knn_weighted", 0.0)], dtype=torch.float64, device=device
            )
            dist.broadcast(figure, src=0)
            if rank:
                knn_records.append(
                    {"step": step, "epoch": epoch_done, "knn_weighted": figure.item()}
                )
        clock["monitor"] += time.perf_counter() - entered

    ddp: torch.nn.Module = model
    if world > 1:
        ddp = DistributedDataParallel(model, broadcast_buffers=False)

    # --- 3. the loop ----------------------------------------------------------------------------
    stop = min(total_steps, cfg.stop_at_step or total_steps)
    first_terms: dict[str, float] = {}
    last_terms: dict[str, float] = {}
    started, start_step = time.perf_counter(), step
    clock["start"], clock["monitor"], clock["data"], clock["teacher"] = started, 0.0, 0.0, 0.0
    filler = data.filler

    def save_progress() -> None:
        if rank == 0 and step > start_step:
            _save_state(state_path, model, optimizer, step, cfg)

    columns = (
        TextColumn("[bold]train {task.fields[method]}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.4f}"),
        *([TextColumn("{task.fields[fill]}")] if filler is not None else []),
        TimeRemainingColumn(),
    )

    def fill_text() -> str:
        if filler is None:
            return ""
        return filler.link.status or filler.stats.describe()

    with (
        Progress(*columns, disable=not (cfg.progress and rank == 0)) as bar,
        open(log_path, "a") if rank == 0 else contextlib.nullcontext() as log,
    ):
        task = bar.add_task(
            "train", total=stop, completed=step, method=cfg.method, loss=0.0, fill=fill_text()
        )
        if cfg.knn_every and step == 0:
            run_monitor(0, log)  # the initial weights: what training has to beat
        while step < stop:
            epoch, skip = divmod(step, spe)
            batches = _batches(loader, sampler, epoch, skip, device=device)
            for b in _timed(_saving_on_fill_error(batches, save_progress), clock):
                lr = cosine_lr(step, total_steps, cfg.peak_lr, warmup)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.momentum_update(cfg.key_momentum)
                t1, t2 = targets(b)
                with amp:
                    output: StepOutput = ddp(
                        to_device(b.view1, device),
                        to_device(b.view2, device),
                        t1,
                        t2,
                        shuffle_seed=_step_seed(cfg.seed, step),
                    )
                terms = {"loss": float(output.loss.detach())} | {
                    k: float(v) for k, v in output.terms.items()
                }
                if not _all_ranks_finite(terms, world, device):
                    raise NonFiniteLossError(
                        f"non-finite loss at step {step + 1} (epoch {epoch}): {terms}; "
                        f"try a lower --lr than {lr:.4g}"
                    )
                optimizer.zero_grad(set_to_none=True)
                output.loss.backward()
                optimizer.step()
                model.enqueue(output.keys, output.teacher_keys)
                step += 1
                first_terms = first_terms or terms
                last_terms = terms
                if step_hook is not None:
                    step_hook(step, b, output)
                if log is not None:
                    record = {"step": step, "epoch": epoch, "lr": lr} | terms
                    record["seconds"] = round(train_seconds(), 3)
                    if filler is not None:
                        record |= {"batch": len(b.rows)} | filler.stats.snapshot()
                    log.write(json.dumps(record) + "\n")
                    log.flush()
                bar.update(task, completed=step, loss=terms["loss"], fill=fill_text())
                epoch_done, into_epoch = divmod(step, spe)
                due = epoch_done % cfg.knn_every == 0 if cfg.knn_every else False
                if cfg.knn_every and into_epoch == 0 and (due or step == total_steps):
                    run_monitor(epoch_done, log)
                if rank == 0 and (step % cfg.checkpoint_every == 0 or step == stop):
                    _save_state(state_path, model, optimizer, step, cfg)
                if step >= stop:
                    break
    seconds = time.perf_counter() - started - clock["monitor"]
    del loader  # shuts persistent workers down

    # --- 4. export ----------------------------------------------------------------------------
    final_path, deployed_path = out / "final.pt", out / "deployed.pt"
    deployed = deployed_backbone(student)
    deployed_params = count_parameters(deployed)
    if rank == 0:
        meta = export_meta()
        student.eval()
        save_checkpoint(final_path, student, preprocessing, train=cfg.to_dict(), meta=meta)
        export_deployed(
            out,
            deployed,
            preprocessing,
            train=cfg.to_dict(),
            meta=meta | {"deployed": "backbone only (MLP head dropped)"},
        )
        _plot(log_path, out / "loss_curves.png")
    done = step - start_step
    return TrainResult(
        out=str(out),
        final_path=str(final_path),
        deployed_path=str(deployed_path),
        steps=step,
        steps_per_epoch=spe,
        queue_size=queue_size,
        student_parameters=count_parameters(student),
        deployed_parameters=deployed_params,
        seconds=seconds,
        samples_per_second=done * cfg.batch_size / seconds if seconds > 0 else 0.0,
        first_terms=first_terms,
        last_terms=last_terms,
        knn=knn_records,
        best_path=str(out / "best.pt") if cfg.keep_best and rank == 0 else None,
        data_seconds=clock["data"],
        teacher_seconds=clock["teacher"],
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


def _save_state(
    path: Path, model: MoCo, optimizer: torch.optim.Optimizer, step: int, cfg: TrainConfig
) -> None:
    """Atomically write the resumable state (``weights_only``-loadable: tensors, plain values)."""
    atomic_torch_save(
        {
            "format": STATE_FORMAT,
            "step": step,
            "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optimizer.state_dict(),
            "rng_torch": torch.get_rng_state(),
            "config": cfg.to_dict(),
        },
        path,
    )
