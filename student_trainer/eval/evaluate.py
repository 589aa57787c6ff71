"""Evaluate checkpoints side by side: kNN / retrieval metrics, linear probe, raw-pixel baselines.

Protocol (DESIGN §8): bank = train split, queries = test split, backbone features of un-augmented
images, cosine similarity on L2-normalised features (``student_trainer.eval.knn``), metrics from
``student_trainer.eval.metrics``. With a teacher, each other row also gets the teacher-student
neighbour agreement (recall@10 of the teacher's 10 nearest bank images among the student's 10).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from store.datasets import ImageDataset, open_dataset
from store.errors import ConfigError, DatasetError
from store.runtime import resolve_device
from student_trainer.eval import metrics, report
from student_trainer.eval.features import (
    EncoderFeatures,
    FeatureModel,
    FeatureSet,
    PixelFeatures,
    TeacherFeatures,
    extract_features,
)
from student_trainer.eval.knn import Neighbours, search
from student_trainer.eval.linear_probe import ProbeConfig, linear_probe
from teacher_service.sources import parse_teacher

PIXEL_BASELINE_DATASETS = ("mnist5k", "digits", "synthetic")
"""Dataset names that get the raw-pixel baseline rows by default."""

AGREEMENT_K = 10
"""Neighbours compared by the teacher-student agreement metric."""

METRIC_KEYS = (
    "knn_weighted",
    "nn1",
    "knn_majority",
    "recall_at_1",
    "recall_at_5",
    "map_at_r",
    "agreement_at_10",
    "linear_probe",
    "knn_l2_sklearn",
)
"""Every metric a record may carry (None where it does not apply)."""


@dataclass
class ModelResult:
    """One evaluated model: its JSON ``record``, features and ranked test->train neighbours."""

    record: dict[str, Any]
    features: FeatureSet
    neighbours: Neighbours | None


def check_labelled(fs: FeatureSet, spec: str) -> None:
    """Raise DatasetError unless every train and test sample has a label (>= 0)."""
    if (fs.train.labels < 0).any() or (fs.test.labels < 0).any():
        raise DatasetError(f"dataset {spec!r} has unlabelled images; kNN evaluation needs labels")


def search_depth(fs: FeatureSet, k: int) -> int:
    """Neighbours to retrieve per query: enough for k-NN, recall@5, agreement@10 and mAP@R."""
    r_max = int(metrics.relevant_counts(fs.train.labels, fs.test.labels).max(initial=0))
    return min(len(fs.train.labels), max(k, 5, AGREEMENT_K, r_max))


def score(
    fs: FeatureSet,
    k: int = 20,
    temperature: float = 0.07,
    backend: str = "auto",
    device: str = "cpu",
    probe: ProbeConfig | None = None,
) -> tuple[dict[str, float | None], Neighbours]:
    """All cosine metrics of one feature set, and the neighbours they came from.

    Returns ({metric name: fraction in [0, 1] or None}, (Q, depth) neighbours of the test split).
    """
    nb = search(fs.train.features, fs.test.features, search_depth(fs, k), backend, device)
    labels = fs.train.labels[nb.indices]
    truth = fs.test.labels
    out: dict[str, float | None] = {key: None for key in METRIC_KEYS}
    out["knn_weighted"] = metrics.accuracy(
        metrics.weighted_knn_predict(labels, nb.similarities, k, temperature), truth
    )
    out["nn1"] = metrics.accuracy(metrics.majority_predict(labels, 1), truth)
    out["knn_majority"] = metrics.accuracy(metrics.majority_predict(labels, k), truth)
    out["recall_at_1"] = metrics.recall_at_k(labels, truth, 1)
    out["recall_at_5"] = metrics.recall_at_k(labels, truth, 5)
    out["map_at_r"] = metrics.map_at_r(labels, truth, fs.train.labels)
    if probe is not None:
        out["linear_probe"] = linear_probe(
            fs.train.features, fs.train.labels, fs.test.features, fs.test.labels, probe
        )
    return out, nb


def sklearn_l2_knn(fs: FeatureSet, k: int = 20) -> float:
    """Euclidean k-NN majority accuracy by scikit-learn ``KNeighborsClassifier(k)`` (DESIGN §12)."""
    # lazy: scikit-learn only for this reference path
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k).fit(fs.train.features, fs.train.labels)
    return float(clf.score(fs.test.features, fs.test.labels))


def _record(model: Any, fs: FeatureSet, role: str) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "name": model.name,
        "role": role,
        "method": getattr(model, "method", None),
        "params": getattr(model, "params", None),
        "feature_dim": int(fs.train.features.shape[1]),
        "distance": "cosine",
        "n_bank": int(fs.train.labels.size),
        "n_queries": int(fs.test.labels.size),
        "skipped": len(fs.skipped),
    }
    info = getattr(model, "info", None)
    if isinstance(info, dict):
        rec["arch"] = info.get("arch")
        rec["sha256"] = info.get("sha256")
        rec["checkpoint"] = os.fspath(model.path)
        rec["size"] = model.size
    return rec


def _as_model(spec: Any, size: int | None, device: str, role: str | None) -> FeatureModel:
    """A checkpoint path becomes an :class:`EncoderFeatures` named by :func:`checkpoint_row`
    (``role`` None: the checkpoint's own); feature models pass through with their names."""
    if isinstance(spec, (str, os.PathLike)):
        if isinstance(spec, str) and parse_teacher(spec)[0] != "checkpoint":
            return TeacherFeatures(spec, size=size, device=device)
        model = EncoderFeatures(spec, size=size, device=device)
        model.name = checkpoint_row(model, role)[0]
        return model
    return spec


def checkpoint_row(model: Any, role: str | None = None) -> tuple[str, str]:
    """(row name, role) of a checkpoint from its own metadata, not its file name.

    Role: ``role`` if given (``--teacher``), else the checkpoint's ``meta["role"]``, else
    ``student`` for a file ``disco train`` wrote, else ``model`` (foreign weights). Name:
    ``meta["name"]`` if recorded, else ``"<method> <role> (<run folder>)"`` — the run folder is
    the file's directory (``runs/disco-s0/deployed.pt`` -> ``disco-s0``; another file name is
    appended: ``disco-s0/final``).
    """
    meta = dict(getattr(model, "meta", None) or {})
    train = dict(getattr(model, "train", None) or {})
    role = role or str(meta.get("role") or ("student" if train.get("method") else "model"))
    if meta.get("name"):
        return str(meta["name"]), role
    path = getattr(model, "path", None)
    if path is None:
        return str(getattr(model, "name", "model")), role
    path = Path(path)
    run = path.parent.name or path.stem
    if path.stem != "deployed":
        run = f"{run}/{path.stem}" if path.parent.name else path.stem
    method = str(getattr(model, "method", None) or meta.get("method") or "model")
    return f"{method} {role} ({run})", role


def run_evaluation(
    models: list[Any],
    dataset: str | ImageDataset,
    *,
    teacher: Any = None,
    k: int = 20,
    temperature: float = 0.07,
    size: int | None = None,
    pixels: bool | None = None,
    probe: ProbeConfig | None = None,
    backend: str = "auto",
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> list[ModelResult]:
    """Like :func:`evaluate` but returns features and neighbours too (for the figures)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    ds = open_dataset(dataset) if isinstance(dataset, str) else dataset
    dev = str(resolve_device(device))  # e.g. "cuda:0"
    if pixels is None:  # a bank/queries pair (store.eval_data) gets them if both sides do
        sources = getattr(ds, "sources", (ds,))
        pixels = all(s.spec.partition(":")[0] in PIXEL_BASELINE_DATASETS for s in sources)
    # (model, role, is the agreement reference): only --teacher is the reference.
    entries: list[tuple[FeatureModel, str, bool]] = []
    if teacher is not None:
        entries.append((_as_model(teacher, size, dev, "teacher"), "teacher", True))
    for spec in models:
        model = _as_model(spec, size, dev, None)
        entries.append((model, checkpoint_row(model)[1], False))
    if pixels:
        entries.append((PixelFeatures(), "baseline", False))
    if not entries:
        raise ConfigError("nothing to evaluate: give at least one checkpoint or enable --pixels")

    results: list[ModelResult] = []
    teacher_nb: Neighbours | None = None
    for model, role, reference in entries:
        fs = extract_features(
            model, ds, cache_dir=cache_dir, batch_size=batch_size, progress=progress
        )
        check_labelled(fs, ds.spec)
        if k > fs.train.labels.size:
            raise ConfigError(f"k={k} exceeds the bank size {fs.train.labels.size}")
        scores, nb = score(fs, k, temperature, backend, dev, probe)
        if reference:
            teacher_nb = nb
        elif teacher_nb is not None:
            scores["agreement_at_10"] = metrics.neighbour_agreement(
                nb.indices, teacher_nb.indices, AGREEMENT_K
            )
        rec = _record(model, fs, role)
        rec.update(scores)
        rec.update(k=k, temperature=temperature)
        results.append(ModelResult(rec, fs, nb))
        if role == "baseline":
            l2: dict[str, float | None] = {key: None for key in METRIC_KEYS}
            l2["knn_l2_sklearn"] = sklearn_l2_knn(fs, k)
            l2_rec = dict(rec, name=f"{model.name} (L2, sklearn)", distance="euclidean", **l2)
            results.append(ModelResult(l2_rec, fs, None))
    return results


def evaluate(
    models: list[Any],
    dataset: str | ImageDataset,
    *,
    teacher: Any = None,
    k: int = 20,
    temperature: float = 0.07,
    size: int | None = None,
    pixels: bool | None = None,
    probe: ProbeConfig | None = None,
    backend: str = "auto",
    device: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    batch_size: int = 256,
    out: str | os.PathLike[str] | None = None,
    figures: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Evaluate checkpoints (paths or feature models) on ``dataset``; one record per row.

    Rows: the teacher (if given), each model, then (``pixels``; default on for mnist5k, digits,
    synthetic) the raw-pixel cosine baseline and the raw-pixel Euclidean sklearn 20-NN baseline.
    Each record: name, role, method, params (deployed backbone parameter count), feature_dim,
    distance, n_bank, n_queries, skipped, k, temperature and every key of ``METRIC_KEYS``
    (fractions in [0, 1], None where not applicable). ``probe=None`` skips the linear probe.
    With ``out``, writes ``results.json``, ``results.md`` and (``figures``) one
    ``neighbours_<name>.png`` per model into that directory.
    """
    ds = open_dataset(dataset) if isinstance(dataset, str) else dataset
    results = run_evaluation(
        models,
        ds,
        teacher=teacher,
        k=k,
        temperature=temperature,
        size=size,
        pixels=pixels,
        probe=probe,
        backend=backend,
        device=device,
        cache_dir=cache_dir,
        batch_size=batch_size,
        progress=progress,
    )
    records = [r.record for r in results]
    if out is not None:
        out_dir = Path(out)
        title = f"Retrieval evaluation on {ds.spec}"
        roles = getattr(ds, "roles", report.DEFAULT_ROLES)  # a bank/queries pair names its sides
        report.write_tables(records, out_dir, title, roles)
        if figures:
            for i, r in enumerate(results):
                if r.neighbours is None:
                    continue
                path = out_dir / f"neighbours_{i:02d}_{slug(r.record['name'])}.png"
                report.neighbour_figure(ds, r.features, r.neighbours, path, title=r.record["name"])
                r.record["figure"] = path.name
            report.write_tables(records, out_dir, title, roles)
    return records


def slug(name: str) -> str:
    """File-name-safe version of a row name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "model"
