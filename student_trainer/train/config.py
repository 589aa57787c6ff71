"""``TrainConfig``: every knob of a student (or teacher) training run, checked when built."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from store.atomic import atomic_write_text
from store.devices import parse_device_name
from store.errors import ConfigError
from store.precision import parse_precision
from store.targets import parse_targets
from student_trainer.train.methods import MethodSpec, get_method
from student_trainer.train.schedule import scaled_lr

__all__ = [
    "MISSING_CHOICES",
    "MONITOR_SPLITS",
    "RESULT_NEUTRAL_FIELDS",
    "RESUME_FREE_FIELDS",
    "TrainConfig",
]

RESULT_NEUTRAL_FIELDS = (
    "resume",
    "num_workers",
    "progress",
    "checkpoint_every",
    "log_every",  # when the terms are read back, not what they are
    "threads",
    "store_in_ram",  # the same targets, read once instead of per epoch
    "renderer",  # CPU renderers give the same bytes (store.views.batched)
    # the kNN monitor only reads the weights and uses no random state
    "knn_every",
    "keep_best",
    "monitor_dataset",
    "monitor_split",
    "monitor_max_queries",
    "monitor_max_bank",
)
"""``TrainConfig`` fields that never change the trained weights: a finished run with other values
of these is the same run (the demo's runs ledger reuses it)."""

RESUME_FREE_FIELDS = (
    *RESULT_NEUTRAL_FIELDS,
    "stop_at_step",  # where this process stops, not where the schedule ends
    # lazy fill: where targets come from, not what they are (a service's write-through gives
    # the store's targets within fp16 rounding), so a run may resume with or without a service
    "teacher_url",
    "service_store",
    "missing",
    "fill_depth",
)
"""Fields that may differ between a run and its resumption: the result-neutral ones, plus where
this process stops and where lazy fill fetches targets from (resume refuses a change of lazy fill
while the store still lacks targets)."""

MISSING_CHOICES = ("error", "wait", "skip")
"""What lazy fill does when the teacher service cannot deliver a missing target."""

MONITOR_SPLITS = ("test", "val")
"""Held-out splits of the kNN monitor: the dataset's test split, or a validation part of train."""

TARGET_LAYOUTS = ("heads", "concat")
"""= ``store.multi.LAYOUTS`` (restated so importing the config imports no zarr)."""
TARGET_LOSSES = ("mse", "cosine")
"""Per-teacher terms of a student with several teachers (``losses.multi_teacher``)."""

RENDERER_CHOICES = ("auto", "reference", "batched")
"""= ``store.views.RENDERER_CHOICES`` (restated so importing the config imports no torch)."""


@dataclass
class TrainConfig:
    """One training run. ``to_dict()`` is saved beside every artefact (``config.json``)."""

    method: str
    """Training method, a name of ``student_trainer.train.methods.METHODS`` (mocov2, disco,
    seed)."""
    arch: str
    """Student backbone, a key of ``teacher_service.encoders.ARCHS``, or ``timm:NAME``."""
    out: str
    """Output folder: log.jsonl, loss_curves.png, ckpt/, final.pt, deployed.pt, config.json."""
    store: str | None = None
    """Teacher-target store (path or fsspec URL); views are replayed from its stored params."""
    dataset: str | None = None
    """Dataset spec (``store.datasets.open_dataset``: imagefolder:, hfds:, wds:, parquet:, py:, ...)
    for training without a store; with a store, where its images are now (data that moved:
    checked against the store's manifest first)."""
    full_check: bool = False
    """With a store and a dataset: hash every sample of the moved dataset (default: 64 rows)."""
    split: str = "train"
    """Dataset split used with ``dataset`` ("all", "train", "test")."""
    recipe: str | None = None
    """View recipe with ``dataset`` (None: "digits" for mnist5k/digits, else "mocov2")."""
    size: int = 32
    """Rendered view size in px with ``dataset`` (a store fixes its own size)."""
    views: int | None = None
    """Use only the first ``views`` planned views of each store row (V ablations from one store:
    view ``v`` of row ``i`` is keyed by (seed, i, v), so a V=32 store holds the V=8 store's views
    as its first 8); None = all of the store's views."""
    online_teacher: str | None = None
    """Teacher run live on the rendered views instead of reading cached targets (timm:NAME,
    hf:PATH_OR_ID, open_clip:ARCH, py:MODULE:FUNCTION or a checkpoint)."""
    teacher_weights: str | None = None
    """Weights of the online teacher: .safetensors, .pth/.bin state dict or a snapshot folder."""
    teacher_pooling: str | None = None
    """Online ViT teacher: cls, mean or cls+mean instead of the model's own pooling."""
    expect: dict[str, Any] = field(default_factory=dict)
    """Store attributes that must match (dotted path -> value), e.g. {"teacher.sha256": ...}."""
    teacher_url: str | None = None
    """Lazy fill: teacher service (``disco serve``) that computes the store's missing targets on
    demand and writes them through (bearer token from env DISCO_TOKEN); None = the store must
    hold every target the plan uses."""
    service_store: str | None = None
    """Lazy fill: the store's name under the service's store root (None: its folder name)."""
    missing: str = "error"
    """Lazy fill when the service cannot be reached: error (stop with one line), wait (retry,
    showing "waiting for teacher service") or skip (train on the batch's cached samples only)."""
    fill_depth: int = 4
    """Lazy fill: batches whose missing targets are fetched ahead of the DataLoader."""
    accept_render_drift: bool = False
    """Train on a store whose render fingerprint differs from this install's (after verify)."""
    epochs: int = 15
    """Passes over the data."""
    batch_size: int = 128
    """Global batch (split evenly across DDP ranks)."""
    lr: float | None = None
    """Peak learning rate; None = ``base_lr * batch_size / 256`` (MoCo's scaling rule)."""
    base_lr: float = 0.03
    """Learning rate per 256 samples when ``lr`` is None (MoCo-v2: 0.03)."""
    weight_decay: float = 1e-4
    """SGD weight decay."""
    sgd_momentum: float = 0.9
    """SGD momentum."""
    warmup_epochs: float = 1.0
    """Linear warm-up length in epochs before the cosine decay."""
    key_momentum: float = 0.999
    """MoCo key-encoder EMA momentum m (k <- m k + (1 - m) q)."""
    temperature: float = 0.2
    """InfoNCE temperature τ (MoCo-v2: 0.2); also SEED's student temperature."""
    queue_size: int = 65536
    """Requested queue length K; capped at N - global batch (see ``effective_queue_size``)."""
    prefill_queue: bool = True
    """Fill the queue with real key embeddings before step 1 (random ones collapse small runs)."""
    head_hidden: int = 2048
    """Student MLP hidden width (DisCo's Distilling-BottleNeck fix: 2048)."""
    head_out: int | None = None
    """Embedding width D; None = the store's teacher dim (or 128 without a teacher)."""
    head_bn: bool = True
    """BatchNorm after the head's hidden layer (needed against collapse at small scale)."""
    bn_groups: int = 0
    """Head BN groups (the one-device stand-in for shuffle-BN); 0 = per-rank batch // 32, >= 1."""
    shuffle_keys: bool = True
    """Shuffle the key batch before the key encoder (across ranks under DDP), unshuffle after."""
    small_stem: bool | None = None
    """3x3 stride-1 stem without max-pool; None = on for views of 64 px or less."""
    width: int | None = None
    """ResNet base width; None = the architecture's default."""
    distill_weight: float = 8.0
    """λ of the DisCo term (per view, batch-mean); DisCo-pytorch's sum over 32/GPU equals λ = 32."""
    targets: str | None = None
    """Teachers of a store of several to distil from, NAME[:WEIGHT],NAME[:WEIGHT]: one MLP head
    per teacher on the backbone, loss = weighted mean of the teachers' terms; None = the store's
    only teacher through the student's own head (as before)."""
    target_layout: str = "heads"
    """With targets: "heads" (one head per teacher) or "concat" (one head on the concatenated
    targets, scaled to unit norm: a baseline)."""
    target_loss: str = "mse"
    """Per-teacher term with targets (heads): "mse" (DisCo's ||ŝ - t||² on the L2-normalised head
    output) or "cosine" (UNIC: 0.5 (1 - cos) + 0.5 smooth-L1 on the raw head output)."""
    teacher_drop: float = 0.0
    """Teacher dropping as in UNIC, with targets (heads): per image and view, every teacher but
    the one with the largest loss is dropped with this probability (seeded by the step)."""
    seed_teacher_temperature: float = 1e-4
    """SEED's teacher temperature τ_t (SEED's default 1e-4); τ_s is ``temperature``."""
    teacher_queue_size: int | None = None
    """SEED teacher-queue length; None = ``effective_queue_size``."""
    symmetric: bool = False
    """Symmetric loss: each view is the query once and the key once per step (InfoNCE = mean of
    both directions) and the keys of both views are enqueued; for SEED (whose loss already uses
    both views) both views' teacher embeddings are enqueued. About 2x the key-encoder forwards."""
    knn_every: int = 0
    """kNN monitor: weighted 20-NN (cosine, T 0.07) of the query backbone on a held-out split every
    N epochs (and at epoch 0 and the last step), logged to log.jsonl; 0 = off."""
    keep_best: bool = False
    """Write best.pt (like final.pt) at each new best kNN monitor figure (needs knn_every)."""
    monitor_dataset: str | None = None
    """Dataset spec the monitor evaluates on (bank: its train split); None = the training data."""
    monitor_split: str = "test"
    """Monitor queries: "test" (the test split) or "val" (the last 20 % of the train split, with
    the first 80 % as bank; use it to choose settings without looking at the test split)."""
    monitor_max_queries: int | None = None
    """Evaluate the monitor on at most this many queries (an evenly spaced subset); None = all."""
    monitor_max_bank: int | None = None
    """Monitor bank of at most this many images (evenly spaced; lowers the figure); None = all."""
    seed: int = 0
    """Seed of the model init and of every sampling decision (data order, view choice, shuffles)."""
    num_workers: int | None = None
    """DataLoader worker processes that decode + render views (0 = in the main process; None = 2
    on CPU, the host's cores per GPU process minus one (at most 16) on CUDA)."""
    shuffle_buffer: int = 8192
    """Shuffle-buffer length in samples when streaming store blocks."""
    store_in_ram: bool = False
    """Read the store's targets, written mask and params into RAM once before training
    (``store.memory.InMemoryStore``: N * V * (4 D + 4 P + 1) bytes) instead of streaming every
    shard from the store each epoch; same targets, same order. Only with ``store``."""
    cache_images: bool | None = None
    """Keep decoded images in RAM; None = when the decoded dataset is under 2 GiB."""
    checkpoint_every: int = 200
    """Write ``ckpt/last.pt`` every this many steps (and at the end)."""
    log_every: int = 20
    """Read the loss terms back from the device every this many steps (one sync, and under DDP
    one all-reduce of the finite check, per interval instead of per step) and append their
    per-step records to ``log.jsonl``; also before every checkpoint, monitor run and at the end."""
    """Write ``ckpt/last.pt`` every this many steps (and at the end)."""
    resume: bool = False
    """Continue from ``out/ckpt/last.pt`` when it exists (the config must match)."""
    stop_at_step: int | None = None
    """Stop after this many steps (schedule unchanged), e.g. to test or split a run."""
    device: str = "auto"
    """"auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    threads: int | None = None
    """torch CPU threads of the training process (None: torch's default; 1 is often faster on
    small, shared CPUs)."""
    precision: str = "fp32"
    """Compute precision: fp32, or CUDA autocast bf16/fp16 (an error on CPU)."""
    amp: bool = False
    """Deprecated: --precision bf16."""
    progress: bool = True
    """Show a rich progress bar."""
    renderer: str = "auto"
    """View renderer: auto (batched on CUDA, per-view reference in workers on CPU), reference or
    batched (workers only decode; views rendered at once on the device)."""

    def __post_init__(self) -> None:
        self.precision = parse_precision(self.precision)
        if self.amp:  # the old flag: one deprecation line, then the one vocabulary
            self.precision, self.amp = parse_precision(True, old_flag="--amp"), False
        parse_device_name(self.device)
        self._check_sources()
        self._check_values()

    def _check_sources(self) -> None:
        """Where data and targets come from: store, dataset, online teacher, lazy fill."""
        spec = get_method(self.method)
        if self.store is None and self.dataset is None:
            raise ConfigError("give a store or a dataset (or both: the store's data moved)")
        if self.full_check and (self.store is None or self.dataset is None):
            raise ConfigError("full_check checks a moved dataset: it needs a store and a dataset")
        if spec.uses_teacher and self.store is None and self.online_teacher is None:
            raise ConfigError(
                f"method {self.method!r} needs teacher targets: give a store or an online teacher"
            )
        if self.views is not None and (self.store is None or self.views < 2):
            raise ConfigError("views needs a store and must be >= 2 (a pair of distinct views)")
        if self.teacher_url is not None:
            if self.store is None or not spec.uses_teacher or self.online_teacher is not None:
                raise ConfigError(
                    "teacher_url (lazy fill) needs a store and a method with cached teacher "
                    "targets (disco, seed), without an online teacher"
                )
            if not self.teacher_url.startswith(("http://", "https://")):
                raise ConfigError(
                    f"teacher_url must be http(s)://HOST:PORT, got {self.teacher_url!r}"
                )
        elif self.service_store is not None:
            raise ConfigError("service_store needs teacher_url (lazy fill)")
        if self.missing not in MISSING_CHOICES:
            raise ConfigError(
                f"missing must be one of {', '.join(MISSING_CHOICES)}, got {self.missing!r}"
            )
        if self.store_in_ram and (self.store is None or self.teacher_url is not None):
            raise ConfigError(
                "store_in_ram needs a store, and cannot be combined with teacher_url (lazy fill "
                "reads each shard as the service fills it)"
            )

    def _check_values(self) -> None:
        """Ranges and choices of the numeric and named settings."""
        if self.split not in ("all", "train", "test"):
            raise ConfigError(f"split must be all, train or test, got {self.split!r}")
        positive_ints = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "queue_size": self.queue_size,
            "head_hidden": self.head_hidden,
            "size": self.size,
            "shuffle_buffer": self.shuffle_buffer,
            "checkpoint_every": self.checkpoint_every,
            "log_every": self.log_every,
            "fill_depth": self.fill_depth,
        }
        for name, value in positive_ints.items():
            if value < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
        if self.head_out is not None and self.head_out < 1:
            raise ConfigError(f"head_out must be >= 1, got {self.head_out}")
        if self.bn_groups < 0 or (self.num_workers is not None and self.num_workers < 0):
            raise ConfigError("bn_groups and num_workers must be >= 0")
        if self.renderer not in RENDERER_CHOICES:
            raise ConfigError(
                f"unknown renderer {self.renderer!r}; valid: {', '.join(RENDERER_CHOICES)}"
            )
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.key_momentum < 1.0:
            raise ConfigError(f"key_momentum must be in [0, 1), got {self.key_momentum}")
        if self.temperature <= 0 or self.seed_teacher_temperature <= 0:
            raise ConfigError("temperatures must be > 0")
        if self.warmup_epochs < 0 or self.weight_decay < 0 or self.distill_weight < 0:
            raise ConfigError("warmup_epochs, weight_decay and distill_weight must be >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.stop_at_step is not None and self.stop_at_step < 1:
            raise ConfigError(f"stop_at_step must be >= 1, got {self.stop_at_step}")
        if self.knn_every < 0:
            raise ConfigError(f"knn_every must be >= 0, got {self.knn_every}")
        if self.keep_best and self.knn_every == 0:
            raise ConfigError("keep_best needs the kNN monitor: set knn_every >= 1")
        if self.monitor_split not in MONITOR_SPLITS:
            raise ConfigError(f"monitor_split must be test or val, got {self.monitor_split!r}")
        if self.monitor_max_queries is not None and self.monitor_max_queries < 1:
            raise ConfigError(f"monitor_max_queries must be >= 1, got {self.monitor_max_queries}")
        if self.monitor_max_bank is not None and self.monitor_max_bank < 20:
            raise ConfigError(f"monitor_max_bank must be >= 20 (k), got {self.monitor_max_bank}")
        if self.teacher_queue_size is not None and self.teacher_queue_size < 1:
            raise ConfigError(f"teacher_queue_size must be >= 1, got {self.teacher_queue_size}")
        self._check_targets(get_method(self.method))

    def _check_targets(self, spec: MethodSpec) -> None:
        if self.target_layout not in TARGET_LAYOUTS:
            raise ConfigError(
                f"target_layout must be one of {', '.join(TARGET_LAYOUTS)}, got "
                f"{self.target_layout!r}"
            )
        if self.target_loss not in TARGET_LOSSES:
            raise ConfigError(
                f"target_loss must be one of {', '.join(TARGET_LOSSES)}, got {self.target_loss!r}"
            )
        if not 0.0 <= self.teacher_drop < 1.0:
            raise ConfigError(f"teacher_drop must be in [0, 1), got {self.teacher_drop}")
        if self.targets is None:
            if self.teacher_drop or self.target_loss != "mse" or self.target_layout != "heads":
                raise ConfigError("target_layout, target_loss and teacher_drop need targets")
            return
        parse_targets(self.targets)
        if self.store is None or self.method not in ("disco", "seed"):
            raise ConfigError("targets needs a store and the disco or seed method")
        if self.method == "seed" and (self.teacher_drop or self.target_loss != "mse"):
            raise ConfigError("seed with targets: no teacher_drop or target_loss")
        if self.online_teacher is not None:
            raise ConfigError("targets reads cached targets: no online_teacher")
        if self.teacher_url is not None and (
            len(self.target_list) != 1 or self.target_layout != "heads"
        ):
            raise ConfigError("lazy fill (teacher_url) fills one teacher: --targets NAME")
        if self.target_layout == "concat" and (self.teacher_drop or self.target_loss != "mse"):
            raise ConfigError("target_layout concat is plain DisCo: no teacher_drop/target_loss")

    @property
    def target_list(self) -> list[tuple[str, float]]:
        """``targets`` parsed: [(name, weight)], empty without targets."""
        return [] if self.targets is None else parse_targets(self.targets)

    @property
    def peak_lr(self) -> float:
        """The learning rate at the end of warm-up (``lr`` or the batch-scaled ``base_lr``)."""
        return self.lr if self.lr is not None else scaled_lr(self.base_lr, self.batch_size)

    @property
    def spec(self) -> MethodSpec:
        """The method's registry entry (what it uses: contrast, teacher targets, queues)."""
        return get_method(self.method)

    def resolved_recipe(self) -> str:
        """Recipe name used with ``dataset`` (digit-like built-ins get "digits")."""
        if self.recipe is not None:
            return self.recipe
        name = (self.dataset or "").split(":", 1)[0]
        return "digits" if name in ("mnist5k", "digits") else "mocov2"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-safe dict of every field."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise ``ConfigError`` naming them."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown TrainConfig keys: {', '.join(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        """Write ``to_dict()`` as indented JSON to ``path`` (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
