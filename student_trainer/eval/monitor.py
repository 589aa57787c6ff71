"""The kNN monitor of ``disco train --knn-every N``: ``disco eval``'s weighted 20-NN in training.

Every N epochs (and before the first step and after the last one) the query encoder's backbone
features of un-augmented images are extracted with
:func:`student_trainer.eval.features.extract_features`
and scored with :func:`student_trainer.eval.evaluate.score`, exactly as ``disco eval`` scores a
checkpoint (same rendering ``render_center`` with the checkpoint's recipe, same FAISS cosine search,
same weighted vote k 20, T 0.07). Only the feature model differs: :class:`LiveFeatures` wraps the
module being trained instead of a file, and nothing is cached.

Held-out splits (:class:`MonitorData`): ``test`` = bank train split / queries test split (as
``disco eval``); ``val`` = the train split cut 80/20 in its permutation order (bank / queries), to
choose settings without looking at the test split. The training images of the val queries are seen
(unlabelled) by self-supervised training, as the bank images are; their labels never are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from store.datasets import ImageDataset, open_dataset
from store.errors import ConfigError
from store.runtime import to_device
from store.views import Recipe, render_center
from student_trainer.eval.evaluate import check_labelled, score
from student_trainer.eval.features import (
    FeatureSet,
    SplitFeatures,
    _eval_recipe,
    extract_features,
)
from teacher_service.encoders import Encoder

__all__ = [
    "MONITOR_K",
    "MONITOR_TEMPERATURE",
    "VAL_FRACTION",
    "KnnMonitor",
    "LiveFeatures",
    "MonitorData",
    "best_record",
]

MONITOR_K = 20
"""Neighbours of the weighted vote (DESIGN §8)."""
MONITOR_TEMPERATURE = 0.07
"""Temperature of the weighted vote ``exp(sim / T)`` (DINO)."""
VAL_FRACTION = 0.2
"""Share of the train split held out as monitor queries with ``monitor_split="val"``."""
LOGGED = ("knn_weighted", "nn1", "knn_majority")
"""Metrics of :func:`student_trainer.eval.evaluate.score` the monitor logs (fractions in [0, 1])."""


class MonitorData(ImageDataset):
    """A dataset whose "train"/"test" splits are the monitor's bank and queries.

    Images, keys, labels and classes are ``base``'s; only :meth:`split_indices` differs, so
    :func:`extract_features` reads bank = ``bank``, queries = ``queries`` (dataset indices, int64).
    """

    def __init__(
        self, base: ImageDataset, bank: np.ndarray, queries: np.ndarray, spec: str
    ) -> None:
        self.base = base
        self.spec = spec
        self.keys = base.keys
        self.labels = base.labels
        self.classes = base.classes
        self._splits = {
            "train": np.asarray(bank, dtype=np.int64),
            "test": np.asarray(queries, dtype=np.int64),
        }
        self._splits["all"] = np.concatenate([self._splits["train"], self._splits["test"]])

    @classmethod
    def held_out(
        cls,
        base: ImageDataset,
        split: str,
        max_queries: int | None = None,
        max_bank: int | None = None,
    ) -> MonitorData:
        """Bank/queries of ``split`` ("test" or "val", see the module docstring) of ``base``.

        ``max_queries``/``max_bank`` keep that many queries/bank images, evenly spaced over the
        split's (random) permutation order, the same ones every time. A smaller bank lowers the
        figure (fewer close neighbours), so compare subsampled figures only with each other.
        """
        train = base.split_indices("train")
        if split == "test":
            bank, queries = train, base.split_indices("test")
        elif split == "val":
            cut = len(train) - max(1, round(VAL_FRACTION * len(train)))
            bank, queries = train[:cut], train[cut:]
        else:
            raise ConfigError(f"monitor split must be test or val, got {split!r}")
        queries, bank = _subsample(queries, max_queries), _subsample(bank, max_bank)
        if len(bank) < MONITOR_K or len(queries) == 0:
            raise ConfigError(
                f"dataset {base.spec!r} is too small for the kNN monitor: {len(bank)} bank images "
                f"(need >= {MONITOR_K}), {len(queries)} queries"
            )
        sizes = []
        if max_bank is not None:
            sizes.append(f"bank {len(bank)}")
        if max_queries is not None:
            sizes.append(f"queries {len(queries)}")
        suffix = f"{split}[{', '.join(sizes)}]" if sizes else split
        return cls(base, bank, queries, f"{base.spec}#{suffix}")

    def load_with_hash(self, i: int) -> tuple[np.ndarray, str]:
        """Sample ``i`` of the base dataset: ((H, W, 3) uint8, sha256 hex)."""
        return self.base.load_with_hash(i)

    def load(self, i: int) -> np.ndarray:
        """Sample ``i`` of the base dataset as (H, W, 3) uint8."""
        return self.base.load(i)

    def share(self, rank: int, world: int) -> MonitorData:
        """Rank ``rank``'s share of ``world``: every ``world``-th bank image and query from
        ``rank`` on (same spec, images and labels)."""
        bank, queries = self._splits["train"], self._splits["test"]
        return MonitorData(self.base, bank[rank::world], queries[rank::world], self.spec)

    def split_indices(self, split: str) -> np.ndarray:
        """ "train" = bank, "test" = queries, "all" = both (dataset indices, int64)."""
        if split not in self._splits:
            raise ConfigError(f"unknown split {split!r}; valid: all, train, test")
        return self._splits[split]


def _subsample(indices: np.ndarray, count: int | None) -> np.ndarray:
    """At most ``count`` of ``indices``, evenly spaced (all of them when ``count`` is None)."""
    if count is None or count >= len(indices):
        return indices
    return indices[np.unique(np.linspace(0, len(indices) - 1, count).round().astype(np.int64))]


class LiveFeatures:
    """Feature model (``student_trainer.eval.features.FeatureModel``) of an encoder being trained.

    ``prepare`` renders like :class:`student_trainer.eval.features.EncoderFeatures` does for the
    checkpoint this encoder would be exported as (``recipe``: ``_eval_recipe`` of that checkpoint's
    preprocessing); ``embed`` runs ``encoder(x, output="feature")`` -> (B, F) float32 on the CPU.
    The caller puts the encoder in eval mode (BatchNorm running statistics).
    """

    method = "live"

    def __init__(self, encoder: Encoder, recipe: Recipe, device: torch.device) -> None:
        self.encoder = encoder
        self.recipe = recipe
        self.device = device
        self.name = "query encoder"

    def identity(self) -> dict[str, Any]:
        """Not cacheable (the weights change every step); kind + recipe for completeness."""
        return {"kind": "live", "recipe": self.recipe.to_dict()}

    def prepare(self, image: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, S, S) float32 via ``store.views.render_center``."""
        return render_center(image, self.recipe)

    def embed(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) float32 -> (B, F) float32 backbone features on the CPU."""
        with torch.inference_mode():
            out = self.encoder(to_device(batch, self.device), output="feature")
        assert isinstance(out, torch.Tensor)
        return out.float().cpu()


@dataclass
class KnnMonitor:
    """Scores an encoder on ``data`` (bank/queries) with ``disco eval``'s kNN code.

    ``recipe``: the eval rendering (see :class:`LiveFeatures`); ``device``: where the encoder runs;
    ``backend``: the kNN search backend ("faiss" or "brute", identical results).
    """

    data: MonitorData
    recipe: Recipe
    device: torch.device
    backend: str = "faiss"
    batch_size: int = 256

    @classmethod
    def create(
        cls,
        dataset: str,
        split: str,
        preprocessing: dict[str, Any],
        device: torch.device,
        max_queries: int | None = None,
        max_bank: int | None = None,
    ) -> KnnMonitor:
        """Monitor on ``dataset`` (a spec) ``split`` for a checkpoint with ``preprocessing``."""
        data = MonitorData.held_out(open_dataset(dataset), split, max_queries, max_bank)
        recipe = _eval_recipe(preprocessing, int(preprocessing["size"]))
        return cls(data, recipe, device)

    def evaluate(self, encoder: Encoder, rank: int = 0, world: int = 1) -> dict[str, Any]:
        """Weighted 20-NN etc. of ``encoder``'s backbone on the held-out split.

        Returns {"knn_weighted", "nn1", "knn_majority": fractions in [0, 1], "knn_seconds": wall
        seconds, "monitor": the split's name, "n_bank", "n_queries"}. The encoder is evaluated in
        eval mode and returned to its previous mode; no random number generator is used.

        Under DDP (``world`` > 1, every rank calls it): each rank embeds its share of the bank
        and queries (:meth:`MonitorData.share`), the features are all-gathered and put back in
        split order, and every rank scores them, so each gets the one-process record and none
        waits for more than its own share of the embedding.
        """
        started = time.perf_counter()
        if world > 1 and len(self.data.split_indices("test")) < world:
            raise ConfigError(f"the kNN monitor needs at least {world} queries (one per rank)")
        was_training = encoder.training
        encoder.eval()
        try:
            fs = extract_features(
                LiveFeatures(encoder, self.recipe, self.device),
                self.data.share(rank, world) if world > 1 else self.data,
                batch_size=self.batch_size,
                progress=False,
                use_cache=False,
            )
        finally:
            encoder.train(was_training)
        if world > 1:
            fs = FeatureSet(
                _gather_split(fs.train, self.data.split_indices("train"), world, self.device),
                _gather_split(fs.test, self.data.split_indices("test"), world, self.device),
                fs.skipped, None, from_cache=False,
            )  # fmt: skip
        check_labelled(fs, self.data.spec)
        scores, _ = score(fs, MONITOR_K, MONITOR_TEMPERATURE, self.backend, str(self.device))
        record: dict[str, Any] = {name: scores[name] for name in LOGGED}
        record.update(
            knn_seconds=time.perf_counter() - started,
            monitor=self.data.spec,
            n_bank=int(fs.train.labels.size),
            n_queries=int(fs.test.labels.size),
        )
        return record


def _gather_split(
    mine: SplitFeatures, order: np.ndarray, world: int, device: torch.device
) -> SplitFeatures:
    """Every rank's features of one split (all-gathered, padded to the longest share) in the
    split's order ``order`` (dataset indices), as one process would have extracted them."""
    on = device if dist.get_backend() == "nccl" else torch.device("cpu")
    count = torch.tensor([len(mine.indices)], dtype=torch.int64, device=on)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    longest, dim = max(sizes), mine.features.shape[1]

    def gather(part: np.ndarray) -> list[np.ndarray]:
        local = torch.from_numpy(np.ascontiguousarray(part)).to(on)
        padded = torch.zeros((longest, *part.shape[1:]), dtype=local.dtype, device=on)
        padded[: len(part)] = local
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded)
        return [o[:n].cpu().numpy() for o, n in zip(out, sizes, strict=True)]

    feats = np.concatenate(gather(mine.features.astype(np.float32).reshape(-1, dim)))
    labels = np.concatenate(gather(mine.labels.astype(np.int64)))
    indices = np.concatenate(gather(mine.indices.astype(np.int64)))
    position = np.empty(int(order.max()) + 1, dtype=np.int64)
    position[order] = np.arange(len(order))
    back = np.argsort(position[indices], kind="stable")
    return SplitFeatures(
        features=feats[back],
        labels=labels[back],
        indices=indices[back],
    )


def best_record(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The record with the highest ``knn_weighted`` (the earliest among equals), or None."""
    best: dict[str, Any] | None = None
    for r in records:
        if r.get("knn_weighted") is None:
            continue
        if best is None or float(r["knn_weighted"]) > float(best["knn_weighted"]):
            best = r
    return best
