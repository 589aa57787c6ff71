"""The several-teachers study's pieces that need no training: the teachers' halves of the train
split and the acceptance verdict (multi beats each single-teacher student by > 2 seed std)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from store.datasets import open_dataset, split_indices
from store.errors import ConfigError
from store.manifest import Manifest
from student_trainer.demo.ledger import RunLedger
from student_trainer.demo.teachers_study import (
    ARMS,
    HALVES,
    TeachersStudyConfig,
    _half_manifest,
    _summarise,
    render_teachers_study,
)


def test_halves_split_the_train_rows_by_digit() -> None:
    # The train split's rows with mnist5k's labels (no hashing: only labels and indices matter).
    labels = open_dataset("mnist5k").labels
    idx = split_indices(5000, "train")
    n = len(idx)
    full = Manifest(
        dataset="mnist5k", split="train", indices=idx, keys=idx.astype(str),
        labels=labels[idx], sha256=[""] * n, heights=np.full(n, 28), widths=np.full(n, 28),
        valid=np.ones(n, bool), row_order="permuted",
    )  # fmt: skip
    lo, hi = (_half_manifest(full, HALVES[n]) for n in ("lo", "hi"))
    assert len(lo) + len(hi) == len(full) == 4000
    assert set(lo.labels.tolist()) == {0, 1, 2, 3, 4} and set(hi.labels.tolist()) == {5, 6, 7, 8, 9}
    assert not set(lo.indices.tolist()) & set(hi.indices.tolist())
    test = set(split_indices(5000, "test").tolist())
    assert not test & set(lo.indices.tolist())  # no test image reaches a teacher


def test_verdict_uses_two_seed_std(tmp_path: Path) -> None:
    cfg = TeachersStudyConfig(out=str(tmp_path), seeds=3)
    scores = {
        "single-lo": [0.80, 0.81, 0.82],
        "single-hi": [0.85, 0.86, 0.87],
        "concat": [0.86, 0.87, 0.88],
        "multi": [0.88, 0.885, 0.89],
        "multi-drop": [0.87, 0.88, 0.89],
    }
    by_name: dict[str, dict[str, Any]] = {
        f"{arm}-s{s}": {"knn_weighted": v} for arm, vs in scores.items() for s, v in enumerate(vs)
    }
    by_name |= {"teacher-lo": {"knn_weighted": 0.7}, "teacher-hi": {"knn_weighted": 0.75}}
    runs = RunLedger(tmp_path / "runs.json")
    runs.entries.update({k: {"seconds": 10.0} for k in by_name})
    summary = _summarise(cfg, by_name, runs, {"lo": 5.0, "hi": 6.0}, 60.0)
    lo, hi = summary["acceptance"]["single-lo"], summary["acceptance"]["single-hi"]
    assert lo["gap"] == pytest.approx(0.885 - 0.81) and lo["beats"]
    assert hi["two_std"] == pytest.approx(2 * 0.01) and hi["gap"] == pytest.approx(0.025)
    assert hi["beats"] and summary["accepted"]
    md = render_teachers_study(summary)
    assert "| multi | 88.50 ± 0.50 |" in md and "vs single-hi: gap +2.50 points" in md
    assert set(summary["arms"]) == set(ARMS)
    assert np.isclose(summary["teachers"]["lo"], 0.7)
    with pytest.raises(ConfigError):
        TeachersStudyConfig(seeds=1)
