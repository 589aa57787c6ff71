"""End to end: tiny-checkpoint features, feature cache, `evaluate`, its outputs, `disco eval`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from store.datasets import open_dataset
from store.errors import DatasetError
from student_trainer.cli import app
from student_trainer.eval.evaluate import METRIC_KEYS, evaluate
from student_trainer.eval.features import EncoderFeatures, extract_features
from student_trainer.eval.linear_probe import ProbeConfig, linear_probe
from teacher_service.checkpoint import save_checkpoint
from teacher_service.encoders import EncoderConfig, build_encoder, count_parameters

SPEC = "synthetic:60"
PRE = {
    "size": 16,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bilinear",
    "antialias": True,
    "recipe": "mocov2",
}


def _full_ranking(bank: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Brute force, independent of ``student_trainer.eval.knn``: every bank row of every query
    sorted by float64 cosine (desc), ties to the lower row. Returns (Q, N) rows and (Q, N)
    cosines."""
    b = bank.astype(np.float64)
    q = queries.astype(np.float64)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-30)
    q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-30)
    sims = q @ b.T
    rows = np.broadcast_to(np.arange(len(b)), sims.shape)
    order = np.lexsort((rows, -sims), axis=1)
    return order, np.take_along_axis(sims, order, axis=1)


def _vote(labels: list[int], weights: list[float]) -> int:
    """Highest total vote; a tie goes to the tied class seen first in rank order."""
    totals: dict[int, float] = {}
    for lab, w in zip(labels, weights, strict=True):
        totals[lab] = totals.get(lab, 0.0) + w
    best = max(totals.values())
    return next(lab for lab in labels if totals[lab] == best)


def _reference_scores(
    bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, truth: np.ndarray, k: int
) -> dict[str, float]:
    """kNN-w (T 0.07), 1-NN, k-NN majority, recall@1/5 and mAP@R by plain loops."""
    order, sims = _full_ranking(bank, queries)
    hits = {"knn_weighted": 0, "nn1": 0, "knn_majority": 0, "recall_at_1": 0, "recall_at_5": 0}
    aps = []
    for i, t in enumerate(truth.tolist()):
        labs = bank_labels[order[i]].tolist()
        weights = [float(np.exp(s / 0.07)) for s in sims[i, :k]]
        hits["knn_weighted"] += _vote(labs[:k], weights) == t
        hits["nn1"] += labs[0] == t
        hits["knn_majority"] += _vote(labs[:k], [1.0] * k) == t
        hits["recall_at_1"] += t in labs[:1]
        hits["recall_at_5"] += t in labs[:5]
        r = int((bank_labels == t).sum())
        rel = [lab == t for lab in labs[:r]]
        aps.append(sum(sum(rel[: j + 1]) / (j + 1) for j in range(r) if rel[j]) / r)
    out = {key: v / len(truth) for key, v in hits.items()}
    out["map_at_r"] = float(np.mean(aps))
    return out


def _checkpoint(path: Path, seed: int, method: str) -> Path:
    torch.manual_seed(seed)
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True, head_hidden=32, head_out=16))
    save_checkpoint(path, enc, PRE, train={"method": method}, meta={"method": method})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    return _checkpoint(d / "teacher.pt", 0, "mocov2"), _checkpoint(d / "student.pt", 1, "disco")


def test_features_are_backbone_features_and_cached(
    ckpts: tuple[Path, Path], tmp_path: Path
) -> None:
    ds = open_dataset(SPEC)
    model = EncoderFeatures(ckpts[1], device="cpu")
    first = extract_features(model, ds, cache_dir=tmp_path, progress=False)
    assert not first.from_cache
    assert first.train.features.shape == (48, model.feature_dim)
    assert first.train.features.dtype == np.float32
    np.testing.assert_array_equal(first.test.indices, ds.split_indices("test"))
    np.testing.assert_array_equal(first.test.labels, ds.labels[ds.split_indices("test")])
    # the same numbers as running the backbone by hand
    x = torch.stack([model.prepare(ds.load(int(i))) for i in first.test.indices[:4]])
    with torch.inference_mode():
        direct = model.encoder.backbone(x).numpy()
    np.testing.assert_allclose(first.test.features[:4], direct, rtol=1e-5, atol=1e-6)

    def boom(batch: torch.Tensor) -> torch.Tensor:
        raise AssertionError("cache miss: the network ran again")

    model.embed = boom  # type: ignore[method-assign]
    again = extract_features(model, ds, cache_dir=tmp_path, progress=False)
    assert again.from_cache
    np.testing.assert_array_equal(again.train.features, first.train.features)
    # another size is another cache entry
    other = EncoderFeatures(ckpts[1], size=24, device="cpu")
    assert extract_features(other, ds, cache_dir=tmp_path, progress=False).from_cache is False


def test_evaluate_writes_table_json_and_figures(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    teacher, student = ckpts
    out = tmp_path / "out"
    records = evaluate(
        [student],
        SPEC,
        teacher=teacher,
        probe=ProbeConfig(epochs=2),
        cache_dir=tmp_path / "cache",
        out=out,
        progress=False,
        device="cpu",
    )
    names = [r["name"] for r in records]
    assert names == [
        "mocov2 teacher (ckpt0/teacher)",  # named from checkpoint metadata + run folder
        "disco student (ckpt0/student)",
        "raw pixels",
        "raw pixels (L2, sklearn)",
    ]
    t, s, px, l2 = records
    assert (t["role"], s["role"], px["role"]) == ("teacher", "student", "baseline")
    assert s["method"] == "disco" and t["method"] == "mocov2"
    enc = build_encoder(EncoderConfig(arch="tiny", small_stem=True))
    assert s["params"] == count_parameters(enc.backbone)
    # Every figure equals a brute-force recomputation from the (cached) features.
    ds = open_dataset(SPEC)
    feats = {
        name: extract_features(
            EncoderFeatures(path, device="cpu"), ds, cache_dir=tmp_path / "cache", progress=False
        )
        for name, path in (("teacher", teacher), ("student", student))
    }
    for record, fs in ((t, feats["teacher"]), (s, feats["student"])):
        assert fs.from_cache  # the very features evaluate() scored
        ref = _reference_scores(
            fs.train.features, fs.train.labels, fs.test.features, fs.test.labels, 20
        )
        for key, value in ref.items():
            assert record[key] == pytest.approx(value, abs=1e-12), (record["name"], key)
    t_order, _ = _full_ranking(feats["teacher"].train.features, feats["teacher"].test.features)
    s_order, _ = _full_ranking(feats["student"].train.features, feats["student"].test.features)
    shared = [len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(t_order, s_order, strict=True)]
    assert t["agreement_at_10"] is None
    assert s["agreement_at_10"] == pytest.approx(float(np.mean(shared)), abs=1e-12)
    # two different random networks: the records are each model's own, not one copied twice
    assert (t["knn_weighted"], t["map_at_r"]) != (s["knn_weighted"], s["map_at_r"])
    assert 0.0 <= s["linear_probe"] <= 1.0
    assert l2["knn_l2_sklearn"] is not None and l2["knn_weighted"] is None
    assert set(METRIC_KEYS) <= set(s)
    assert s["n_bank"] == 48 and s["n_queries"] == 12
    saved = json.loads((out / "results.json").read_text())
    assert [r["name"] for r in saved] == names
    md = (out / "results.md").read_text()
    assert "| disco student (ckpt0/student) | student | disco |" in md and "kNN-w" in md
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert len(pngs) == 3 and all(p.startswith("neighbours_") for p in pngs)
    assert (out / pngs[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_teacher_against_itself_agrees_fully(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    teacher = ckpts[0]
    records = evaluate(
        [teacher], SPEC, teacher=teacher, pixels=False, cache_dir=tmp_path, progress=False
    )
    assert records[1]["agreement_at_10"] == 1.0
    assert records[1]["knn_weighted"] == records[0]["knn_weighted"]


def test_cli_eval_runs_and_fails_cleanly(ckpts: tuple[Path, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["eval", str(ckpts[1]), "--dataset", SPEC, "--out", str(out), "--no-probe"]
    args += ["--cache-dir", str(tmp_path / "c"), "--no-figures", "--k", "5", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| student |" in result.output
    rec = json.loads((out / "results.json").read_text())[0]
    assert rec["k"] == 5 and rec["linear_probe"] is None
    bad = runner.invoke(app, ["eval", str(ckpts[1]), "--dataset", "nope", "--out", str(out)])
    assert bad.exit_code == 1
    assert "unknown dataset 'nope'" in bad.output and "Traceback" not in bad.output
    missing = runner.invoke(app, ["eval", str(tmp_path / "none.pt"), "--dataset", SPEC])
    assert missing.exit_code == 1 and "checkpoint not found" in missing.output


def test_unlabelled_dataset_is_refused(tmp_path: Path) -> None:
    from PIL import Image

    for i in range(10):
        Image.new("RGB", (12, 12), (i * 20, 0, 0)).save(tmp_path / f"{i}.png")
    with pytest.raises(DatasetError, match="unlabelled"):
        evaluate(
            [], f"imagefolder:{tmp_path}", pixels=True, cache_dir=tmp_path / "c", progress=False
        )


def test_linear_probe_separable_and_deterministic() -> None:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 20)) * 5
    y_tr, y_te = rng.integers(0, 3, 300), rng.integers(0, 3, 90)
    x_tr = centres[y_tr] + rng.standard_normal((300, 20))
    x_te = centres[y_te] + rng.standard_normal((90, 20))
    cfg = ProbeConfig(epochs=5)
    acc = linear_probe(x_tr, y_tr + 10, x_te, y_te + 10, cfg)
    assert acc == 1.0
    # labels carry no information -> chance level, and the same number twice
    noise = rng.standard_normal((300, 20))
    assert linear_probe(noise, y_tr, noise[:90], rng.integers(0, 3, 90), cfg) < 0.6
    first = linear_probe(noise, y_tr, noise[:90], y_tr[:90], cfg)
    assert first == linear_probe(noise, y_tr, noise[:90], y_tr[:90], cfg)
